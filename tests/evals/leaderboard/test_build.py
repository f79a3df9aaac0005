"""Leaderboard build: result JSONs + published.yaml -> Markdown, CSV, HTML."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.leaderboard import ResultError, build_leaderboard, load_published, load_results
from evals.leaderboard.build import main


def write_result(path: Path, benchmark: str, setting: str, metrics: dict, model: str = "onediffusion-2.8b",
                 kind: str = "model", samples: str | None = None, **model_extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": benchmark, "setting": setting,
        "model": {"name": model, "kind": kind, "hash": f"{model}-hash", **model_extra},
        "data": {"name": f"{benchmark}-data", "hash": "d1"}, "protocol_version": "1",
        "metrics": metrics, "n_items": 30, "command": f"onegen eval {benchmark} --predictor {model}",
        "samples": samples, "created": "2025-01-01T00:00:00+00:00"}))
    return path


@pytest.fixture
def results(tmp_path: Path) -> list[Path]:
    grid = tmp_path / "reports/evals/nvs_gso/samples.png"
    grid.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(grid)
    r = tmp_path / "reports/evals"
    return [
        write_result(r / "nvs_gso/result.json", "nvs_gso", "1-view", {"psnr": 19.4567, "ssim": 0.8512},
                     samples="reports/evals/nvs_gso/samples.png"),
        write_result(r / "nvs_copy/result.json", "nvs_gso", "1-view", {"psnr": 12.3, "ssim": 0.61},
                     model="copy-nearest-view", kind="baseline"),
        write_result(r / "depth_nyuv2/result.json", "depth_nyuv2", "default", {"abs_rel": 7.04, "delta1": 94.87}),
        write_result(r / "pose_gso/result.json", "pose_gso", "default", {"rot_acc_15": 55.0, "centre_acc_10": 40.0}),
        write_result(r / "world_depth/result.json", "world_depth", "default", {"abs_rel": 3.21, "delta1": 98.1},
                     model="tiny-random", weights="random"),
    ]


def test_markdown_has_ours_and_papers_rows(tmp_path, results):
    info = build_leaderboard(results, tmp_path / "out", root=tmp_path)
    md = info["md"].read_text()
    # our rows, rounded to the paper's precision, and the commands that made them
    assert "| **ours** | onediffusion-2.8b | model | 19.46 | 0.851 |" in md
    assert "| **ours** | copy-nearest-view | baseline | 12.30 | 0.610 |" in md
    assert "| **ours** | onediffusion-2.8b | model | 7.0 | 94.9 |" in md  # NYUv2 "default" -> the papers' "all"
    assert "`onegen eval nvs_gso --predictor onediffusion-2.8b`" in md
    # the papers' rows with their source
    assert "|  | Zero123-XL | published | 18.93 |  | OneDiffusion (Le et al. 2024) Table 2 |" in md
    assert "|  | DepthAnything-2 | published | 4.6 | 97.7 | OneDiffusion (Le et al. 2024) Table 4 |" in md
    assert "|  | UniCon | published | 7.9 | 93.9 | UniCon (2024) Table 2 |" in md
    assert "|  | FLUX-schnell | published | 0.71 | OneDiffusion (Le et al. 2024) Table 1 | Params (B) 12.0; # Data (M) –" in md
    # tables without a counterpart say so; world editions live in their own section
    assert "No published numbers for this benchmark." in md  # pose_gso
    world = md.split("## Procedural-world sanity editions")[1]
    assert "not comparable with any number in the papers" in world
    assert "| **ours** | tiny-random | random weights | 3.2 | 98.1 |" in world
    assert "| Params (B) 2.0; # Data (M) 14 |" in md  # as the paper prints them
    assert "world_depth" not in md.split("## Procedural-world sanity editions")[0]
    assert info["n_ours"] == 5 and info["n_published"] == len(load_published())
    assert "nvs_gso/2-view (unknown poses)" in info["tables"]


def test_csv_long_layout(tmp_path, results):
    info = build_leaderboard(results, tmp_path / "out", root=tmp_path)
    rows = list(csv.DictReader(info["csv"].open()))
    ours = [r for r in rows if r["origin"] == "ours" and r["benchmark"] == "nvs_gso" and r["kind"] == "model"]
    assert {(r["metric"], r["value"]) for r in ours} == {("psnr", "19.4567"), ("ssim", "0.8512")}
    assert ours[0]["command"] == "onegen eval nvs_gso --predictor onediffusion-2.8b"
    pub = [r for r in rows if r["origin"] == "published" and r["model"] == "OneDiffusion" and r["benchmark"] == "depth_diode"]
    assert {(r["metric"], float(r["value"])) for r in pub} == {("abs_rel", 29.4), ("delta1", 75.2)}
    assert {r["section"] for r in rows if r["benchmark"] == "world_depth"} == {"world"}
    assert {r["higher_is_better"] for r in rows if r["metric"] == "abs_rel"} == {"False"}


def test_html_is_self_contained(tmp_path, results):
    page = build_leaderboard(results, tmp_path / "out", root=tmp_path)["html"].read_text()
    assert "data:image/png;base64," in page  # the NVS sample grid is embedded
    assert page.count("<svg") >= 10
    assert "<script src" not in page and "<link" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert 'class="badge baseline"' in page and 'class="badge random"' in page


def test_annotator_quality_rows_are_drawn_in_the_world_section(tmp_path):
    res = write_result(tmp_path / "reports/evals/annotators/result.json", "annotators", "default",
                       {"depth_abs_rel": 9.5, "box_ap50": 41.0}, model="annotators: depth, segmenter",
                       kind="annotators")
    out = build_leaderboard([res], tmp_path / "out", root=tmp_path)
    page = out["html"].read_text()
    assert 'class="badge annotators"' in page and "Box AP50 (%)" in page
    assert "World — annotator quality" in out["md"].read_text().split("Procedural-world sanity editions")[1]


def test_missing_sample_is_omitted(tmp_path):
    res = write_result(tmp_path / "r.json", "nvs_gso", "1-view", {"psnr": 1.0}, samples="nowhere/samples.png")
    page = build_leaderboard([res], tmp_path / "out", root=tmp_path)["html"].read_text()
    assert "data:image" not in page


def test_result_folders_are_searched(tmp_path, results):
    assert len(load_results([tmp_path / "reports"], root=tmp_path)) == len(results)


@pytest.mark.parametrize("change, field", [
    (lambda d: d["metrics"].update(psnr="high"), "metrics.psnr"),
    (lambda d: d["model"].pop("kind"), "model.kind"),
    (lambda d: d["model"].update(kind="oracle"), "model.kind"),
    (lambda d: d.pop("command"), "command"),
    (lambda d: d.update(metrics={}), "metrics"),
])
def test_malformed_result_names_file_and_field(tmp_path, change, field):
    path = write_result(tmp_path / "bad/result.json", "nvs_gso", "1-view", {"psnr": 19.0})
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))
    out = tmp_path / "out"
    with pytest.raises(ResultError) as e:
        build_leaderboard([path], out)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"field '{field}'" in msg
    assert not out.exists()  # nothing half-written


def test_main_reports_one_line(tmp_path, results, capsys):
    assert main([str(tmp_path / "reports"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/leaderboard.html").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmark": "nvs_gso"}))
    assert main([str(bad), "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: field ") and "\n" not in err


def test_unreadable_result(tmp_path):
    bad = tmp_path / "result.json"
    bad.write_text("{not json")
    with pytest.raises(ResultError, match=r"result\.json: not valid JSON"):
        load_results([bad])
    with pytest.raises(ResultError, match="result file not found"):
        load_results([tmp_path / "absent.json"])


def _published(benchmark: str, setting: str, model: str, source_table: str) -> dict[str, float]:
    hits = [r for r in load_published() if (r.benchmark, r.setting, r.model) == (benchmark, setting, model)
            and r.source.endswith(source_table)]
    assert len(hits) == 1, hits
    return hits[0].metrics


def test_published_spot_checks():
    assert _published("geneval", "all", "OneDiffusion", "Table 1") == {"overall": 0.65}
    assert _published("depth_nyuv2", "all", "OneDiffusion", "Table 4") == {"abs_rel": 6.8, "delta1": 95.2}
    assert _published("depth_diode", "all", "OneDiffusion", "Table 4") == {"abs_rel": 29.4, "delta1": 75.2}
    assert _published("nvs_gso", "1-view", "OneDiffusion", "Table 2") == {"psnr": 19.01}
    assert _published("nvs_gso", "3-view (known poses)", "OneDiffusion", "Table 2") == {"psnr": 21.79}
    assert _published("unsplash50_id", "all", "OneDiffusion", "Table 3") == {"id": 0.283, "clip_t": 26.80}
    assert _published("unicon_conditions", "pose", "UniCon", "Table 1") == {"fid": 17.51, "pose_pck": 61.97}


def test_published_row_counts():
    counts: dict[str, int] = {}
    for r in load_published():
        counts[r.source] = counts.get(r.source, 0) + 1
        assert r.kind == "published" and r.metrics
    assert counts == {"OneDiffusion (Le et al. 2024) Table 1": 11, "OneDiffusion (Le et al. 2024) Table 2": 10,
                      "OneDiffusion (Le et al. 2024) Table 3": 4, "OneDiffusion (Le et al. 2024) Table 4": 18,
                      "UniCon (2024) Table 1": 9, "UniCon (2024) Table 2": 10}
