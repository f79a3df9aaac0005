"""The Ray Data shard build: equal to the one-process build byte for byte, failed items recorded
per shard, a killed build resumed to the same bytes, model annotators as actor pools."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from typer.testing import CliRunner

from onegen.cli import app
from onegen.config import BuildConfig, load_params, profile_path
from onegen.format import decode_sample
from onegen.shards.reader import ReadReport, iter_tar_samples
from onegen.sources.sample_photos import SamplePhotosSource
from pipelines import shards, world
from pipelines.ray_build import ensure_ray

FAMILIES = ("text2image", "edges", "multiview")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ensure_ray(BuildConfig(num_cpus=2, object_store_mb=256))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny world and a photo folder: the six sample photos, one corrupt file, one uncaptioned."""
    root = tmp_path_factory.mktemp("ray_build")
    photos = root / "photos"
    photos.mkdir()
    for r in SamplePhotosSource():
        r["image"].resize((48, 48)).save(photos / f"{r['source_id']}.png")
        (photos / f"{r['source_id']}.txt").write_text(r["captions"]["original"])
    good = (photos / "coffee.png").read_bytes()
    (photos / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG: a decode error
    (photos / "broken.txt").write_text("half a file")
    shutil.copy(photos / "coffee.png", photos / "uncaptioned.png")
    world.run(load_params(_params(root, "world")))
    return root


def _params(root: Path, name: str, **build) -> Path:
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / name / "data"), "reports": str(root / name / "reports")}
    d["world"].update(scenes=4, id_groups=2, resolution=32, records_per_shard=4)
    d["shards"]["max_samples_per_shard"] = build.pop("per_shard", 5)
    d["sources"] = {"photos": {"kind": "image_folder", "path": str(root / "photos")}}
    for fam in d["shards"]["families"].values():
        fam["sources"] = ["world"]
    for fam in ("text2image", "depth", "edges"):
        d["shards"]["families"][fam]["sources"] = ["world", "photos"]
    d["shards"]["families"]["pose"]["sources"] = ["photos"]  # the world has no people
    d["annotators"] = build.pop("annotators", {})
    d["build"] = {"max_failure_fraction": 0.25, **build}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    world_out = root / name / "data" / "world"
    if name != "world" and not world_out.exists():
        shutil.copytree(root / "world" / "data" / "world", world_out)
    return path


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _samples(directory: Path) -> list:
    report = ReadReport()
    out = [decode_sample(raw) for p in sorted(directory.glob("shard-*.tar"))
           for raw in iter_tar_samples(str(p), report)]
    assert not report.problems
    return out


def _keys(directory: Path) -> list[str]:
    report = ReadReport()
    keys = [raw["__key__"] for p in sorted(directory.glob("shard-*.tar")) for raw in iter_tar_samples(str(p), report)]
    assert not report.problems
    return keys


@pytest.fixture(scope="module")
def builds(root, ray_session):
    local = load_params(_params(root, "local", executor="local"))
    ray = load_params(_params(root, "ray", executor="ray", cpu_workers=2))
    for fam in FAMILIES:
        shards.run(local, fam)
        shards.run(ray, fam)
    return local, ray


def test_two_ray_workers_equal_the_one_process_build_byte_for_byte(builds):
    local, ray = builds
    for fam in FAMILIES:
        a, b = _files(shards.family_dir(local, fam)), _files(shards.family_dir(ray, fam))
        assert any(n.endswith(".tar") for n in a) and a == b, fam  # tars, manifests, errors files, stats


def test_failed_items_go_to_their_shard_errors_file_and_the_build_goes_on(builds):
    _, params = builds
    out = shards.family_dir(params, "text2image")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == 16 + 6 and stats["failed"] == 2  # 16 world views, 6 good photos
    errors = [json.loads(line) for p in sorted(out.glob("shard-*.errors.jsonl")) for line in p.read_text().splitlines()]
    assert [(e["source_id"], e["stage"]) for e in errors] == [("broken", "read"), ("uncaptioned", "caption")]
    assert "broken.png" in errors[0]["reason"] and "truncated" in errors[0]["reason"]
    for e in errors:  # each in the errors file of the shard holding its item, counted in its manifest entry
        shard = out / f"shard-{e['index'] // 5:06d}"
        assert json.loads(shard.with_suffix(".json").read_text())["failed"] == 1
        assert json.loads(Path(f"{shard}.errors.jsonl").read_text()) == e
    edges = json.loads((shards.family_dir(params, "edges") / "stats.json").read_text())
    assert edges["failed"] == 1 and edges["samples"] == 16 + 7  # an uncaptioned photo still gives edges


