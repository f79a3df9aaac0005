"""Condition benchmarks end to end through the CLI: the world edition's baselines (Canny, and
depth with a tiny Depth-Anything), the model predictor's plumbing, and UniCon's real-data
edition on a fixture in its layout with FID from a random FID Inception."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import evals.condition.benchmark  # noqa: F401 -- registers unicon_conditions and world_conditions
from evals import registry
from model.nextdit import CONFIGS, NextDiT
from onegen.cli import app
from tests.evals.cli_output import printed_result
from onegen.config import load_params, profile_path

runner = CliRunner()


def _params(root, items=4, resolution=64):
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["evals"]["world"].update(items=items, resolution=resolution)
    d["evals"].update(sampling_steps=2, cfg_scale=2.0, batch_size=4)
    d.setdefault("annotators", {})["device"] = "cpu"
    return d


def _write(root, d):
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    return root / "params.yaml"


def _eval(params, name, *extra):
    r = runner.invoke(app, ["eval", name, "-p", str(params), *extra])
    assert r.exit_code == 0, r.output
    return json.loads(printed_result(r.output).read_text()), r.output


def test_world_canny_and_depth_edges_copy_is_exact_and_chance_is_far(tmp_path):
    params = _write(tmp_path, _params(tmp_path))
    chance, out = _eval(params, "world_conditions")
    assert chance["setting"] == "canny+depth_edges" and chance["model"]["name"] == "random-scene"
    assert chance["n_items"] == 8  # 4 scenes, each as canny->image and depth->image
    assert "skipped: depth AbsRel (set annotators.depth.path); FID (set evals.condition.inception_path)" in out
    assert set(chance["metrics"]) == {"edge_emse", "depth_edge_emse"}
    assert chance["metrics"]["edge_emse"] > 50 and chance["metrics"]["depth_edge_emse"] > 50
    copy, _ = _eval(params, "world_conditions", "--predictor", "baseline:copy-reference")
    assert copy["metrics"] == {"edge_emse": 0.0, "depth_edge_emse": 0.0}
    canny, depth = list(registry.get("world_conditions")(load_params(params)).items())[:2]
    assert canny["condition"].shape == (64, 64, 3) and canny["condition"].dtype == np.uint8
    assert set(np.unique(canny["condition"])) <= {0, 255} and canny["prompt"] and canny["size"] == (64, 64)
    # depth->image: the generator is given the scene's depth (a depth task), scored by Canny
    assert (depth["condition_kind"], depth["scorer"]) == ("depth", "depth_edges")
    assert len(np.unique(depth["condition"])) > 2 and np.array_equal(depth["image"], canny["image"])
    assert np.array_equal(depth["reference_annotation"], canny["reference_annotation"])


def test_world_conditions_runs_the_configured_conditions_only(tmp_path):
    d = _params(tmp_path, items=2)
    d["evals"]["world"]["conditions"] = ["depth_edges"]
    res, _ = _eval(_write(tmp_path, d), "world_conditions")
    assert res["setting"] == "depth_edges" and res["n_items"] == 2 and set(res["metrics"]) == {"depth_edge_emse"}


def test_world_depth_runs_when_the_depth_annotator_is_configured(tmp_path, depth_anything):
    d = _params(tmp_path)
    d["annotators"]["depth"] = {"path": str(depth_anything), "input_size": 56}
    params = _write(tmp_path, d)
    copy, _ = _eval(params, "world_conditions", "--predictor", "baseline:copy-reference")
    assert copy["setting"] == "canny+depth_edges+depth" and copy["n_items"] == 12
    assert copy["metrics"] == pytest.approx({"edge_emse": 0.0, "depth_edge_emse": 0.0, "depth_abs_rel": 0.0},
                                            abs=1e-9)
    chance, _ = _eval(params, "world_conditions")
    assert chance["metrics"]["depth_abs_rel"] > 0.1 and chance["metrics"]["edge_emse"] > 50
    item = next(it for it in registry.get("world_conditions")(load_params(params)).items()
                if it["scorer"] == "depth")
    assert item["condition"].shape == (64, 64, 3) and item["reference_annotation"].shape == (64, 64)


def test_model_predictor_answers_world_conditions(tmp_path):
    step = tmp_path / "ck" / "step_0000001"
    step.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text(json.dumps({"step": 1, "depth_condition": 2}))  # as the trainer writes now
    params = _write(tmp_path, _params(tmp_path, items=2, resolution=32))
    res, _ = _eval(params, "world_conditions", "--predictor", f"model:{step}")
    assert res["model"]["weights"] == "random" and res["n_items"] == 4
    assert 0 <= res["metrics"]["edge_emse"] <= 100 and 0 <= res["metrics"]["depth_edge_emse"] <= 100


def test_unicon_conditions_on_real_layout_with_fid(tmp_path, inception_path):
    data = tmp_path / "images"
    data.mkdir()
    rows = []
    for i in range(2):
        yy, xx = np.mgrid[0:48, 0:60]
        img = np.stack([(xx * 4 + 40 * i) % 256, yy * 5, (xx + yy) * 2 % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(data / f"img{i}.png")
        rows.append(json.dumps({"file_name": f"img{i}.png", "text": f"caption {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    d = _params(tmp_path)
    d["evals"]["condition"] = {"path": str(data), "condition": "canny", "resolution": 48}
    params = _write(tmp_path, d)
    r = runner.invoke(app, ["eval", "unicon_conditions", "-p", str(params)])
    assert r.exit_code == 1 and "evals.condition.inception_path is not set" in r.output
    d["evals"]["condition"]["inception_path"] = str(inception_path)
    params = _write(tmp_path, d)
    copy, _ = _eval(params, "unicon_conditions")  # the default baseline: the real images themselves
    assert copy["setting"] == "canny" and copy["model"]["name"] == "copy-reference" and copy["n_items"] == 2
    assert copy["metrics"] == pytest.approx({"edge_emse": 0.0, "fid": 0.0}, abs=1e-6)
    per_item = json.loads((tmp_path / "reports/evals/unicon_conditions/scores.json").read_text())
    assert set(per_item) == {"img0", "img1"} and {"fid_real", "fid_fake", "edge_emse"} <= set(per_item["img0"])


def test_unicon_conditions_without_data_names_the_params_key(tmp_path):
    r = runner.invoke(app, ["eval", "unicon_conditions", "-p", str(_write(tmp_path, _params(tmp_path)))])
    assert r.exit_code == 1 and "evals.condition.path is not set" in r.output
