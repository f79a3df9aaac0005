"""Procedural-world editions end to end through the CLI: baselines score, oracles score perfectly."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from evals import registry
from onegen.cli import app
from tests.evals.cli_output import printed_result
from onegen.config import load_params, profile_path
from pipelines.evaluate import eval_dir, result_paths

runner = CliRunner()


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalproj")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["evals"]["world"].update(items=3, resolution=32, nvs_views=4, pose_views=4)
    p = root / "params.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _eval(params_file, name, *extra):
    r = runner.invoke(app, ["eval", name, "-p", str(params_file), *extra])
    assert r.exit_code == 0, r.output
    return json.loads(printed_result(r.output).read_text())


def _items(params_file, name):
    return registry.get(name)(load_params(params_file)).items()


def test_world_depth_baseline_and_oracle(params_file, tmp_path):
    base = _eval(params_file, "world_depth")
    assert base["model"]["kind"] == "baseline" and base["n_items"] == 3
    assert 5 < base["metrics"]["abs_rel"] < 100 and base["metrics"]["delta1"] < 95
    preds = tmp_path / "depth_preds"
    preds.mkdir()
    for it in _items(params_file, "world_depth"):
        np.save(preds / f"{it['id']}.npy", 3.0 * it["depth"] + 1.0)  # exact up to scale and shift
    oracle = _eval(params_file, "world_depth", "--predictor", f"folder:{preds}")
    assert oracle["model"]["kind"] == "predictions"
    assert oracle["metrics"]["abs_rel"] < 1e-3 and oracle["metrics"]["delta1"] == pytest.approx(100)
    again = _eval(params_file, "world_depth")
    assert again.pop("created") >= base.pop("created") and again == base  # the other predictor's run replaced nothing
    r = runner.invoke(app, ["leaderboard", "-p", str(params_file)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((params_file.parent / "reports/leaderboard.csv").open()))
    shown = {(row["model"], row["kind"]) for row in rows if row["benchmark"] == "world_depth"}
    assert shown == {("constant-depth", "baseline"), ("depth_preds", "predictions")}  # both, side by side


def test_folder_depth_declared_as_disparity_is_aligned_as_disparity(params_file, tmp_path):
    """An exact affine disparity scores 0 once its folder says ``disparity`` (and the result records it); read as
    depth, the default, the same files score far off. Anything else in depth_space.txt is one clear error."""
    preds = tmp_path / "disparity_preds"
    preds.mkdir()
    for it in _items(params_file, "world_depth"):
        np.save(preds / f"{it['id']}.npy", 3.0 / np.maximum(it["depth"], 1e-3) + 2.0)
    as_depth = _eval(params_file, "world_depth", "--predictor", f"folder:{preds}")
    (preds / "depth_space.txt").write_text("disparity\n")
    as_disparity = _eval(params_file, "world_depth", "--predictor", f"folder:{preds}")
    assert as_depth["model"]["depth_space"] == "depth" and as_disparity["model"]["depth_space"] == "disparity"
    assert as_disparity["metrics"]["abs_rel"] < 1e-3 < 5 < as_depth["metrics"]["abs_rel"]
    (preds / "depth_space.txt").write_text("inverse")
    r = runner.invoke(app, ["eval", "world_depth", "-p", str(params_file), "--predictor", f"folder:{preds}"])
    assert r.exit_code == 1 and "depth_space.txt: says 'inverse', expected one of depth, disparity" in r.output


def test_each_predictor_has_one_result_folder(params_file):
    params = load_params(params_file)
    top = params.paths.reports / "evals" / "world_depth"
    assert eval_dir(params, "world_depth", "baseline:constant-depth", "constant-depth") == top  # = evals.predictor
    a, b = (eval_dir(params, "world_depth", f"folder:{p}", "constant-depth") for p in ("/d/a_b", "/d/a/b"))
    assert a != b and a.parent == b.parent == top / "entries"  # alike as file names, still apart
    assert eval_dir(params, "world_depth", "model:ck/", "") == eval_dir(params, "world_depth", "model:./ck", "")


def test_the_leaderboard_reads_every_setting_of_every_predictor(params_file, tmp_path):
    loaded = load_params(params_file)
    params = loaded.model_copy(update={"paths": loaded.paths.model_copy(update={"reports": tmp_path})})
    folders = ["nvs_gso", "nvs_gso/settings/1-view", "nvs_gso/entries/m-1", "nvs_gso/entries/m-1/settings/1-view"]
    for folder in folders:
        (tmp_path / "evals" / folder).mkdir(parents=True)
        (tmp_path / "evals" / folder / "result.json").write_text("{}")
    (tmp_path / "evals/nvs_gso/settings/1-view/scores.json").write_text("{}")
    assert result_paths(params) == [tmp_path / "evals" / f / "result.json" for f in folders]


def test_world_nvs_baseline_below_oracle(params_file, tmp_path):
    base = _eval(params_file, "world_nvs")
    preds = tmp_path / "nvs_preds"
    for it in _items(params_file, "world_nvs"):
        (preds / it["id"]).mkdir(parents=True)
        for t in it["target_views"]:
            Image.fromarray(it["images"][t]).save(preds / it["id"] / f"{t:03d}.png")
    oracle = _eval(params_file, "world_nvs", "--predictor", f"folder:{preds}")
    assert 5 < base["metrics"]["psnr"] < oracle["metrics"]["psnr"]
    assert base["metrics"]["ssim"] < oracle["metrics"]["ssim"] == pytest.approx(1.0)
    assert "lpips" not in base["metrics"]  # no local LPIPS weights configured: not reported, not faked


def test_other_lpips_weights_rescore_every_cached_item(params_file, tmp_path):
    """The scorer's weights are part of an item's fingerprint: a run with other LPIPS weights in the same folder
    scores every item again (no mix of two scorers in one mean), and the same weights again reuse them all."""
    from tests.evals.nvs.test_metrics import save_lpips_weights

    d = yaml.safe_load(params_file.read_text())
    d["paths"]["reports"] = str(tmp_path / "reports")
    runs = []
    for seed in (0, 1, 1):
        d["evals"]["lpips_weights"] = str(save_lpips_weights(tmp_path / f"lpips_{seed}.pt", seed))
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
        result = _eval(tmp_path / "params.yaml", "world_nvs")
        cache = tmp_path / "reports/evals/world_nvs/items.jsonl"
        runs.append((result["metrics"]["lpips"], {json.loads(line)["item"] for line in cache.read_text().splitlines()}))
    (first, first_items), (second, second_items), (third, third_items) = runs
    assert first != second and not first_items & second_items and len(second_items) == 3
    assert third == second and third_items == second_items


def test_world_pose_chance_below_oracle(params_file, tmp_path):
    base = _eval(params_file, "world_pose")
    preds = tmp_path / "pose_preds"
    preds.mkdir()
    for it in _items(params_file, "world_pose"):
        w2c = np.stack(it["world_to_camera"])
        R = w2c[:, :3, :3]
        np.savez(preds / f"{it['id']}.npz", rotations=R, centres=-np.einsum("nji,nj->ni", R, w2c[:, :3, 3]))
    oracle = _eval(params_file, "world_pose", "--predictor", f"folder:{preds}")
    assert oracle["metrics"] == {"rot_acc_15": pytest.approx(100), "centre_acc_10": pytest.approx(100)}
    assert base["metrics"]["rot_acc_15"] < 100


def test_real_benchmarks_without_data_fail_with_the_params_key(params_file):
    for name, key in (("depth_nyuv2", "evals.nyuv2.path"), ("depth_diode", "evals.diode.path"),
                      ("nvs_gso", "evals.gso.path")):
        r = runner.invoke(app, ["eval", name, "-p", str(params_file)])
        assert r.exit_code == 1 and key in r.output, r.output