def test_above_the_failure_threshold_the_stage_exits_non_zero_naming_counts_and_files(root, builds):
    params = _params(root, "ray", executor="ray", cpu_workers=2, max_failure_fraction=0.05)
    r = CliRunner().invoke(app, ["shards", "text2image", "-p", str(params)])
    assert r.exit_code == 1
    assert "2 of 24 items failed" in r.output and "shard-*.errors.jsonl" in r.output
    assert "build.max_failure_fraction 0.05" in r.output and "broken.png" in r.output


_KILLED = """
import sys
from onegen.cli import app
sys.argv = ["onegen", "shards", "text2image", "-p", sys.argv[1]]
app()
"""


def test_a_killed_ray_build_resumes_with_no_duplicate_and_no_missing_sample(root, ray_session):
    path = _params(root, "killed", executor="ray", cpu_workers=2, per_shard=1)
    params = load_params(path)
    out = shards.family_dir(params, "text2image")
    log = open(root / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path)], stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 90
    while not list(out.glob("shard-*.json")):
        assert proc.poll() is None, (root / "killed.log").read_text()[-2000:]
        assert time.time() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert 0 < len(done) < 24 and not (out / "stats.json").exists()  # killed mid-way

    stats = shards.run(params, "text2image")
    assert {n: m for n, m in ((p.name, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")) if n in done} == done
    assert not list(out.glob(".*.tmp"))
    reference = load_params(_params(root, "uninterrupted", executor="local", per_shard=1))
    shards.run(reference, "text2image")
    assert _files(out) == _files(shards.family_dir(reference, "text2image"))
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == stats["samples"] == 16 + 6


def _tiny_depth_anything(folder: Path) -> Path:
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=28, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16, 16, 16],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    return folder


def test_a_configured_depth_model_runs_as_an_actor_pool_on_photos_only(root, ray_session):
    da = {"depth": {"path": str(_tiny_depth_anything(root / "da")), "input_size": 28, "batch_size": 4}}
    local = load_params(_params(root, "da_local", executor="local", annotators=da))
    ray = load_params(_params(root, "da_ray", executor="ray", annotators=da,
                              annotator_pools={"depth": {"concurrency": 1, "num_gpus": 0}}))
    shards.run(local, "depth")
    shards.run(ray, "depth")
    out = shards.family_dir(ray, "depth")
    samples, ref = _samples(out), _samples(shards.family_dir(local, "depth"))
    photos = [s for s in samples if s.provenance.source == "photos"]
    assert len(samples) == 16 + 7 and len(photos) == 7  # the corrupt file failed, the uncaptioned one is fine
    for s in photos:
        d = s.views[1]
        assert d.modality == "depth" and d.data.dtype == np.uint16 and d.meta["kind"] == "relative-disparity"
        assert [a["name"] for a in s.provenance.annotators] == ["depth-anything-v2"]
    world_depth = [s for s in samples if s.provenance.source == "world"]
    assert all(s.views[1].meta["depth_scale"] == 0.001 for s in world_depth)  # ground truth kept
    # Same items, batches and weights under both executors; the CPU kernels' thread counts differ
    # (a Ray actor gets one), which moves the odd float by one 16-bit level.
    for a, b in zip(samples, ref):
        assert a.key == b.key and a.provenance == b.provenance and np.array_equal(a.views[0].data, b.views[0].data)
        assert np.abs(a.views[1].data.astype(int) - b.views[1].data.astype(int)).max() <= 1
    note = next(json.loads(line) for line in (ray.paths.reports / "logs/shards_depth.jsonl").read_text().splitlines()
                if '"annotators"' in line)
    depth_note = next(n for n in note["notes"] if n["annotator"] == "depth")
    assert depth_note["effect"] == "used" and depth_note["items"] == 8
