import io
import itertools
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from onegen import tasks
from onegen.config import ViewSides
from onegen.format import decode_sample
from onegen.shards.reader import (ReadReport, bucket_batches, is_safe_member, iter_tar_samples, sample_stream,
                                  shard_urls, training_batches)
from onegen.shards.resize import UpscaleError
from onegen.shards.writer import ShardLimits, build_shards, sample_members


@pytest.fixture
def shards(tmp_path, make_sample):
    def build(name, n, task=tasks.DEPTH2IMAGE, size=16, per_shard=4):
        d = tmp_path / name
        build_shards(d, n, lambda i: make_sample(i, task, size, source=name), ShardLimits(per_shard, 1 << 30), "fp")
        return d
    return build


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_stream_decodes_every_sample_to_tensors(shards):
    d = shards("depth", 10)
    report = ReadReport()
    out = list(sample_stream(shard_urls(d), report))
    assert [s["__key__"] for s in out] == [f"depth/item_{i:05d}" for i in range(10)]
    s = out[0]
    assert s["modalities"] == ["image", "depth"] and s["group"] == "image2image"
    img, depth = s["views"]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and -1 <= img.min() and img.max() <= 1
    assert depth.shape == (3, 16, 16) and depth.min() >= -1 and depth.max() <= 1
    assert s["prompt"] == "[[depth2image]] caption 0"
    assert not report.problems


def test_plain_webdataset_reads_the_shards(shards):
    d = shards("depth", 6)
    ds = wds.WebDataset(shard_urls(d), shardshuffle=False)
    rows = list(ds)
    assert [r["__key__"] for r in rows] == [f"depth/item_{i:05d}" for i in range(6)]
    assert set(rows[0]) >= {"json", "0.image.png", "1.depth.png"}
    assert decode_sample(rows[0]).views[1].data.dtype == np.uint16


def test_hf_datasets_loads_the_shards(shards):
    datasets = pytest.importorskip("datasets")
    d = shards("depth", 6)
    ds = datasets.load_dataset("webdataset", data_files={"train": shard_urls(d)}, split="train",
                               cache_dir=str(d.parent / "hf_cache"))
    assert len(ds) == 6
    row = ds[0]
    assert row["__key__"] == "depth/item_00000"
    assert row["json"]["task"] == tasks.DEPTH2IMAGE
    assert row["0.image.png"].size == (16, 16)


def test_corrupt_member_is_reported_by_key_and_skipped(tmp_path, make_sample):
    members = []
    for i in range(3):
        ms = sample_members(make_sample(i, source="bad"))
        if i == 1:
            ms = [(n, b"\x89PNG garbage" if n.endswith(".png") else b) for n, b in ms]
        members += ms
    _write_tar(tmp_path / "shard-000000.tar", members)
    report = ReadReport()
    keys = [s["__key__"] for s in sample_stream([str(tmp_path / "shard-000000.tar")], report)]
    assert keys == ["bad/item_00000", "bad/item_00002"]
    assert len(report.problems) == 1 and report.problems[0]["key"] == "bad/item_00001"
    assert "cannot decode" in report.problems[0]["reason"]


def test_truncated_tar_keeps_what_was_read_and_reports_the_loss(shards):
    d = shards("depth", 8, per_shard=8)
    tar = d / "shard-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * 0.6)])
    report = ReadReport()
    keys = [s["__key__"] for s in sample_stream([str(tar)], report)]
    assert 2 <= len(keys) < 8 and keys == [f"depth/item_{i:05d}" for i in range(len(keys))]
    assert len(report.problems) == 1 and "truncated" in report.problems[0]["reason"]


@pytest.mark.parametrize("name", ["../evil.json", "/etc/evil.json", "a/../../evil.json", "C:/evil.json",
                                  "..\\evil.json"])
def test_unsafe_member_names_are_rejected(tmp_path, make_sample, name):
    assert not is_safe_member(name)
    members = sample_members(make_sample(0, source="ok")) + [(name, b"{}")] + sample_members(make_sample(1, source="ok"))
    _write_tar(tmp_path / "x.tar", members)
    report = ReadReport()
    raw = list(iter_tar_samples(str(tmp_path / "x.tar"), report))
    assert [r["__key__"] for r in raw] == ["ok/item_00000", "ok/item_00001"]
    assert any("unsafe member name" in p["reason"] for p in report.problems)


