"""The default graph end to end on a tiny world: world -> every family -> stats, through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from onegen import tasks
from onegen.cli import app
from onegen.config import FAMILIES, profile_path
from onegen.format import decode_sample
from onegen.shards.reader import ReadReport, iter_tar_samples, training_batches

runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(scenes=6, id_groups=3, resolution=32, records_per_shard=4)
    d["shards"]["max_samples_per_shard"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    params = str(root / "params.yaml")
    r = runner.invoke(app, ["world", "-p", params])
    assert r.exit_code == 0, r.output
    for fam in FAMILIES:
        r = runner.invoke(app, ["shards", fam, "-p", params])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", "-p", params])
    assert r.exit_code == 0, r.output
    return root


def _samples(root: Path, family: str):
    report = ReadReport()
    out = [decode_sample(raw) for url in sorted((root / "data/shards" / family).glob("shard-*.tar"))
           for raw in iter_tar_samples(str(url), report)]
    assert not report.problems
    return out


def test_world_has_scene_and_identity_records(project):
    stats = json.loads((project / "data/world/stats.json").read_text())
    assert stats["samples"] == 9 and stats["shards"] == 3


def test_family_counts_and_tokens(project):
    # the world's 6 scenes x 4 views, plus the 6 sample photos where only deterministic annotators are needed
    expected = {"text2image": 30, "depth": 24, "semantic": 24, "bbox": 24, "edges": 30, "multiview": 6, "id": 3,
                "pose": 0}
    for fam, n in expected.items():
        st = json.loads((project / "data/shards" / fam / "stats.json").read_text())
        assert st["samples"] == n, fam
    edges = json.loads((project / "data/shards/edges/stats.json").read_text())["tasks"]
    assert edges == {tasks.CANNY2IMAGE: 8, tasks.DEBLUR: 8, tasks.UPSCALE: 7, tasks.INPAINT: 7}


def test_depth_samples_hold_metric_depth_with_scale(project):
    s = _samples(project, "depth")[0]
    assert [v.modality for v in s.views] == ["image", "depth"] and s.views[1].data.dtype == np.uint16
    depth_m = s.views[1].data * s.views[1].meta["depth_scale"]
    assert 0.5 < np.median(depth_m[depth_m > 0]) < 30


def test_semantic_map_matches_palette_in_prompt(project):
    for s in _samples(project, "semantic")[:6]:
        assert s.prompt().startswith(tasks.SEMANTIC2IMAGE)
        colours = {tuple(int(p["hex"][i:i + 2], 16) for i in (0, 2, 4)) for p in s.palette}
        present = {tuple(c) for c in s.views[1].data.reshape(-1, 3)} - {(0, 0, 0)}
        assert present == colours
        for p in s.palette:
            assert f"<#{p['hex']} {p['name']} mask: {p['label']}>" in s.prompt()


def test_multiview_has_images_then_rays(project):
    s = _samples(project, "multiview")[0]
    assert [v.modality for v in s.views] == ["image"] * 4 + ["rays"] * 4
    rays = s.views[4].data
    assert rays.dtype == np.float16 and rays.shape == (16, 4, 4)


def test_identity_prompt_marks_each_image(project):
    for s in _samples(project, "id"):
        n = len(s.views)
        assert 2 <= n <= 5 and s.task == tasks.FACEID
        assert all(f"[[img{k}]]" in s.prompt() for k in range(n))


def test_dataset_card_and_grids(project):
    card = (project / "reports/dataset.md").read_text()
    for fam in FAMILIES:
        assert f"| {fam} |" in card
        # the default has no pose model: its photos are left out for want of it, and the card says so
        assert (project / "reports/dataset" / f"{fam}.png").is_file() == (fam != "pose")
    assert "- pose: no samples" in card
    assert "[[multiview]]" in card
    assert "| family | shards | samples | skipped | failed | MB |" in card
    summary = json.loads((project / "reports/dataset_stats.json").read_text())
    assert summary["failed"] == 0 and summary["skipped"] == 0


def test_deleted_shard_is_rebuilt_byte_identical(project):
    shard = project / "data/shards/depth/shard-000001.tar"
    before = shard.read_bytes()
    shard.unlink()
    r = runner.invoke(app, ["shards", "depth", "-p", str(project / "params.yaml")])
    assert r.exit_code == 0, r.output
    assert shard.read_bytes() == before


def test_reader_mixes_all_four_task_groups(project):
    dirs = [project / "data/shards" / f for f in FAMILIES if f != "pose"]
    batches = training_batches(dirs, batch_size=2, shuffle=16)
    groups = {b["group"][0] for _, b in zip(range(60), batches)}
    assert groups == {"text2image", "image2image", "id", "multiview"}


def test_a_family_without_samples_is_named_when_read(project):
    with pytest.raises(ValueError, match=r"shards/pose: the family has no samples"):
        next(iter(training_batches([project / "data/shards/pose"], batch_size=2, shuffle=16)))


def test_bad_params_give_one_line_and_exit_2(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("world: {scenes: lots}\n")
    r = runner.invoke(app, ["world", "-p", str(p)])
    assert r.exit_code == 2 and "world.scenes" in r.output


def test_unknown_family_is_refused():
    r = runner.invoke(app, ["shards", "sketch"])
    assert r.exit_code == 2 and "unknown family" in r.output


def test_shards_of_another_world_are_rebuilt_not_kept(tmp_path, monkeypatch):
    """A world rebuilt with other bytes under the same config (another machine's floats, a renderer changed
    without its version bump): the family's finished shards were made of the old one, so they are rebuilt."""
    import shutil

    from onegen.sources import procedural

    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")}
    d["world"].update(scenes=2, id_groups=0, resolution=32, records_per_shard=4)
    d["shards"]["families"]["text2image"]["sources"] = ["world"]
    d["build"].update(executor="local", cpu_workers=1)  # in this process: the patch below reaches the renderer
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    params = str(tmp_path / "params.yaml")

    def build() -> list[str]:
        for args in (["world"], ["shards", "text2image"]):
            r = runner.invoke(app, args + ["-p", params])
            assert r.exit_code == 0, r.output
        return [s.caption for s in _samples(tmp_path, "text2image")]

    before = build()
    shutil.rmtree(tmp_path / "data/world")
    monkeypatch.setattr(procedural, "caption", lambda scene, camera, render=None, colours=1.0: "A changed world.")
    after = build()
    assert len(after) == len(before) == 8 and "A changed world." not in before
    assert all(c.endswith("A changed world.") for c in after)
