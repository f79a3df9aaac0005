"""ID benchmarks end to end through the CLI: hand-computed aggregation, the world edition's
baselines in order, Unsplash-50 on a fixture in its real layout, and the model predictor's plumbing."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import evals.identity.benchmark as identity  # registers unsplash50_id and world_id
from evals import registry
from model.nextdit import CONFIGS, NextDiT
from onegen.cli import app
from tests.evals.cli_output import printed_result
from onegen.config import load_params, profile_path
from onegen.sources import procedural as world

runner = CliRunner()


def test_cosine_by_hand():
    assert identity.cosine([1, 0], [0, 2]) == 0.0
    assert identity.cosine([3, 4], [6, 8]) == pytest.approx(1.0)
    assert identity.cosine([1, 1], [1, 0]) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError, match="sizes differ"):
        identity.cosine([1, 0], [1, 0, 0])


def test_aggregate_counts_misses_as_zero_and_reports_them():
    scores = [{"id": 0.8, "detected": 1.0, "clip_t": 30.0}, {"id": 0.0, "detected": 0.0, "clip_t": 20.0},
              {"id": 0.5, "detected": 1.0, "clip_t": 25.0}, {"id": 0.0, "detected": 0.0, "clip_t": 21.0}]
    m = identity.aggregate_identity(scores)
    assert m == pytest.approx({"id": 1.3 / 4, "id_detected": 0.65, "det_rate": 50.0, "clip_t": 24.0})
    none = identity.aggregate_identity([{"id": 0.0, "detected": 0.0}])
    assert none == {"id": 0.0, "det_rate": 0.0}  # no id_detected (nothing to average), no clip_t (not scored)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("idproj")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["evals"]["world"].update(items=6, resolution=96)
    d["evals"].update(sampling_steps=2, cfg_scale=2.0, batch_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    return root


def _eval(params, name, *extra):
    r = runner.invoke(app, ["eval", name, "-p", str(params), *extra])
    assert r.exit_code == 0, r.output
    return json.loads(printed_result(r.output).read_text()), r.output


def test_world_id_chance_below_oracle_below_copy(project, tmp_path):
    params = project / "params.yaml"
    chance, _ = _eval(params, "world_id")
    assert chance["model"]["name"] == "random-scene" and chance["n_items"] == 6 and chance["setting"] == "default"
    copy, _ = _eval(params, "world_id", "--predictor", "baseline:copy-reference")
    oracle_dir = tmp_path / "oracle"  # the true second scene: the identity re-rendered elsewhere
    oracle_dir.mkdir()
    items = list(registry.get("world_id")(load_params(params)).items())
    for it in items:
        assert it["reference_mask"].any() and it["prompt"] != it["reference_captions"][0]
        Image.fromarray(it["target"]).save(oracle_dir / f"{it['id']}.png")
    oracle, _ = _eval(params, "world_id", "--predictor", f"folder:{oracle_dir}")
    assert chance["metrics"]["id"] < oracle["metrics"]["id"] < copy["metrics"]["id"] <= 1.0
    assert set(copy["metrics"]) == {"id", "id_detected", "det_rate"}  # no CLIP-T without clip_path


def test_world_id_scores_an_image_without_objects_zero(project, tmp_path):
    params = project / "params.yaml"
    empty = tmp_path / "empty"
    empty.mkdir()
    sky_and_ground = world.render(world.Scene((), 0), world.random_camera(0, 96, 96)).rgb
    for it in registry.get("world_id")(load_params(params)).items():
        Image.fromarray(sky_and_ground).save(empty / f"{it['id']}.png")
    res, out = _eval(params, "world_id", "--predictor", f"folder:{empty}")
    assert res["metrics"] == {"id": 0.0, "det_rate": 0.0}
    assert "world_id_00000: no object found in the generated image" in out


def test_model_predictor_answers_world_id(project):
    step = project / "ck" / "step_0000001"
    step.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    d = yaml.safe_load((project / "params.yaml").read_text())
    d["evals"]["world"].update(items=2, resolution=32)
    small = project / "small.yaml"
    small.write_text(yaml.safe_dump(d))
    res, _ = _eval(small, "world_id", "--predictor", f"model:{step}")
    assert res["model"]["kind"] == "model" and res["model"]["weights"] == "random"
    assert 0.0 <= res["metrics"]["id"] <= 1.0 and res["n_items"] == 2


@pytest.fixture(scope="module")
def unsplash(tmp_path_factory, face_image, arcface_onnx, tiny_clip):
    root = tmp_path_factory.mktemp("unsplash")
    data = root / "unsplash50"
    (data / "astronaut").mkdir(parents=True)
    Image.fromarray(face_image).save(data / "astronaut" / "ref.png")
    (data / "prompts.txt").write_text("a portrait of a person in a garden\na person riding a horse\n")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d.setdefault("annotators", {})["device"] = "cpu"
    d["evals"].setdefault("identity", {}).update(path=str(data), arcface_path=str(arcface_onnx), clip_path=str(tiny_clip),
                                  resolution=64)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    return root


def test_unsplash50_scores_faces_and_counts_a_miss_as_zero(unsplash, face_image):
    params = unsplash / "params.yaml"
    copy, _ = _eval(params, "unsplash50_id")  # the default baseline copies the reference
    assert copy["model"]["name"] == "copy-reference" and copy["data"]["name"] == "unsplash-50"
    assert copy["metrics"]["id"] == pytest.approx(1.0) and copy["metrics"]["det_rate"] == 100.0
    assert -100 <= copy["metrics"]["clip_t"] <= 100
    preds = unsplash / "preds"
    preds.mkdir()
    Image.fromarray(face_image).save(preds / "astronaut_000.png")
    no_face = world.render(world.sample_scene(5, 3, 4), world.random_camera(5, 128, 128)).rgb
    Image.fromarray(no_face).save(preds / "astronaut_001.png")
    res, out = _eval(params, "unsplash50_id", "--predictor", f"folder:{preds}")
    assert res["metrics"]["id"] == pytest.approx(0.5)  # (1 + 0) / 2: the miss counts
    assert res["metrics"]["id_detected"] == pytest.approx(1.0) and res["metrics"]["det_rate"] == 50.0
    assert "astronaut_001: no face found in the generated image (ID scored 0)" in out
    per_item = json.loads(printed_result(out).with_name("scores.json").read_text())
    assert per_item["astronaut_001"]["detected"] == 0.0 and per_item["astronaut_000"]["detected"] == 1.0


def test_unsplash50_without_its_inputs_names_the_params_key(project):
    r = runner.invoke(app, ["eval", "unsplash50_id", "-p", str(project / "params.yaml")])
    assert r.exit_code == 1 and "evals.identity.path is not set" in r.output


def test_an_unreadable_prediction_names_its_item(project, tmp_path):
    params = project / "params.yaml"
    preds = tmp_path / "broken"
    preds.mkdir()
    (preds / "world_id_00000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = runner.invoke(app, ["eval", "world_id", "-p", str(params), "--predictor", f"folder:{preds}"])
    assert r.exit_code == 1 and "world_id_00000" in r.output and "unreadable" in r.output


def test_unsplash50_rescores_when_its_face_or_clip_scorer_changes(unsplash, make_tiny_clip, tmp_path):
    """The ArcFace weights and normalisation and the CLIP weights are part of each item's fingerprint: a run in the
    same folder under another of them scores every item again, never mixing two scorers' numbers in one mean."""
    d = yaml.safe_load((unsplash / "params.yaml").read_text())
    d["paths"]["reports"] = str(tmp_path / "reports")
    other_clip = str(make_tiny_clip(tmp_path / "other-clip", seed=1))
    fingerprints, clip_t = [], []
    for change in ({}, {"arcface_mean": 120.0, "arcface_std": 127.5}, {"clip_path": other_clip}, {"clip_path": other_clip}):
        d["evals"]["identity"].update(change)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
        res, _ = _eval(tmp_path / "params.yaml", "unsplash50_id")
        rows = (tmp_path / "reports/evals/unsplash50_id/items.jsonl").read_text().splitlines()
        fingerprints.append({json.loads(row)["item"] for row in rows})
        clip_t.append(res["metrics"]["clip_t"])
    assert all(len(f) == 2 for f in fingerprints)
    assert not fingerprints[0] & fingerprints[1] and not fingerprints[1] & fingerprints[2]
    assert fingerprints[3] == fingerprints[2] and clip_t[3] == clip_t[2] != clip_t[1]  # the same scorer reuses