def test_safe_names_pass():
    assert is_safe_member("world/scene_0000001.0.image.png")
    assert is_safe_member("a.json")


def test_task_groups_are_drawn_with_equal_probability(shards):
    big = shards("t2i", 60, task=tasks.TEXT2IMAGE)
    small = shards("mv", 6, task=tasks.MULTIVIEW)
    batches = training_batches([big, small], batch_size=1, resampled=True, shuffle=0, seed=3)
    groups = Counter(b["group"][0] for b in itertools.islice(batches, 600))
    assert set(groups) == {"text2image", "multiview"}
    assert abs(groups["multiview"] / 600 - 0.5) < 0.08  # 10x fewer samples, same share of draws


def test_batches_hold_one_shape_signature(shards):
    a = shards("small", 7, size=16)
    b = shards("large", 5, size=32)
    report = ReadReport()
    stream = itertools.chain(sample_stream(shard_urls(a), report), sample_stream(shard_urls(b), report))
    batches = list(bucket_batches(stream, batch_size=3))
    assert sum(len(x["__key__"]) for x in batches) == 12
    for x in batches:
        assert len({k.split("/")[0] for k in x["__key__"]}) == 1
        assert all(v.shape[0] == len(x["__key__"]) for v in x["views"])
    assert {tuple(x["views"][0].shape[1:]) for x in batches} == {(3, 16, 16), (3, 32, 32)}


def test_split_by_node_and_worker_cover_every_sample_once(shards, monkeypatch):
    d = shards("depth", 16, per_shard=2)  # 8 shards
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = torch.utils.data.DataLoader(sample_stream(shard_urls(d), ReadReport()), batch_size=None,
                                             num_workers=2)
        seen += [s["__key__"] for s in loader]
    assert sorted(seen) == [f"depth/item_{i:05d}" for i in range(16)]


def test_monocular_disparity_maps_to_the_same_condition_polarity():
    """A Depth-Anything map (relative disparity, near = high) must reach the model as near = +1 (bright),
    exactly like metric depth does: the released model's depth images."""
    from onegen.annotators.depth import disparity_to_condition
    from onegen.format import Provenance, Sample, View
    from onegen.shards.reader import sample_to_tensors

    depth_m = np.linspace(1.0, 5.0, 64, dtype=np.float32).reshape(8, 8)
    disparity = np.round(65535 * (1 / depth_m - 0.2) / 0.8).astype(np.uint16)
    s = Sample("t/x", "[[depth2image]]", "c", [View("image", np.zeros((8, 8, 3), np.uint8)),
               View("depth", disparity, role="condition", meta={"kind": "relative-disparity"})], Provenance("t", "x", 0))
    t = sample_to_tensors(s)
    assert torch.equal(t["views"][1], disparity_to_condition(disparity))
    assert t["views"][1][0, 0, 0] == 1 and t["views"][1][0, -1, -1] == -1  # nearest pixel bright, farthest dark
    assert "depth_m_1" not in t


def test_a_directory_read_at_another_side_is_resized_and_an_impossible_side_stops_the_stream(shards):
    d = shards("depth", 6, size=32)
    report = ReadReport()
    out = list(sample_stream(shard_urls(d), report, sides={str(d): 16}))
    assert len(out) == 6 and all(v.shape == (3, 16, 16) for s in out for v in s["views"]) and not report.problems
    # a sample smaller than the side is the recipe's fault, not the sample's: the (endless, resampled) stream
    # stops at the first, naming it
    report = ReadReport()
    with pytest.raises(UpscaleError, match=r"shard-\d+\.tar: depth/item_\d+: view 0 \(image\): 32x32 px, smaller "
                                           r"than the stage's side 64"):
        next(iter(sample_stream(shard_urls(d), report, resampled=True, sides={str(d): 64})))
    # with sides by view count, too, where such samples may come between good ones
    rule = ViewSides(((1, 16), (2, 64)))
    with pytest.raises(UpscaleError, match="smaller than the stage's side 64"):
        next(iter(sample_stream(shard_urls(d), report, resampled=True, sides={str(d): rule})))
    assert not report.problems
