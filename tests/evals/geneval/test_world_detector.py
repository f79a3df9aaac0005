"""The world detector: YOLO segmentation export of the world's masks, a tiny real training run,
the detector adapter on its weights, and world_geneval end to end with the oracle."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from evals import benchmark
from evals.geneval.benchmark import WorldGenEval
from evals.geneval.detector import YoloDetector
from evals.geneval.world_detector import (CLASSES, COUNTING_THRESHOLDS, counting_oracle_renders, counting_pass_rates,
                                          export_split, fit_counting_threshold, fit_platt, instance_polygon,
                                          label_lines, match_detections, negative_image, settings_mismatch, train)
from evals.geneval.world_prompts import WorldOracle, ground_truth
from onegen.config import Params, WorldGenEvalConfig
from onegen.sources import procedural as world


def _raster(poly_xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (coordinates in image units)."""
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [np.round(poly_xy - 0.5).astype(np.int32)], 1)
    return out.astype(bool)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_polygon_of_a_split_mask_covers_both_parts():
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True
    mask[22:35, 20:38] = True  # a second piece, as when an occluder cuts an object in two
    poly = instance_polygon(mask)
    assert _iou(_raster(poly + 0.5, 40, 40), mask) > 0.97
    with pytest.raises(ValueError, match="empty mask"):
        instance_polygon(np.zeros((5, 5), bool))


def test_yolo_labels_match_the_instance_masks():
    checked = 0
    for s in range(6):
        scene = world.sample_scene(300 + s, 2, 6)
        r = world.render(scene, world.random_camera(300 + s, 96, 96))
        lines = label_lines(r, scene)
        visible = [o for o in scene.objects if o.instance_id in r.boxes]
        big = [o for o in visible if (r.instance == o.instance_id).sum() >= 30]
        assert len(lines) >= len(big)
        for line, o in zip(lines, visible):  # one line per visible object, in scene order
            fields = line.split()
            cls, xy = int(fields[0]), np.array(fields[1:], float).reshape(-1, 2)
            assert CLASSES[cls] == o.shape and len(xy) >= 3 and ((xy >= 0) & (xy <= 1)).all()
            mask = r.instance == o.instance_id
            if mask.sum() >= 30:
                assert _iou(_raster(xy * 96, 96, 96), mask) > 0.8
                checked += 1
    assert checked >= 10


def test_matching_counts_each_true_object_once():
    scene = world.Scene((world.SceneObject("cube", "red", "rubber", "small", (0.0, 0.0), 0.0, 1),
                         world.SceneObject("cube", "blue", "rubber", "small", (1.0, 0.0), 0.0, 2)), seed=0)
    r = world.Render(rgb=None, depth=None, instance=None, semantic=None, camera=None,
                     boxes={1: (10, 10, 20, 20), 2: (40, 10, 50, 20)})
    dets = {"cube": [{"box": [10, 10, 20, 20], "score": 0.9},    # exact: true
                     {"box": [11, 10, 21, 20], "score": 0.8},    # the same cube again (IoU 0.82): false
                     {"box": [41, 11, 51, 21], "score": 0.7},    # the other cube, IoU 81/119 = 0.68: true
                     {"box": [70, 70, 80, 80], "score": 0.6}],   # nothing there: false
            "sphere": [{"box": [10, 10, 20, 20], "score": 0.95}]}  # right place, wrong class: false
    assert sorted(match_detections(dets, scene, r)) == [(0.6, False), (0.7, True), (0.8, False), (0.9, True),
                                                        (0.95, False)]


def test_platt_scaling_recovers_a_known_calibration():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.02, 0.98, 20000)
    x = np.log(s / (1 - s))
    y = rng.random(20000) < 1 / (1 + np.exp(-(2.0 * x + 1.0)))  # true a = 2, b = 1
    a, b = fit_platt(s, y)
    assert abs(a - 2.0) < 0.1 and abs(b - 1.0) < 0.1
    a, b = fit_platt(s, rng.random(20000) < s)  # already calibrated: the identity
    assert abs(a - 1.0) < 0.05 and abs(b) < 0.05
    a, b = fit_platt(np.full(5, 0.1), np.zeros(5))  # one-sided and tiny: finite, still increasing
    assert np.isfinite([a, b]).all() and a > 0


def test_counting_pass_rates_follow_the_threshold():
    def counting(shape, n):
        return {"tag": "counting", "include": [{"class": shape, "count": n}],
                "exclude": [{"class": shape, "count": n + 1}], "prompt": f"A photo of {n} {shape}s."}

    def found(*scores):
        return [{"box": [10.0 * k, 5.0, 10.0 * k + 8, 13.0], "score": s} for k, s in enumerate(scores)]

    prompts = [counting("cube", 3), counting("sphere", 2)]
    detections = [{"cube": found(0.95, 0.8, 0.6, 0.35)},  # three above 0.35 and below 0.6: exact
                  {"sphere": found(0.99, 0.97)}]  # right at every candidate
    rates = counting_pass_rates(prompts, detections, 64)
    assert list(rates) == list(COUNTING_THRESHOLDS) and COUNTING_THRESHOLDS[0] == 0.3 and COUNTING_THRESHOLDS[-1] == 0.9
    assert rates[0.3] == 0.5 and rates[0.35] == rates[0.55] == 1.0 and rates[0.6] == rates[0.9] == 0.5


def test_counting_threshold_is_fitted_on_oracle_renders():
    held_out = counting_oracle_renders(seed=3, size=64, scenes=6)
    truth = {r.rgb.tobytes(): ground_truth(scene, r) for _, scene, r in held_out}
    assert all(m["tag"] == "counting" for m, _, _ in held_out) and len(truth) == 6

    def sure_at(score):  # a detector that finds exactly the rendered objects, each at `score`
        return lambda images: [{k: [dict(d, score=score) for d in ds] for k, ds in truth[im.tobytes()].items()}
                               for im in images]

    fitted = fit_counting_threshold(sure_at(0.6), seed=3, size=64, scenes=6)
    assert fitted["counting_threshold"] == 0.55 and fitted["counting_scenes"] == 6  # the highest that keeps them
    assert [fitted["counting_oracle_pass"][f"{t:.2f}"] for t in COUNTING_THRESHOLDS] == [1.0] * 6 + [0.0] * 7
    nothing = fit_counting_threshold(lambda images: [{} for _ in images], seed=3, size=64, scenes=6)
    assert nothing["counting_threshold"] == 0.9  # no signal: GenEval's own


TINY = dict(train_images=8, val_images=4, epochs=1, imgsz=64, batch=4, seed=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on a handful of 64-pixel renders: a real (if useless) training run."""
    out = tmp_path_factory.mktemp("data") / "world_detector"
    return out, train(WorldGenEvalConfig(**TINY), 64, out)


def world_params(detector_dir, reports, **world_geneval) -> Params:
    return Params.model_validate({"paths": {"data": str(detector_dir.parent), "reports": str(reports)},
                                  "world": {"resolution": 64},
                                  "evals": {"geneval": {"world": {**TINY, "prompts": 6, **world_geneval}}}})


def test_export_writes_yolo_layout(tmp_path):
    export_split(tmp_path, "train", 3, seed=1, size=64)
    images = sorted((tmp_path / "images" / "train").glob("*.png"))
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    assert [p.stem for p in images] == [p.stem for p in labels] == ["00000", "00001", "00002"]
    assert cv2.imread(str(images[0])).shape == (64, 64, 3)


def test_negatives_are_background_images_with_empty_labels(tmp_path):
    export_split(tmp_path, "train", 2, seed=1, size=64, negatives=3)
    labels = {p.stem: p.read_text() for p in (tmp_path / "labels" / "train").glob("*.txt")}
    assert sorted(labels) == ["00000", "00001", "neg00000", "neg00001", "neg00002"]
    assert all(labels[k] == "" for k in labels if k.startswith("neg")) and labels["00000"]
    kinds = [negative_image("train", i, 1, 64) for i in range(3)]  # smooth noise, pixel noise, shuffled render
    assert all(k.shape == (64, 64, 3) and k.dtype == np.uint8 for k in kinds)
    assert np.abs(np.diff(kinds[0].astype(int), axis=1)).mean() < np.abs(np.diff(kinds[1].astype(int), axis=1)).mean()
    assert np.array_equal(negative_image("train", 2, 1, 64), kinds[2])  # seeded
    assert not np.array_equal(negative_image("val", 2, 1, 64), kinds[2])  # held-out negatives are other images


def test_training_smoke_run_writes_loadable_weights_and_metrics(trained):
    out, metrics = trained
    assert (out / "weights.pt").is_file()
    timings = {"export_seconds", "train_seconds"}
    assert json.loads((out / "metrics.json").read_text()) == {k: v for k, v in metrics.items() if k not in timings}
    assert metrics["train_seconds"] > 0 and metrics["export_seconds"] >= 0
    assert 0.0 <= metrics["map50_box"] <= 1.0 and metrics["epochs"] == 1 and metrics["train_images"] == 8
    assert metrics["score_calibration"]["a"] > 0 and metrics["score_calibration"]["detections"] >= 0
    assert 0 <= metrics["negative_fp_rate"] <= 1 and metrics["val_negatives"] == 1
    assert metrics["counting_threshold"] in COUNTING_THRESHOLDS and len(metrics["counting_oracle_pass"]) == 13
    det = YoloDetector.load(out / "weights.pt", "test")
    assert det.names == list(CLASSES)
    det.CONF = 0.0  # an untrained model's scores are tiny: look at everything it returns
    images = [world.render(world.sample_scene(s, 2, 4), world.random_camera(s, 64, 64)).rgb for s in (1, 2)]
    out_dets = det(images)
    assert len(out_dets) == 2
    n = 0
    for dets in out_dets:
        for name, found in dets.items():
            assert name in CLASSES
            for x in found:
                x1, y1, x2, y2 = x["box"]
                assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64 and 0 <= x["score"] <= 1
                assert x["mask"].shape == (64, 64) and x["mask"].dtype == bool
                n += 1
    assert n > 0
    assert [sorted(d) for d in det(images)] == [sorted(d) for d in out_dets]  # deterministic


def test_detector_load_errors_name_the_key(tmp_path):
    from onegen.annotators.base import AnnotatorError

    with pytest.raises(AnnotatorError, match="evals.geneval.detector_path is not set"):
        YoloDetector.load_coco(None)
    with pytest.raises(AnnotatorError, match="my.key: .* not found"):
        YoloDetector.load(tmp_path / "missing.pt", "my.key")


def test_training_again_writes_the_same_bytes(trained, tmp_path):
    out, metrics = trained
    again = train(WorldGenEvalConfig(**TINY), 64, tmp_path / "world_detector")
    for name in ("weights.pt", "metrics.json"):  # what the evaluations depend on
        assert (tmp_path / "world_detector" / name).read_bytes() == (out / name).read_bytes(), name
    assert again["map50_box"] == metrics["map50_box"]
    ckpt = torch.load(out / "weights.pt", map_location="cpu", weights_only=False)
    assert set(ckpt) == {"version", "model", "train_args"} and ckpt["train_args"]["imgsz"] == 64
    assert "data" not in ckpt["model"].args and "save_dir" not in ckpt["model"].args


def test_world_geneval_end_to_end_with_the_oracle(trained, tmp_path):
    out, metrics = trained
    bench = WorldGenEval(world_params(out, tmp_path))
    bench.name = "world_geneval"
    result = benchmark.run(bench, WorldOracle(), tmp_path / "run", batch_size=2, limit=4)
    m = result["metrics"]
    assert result["n_items"] == 4 and result["model"]["kind"] == "baseline"
    assert set(m) == {"overall", "single_object", "two_object", "counting", "colors", "correct_images",
                      "correct_prompts", "detector_map50", "detector_noise_fp"}
    assert all(0.0 <= v <= 1.0 for v in m.values()) and m["detector_map50"] == metrics["map50_box"]
    assert m["detector_noise_fp"] == metrics["negative_fp_rate"]
    assert bench.counting_threshold == metrics["counting_threshold"]
    assert metrics["counting_threshold"] in bench.scorers()  # another threshold, other scores
    assert (tmp_path / "run" / "samples.partial.png").is_file()
    again = benchmark.run(bench, WorldOracle(), tmp_path / "run", batch_size=2, limit=4)  # resumes from the cache
    assert again["metrics"] == m


def test_world_geneval_without_a_detector_says_which_stage_to_run(tmp_path):
    params = Params.model_validate({"paths": {"data": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match="onegen world-detector"):
        WorldGenEval(params)


def test_world_geneval_refuses_a_detector_without_its_counting_threshold(trained, tmp_path):
    out, metrics = trained
    old = tmp_path / "data" / "world_detector"
    old.mkdir(parents=True)
    (old / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "counting_threshold"}))
    with pytest.raises(FileNotFoundError, match="predates the counting threshold.*onegen world-detector"):
        WorldGenEval(world_params(old, tmp_path))


def test_world_geneval_refuses_a_detector_trained_for_other_settings(trained, tmp_path):
    out, metrics = trained
    with pytest.raises(ValueError, match=r"epochs 1 \(params: 2\).*onegen world-detector"):
        WorldGenEval(world_params(out, tmp_path, epochs=2))
    assert settings_mismatch(metrics, WorldGenEvalConfig(**TINY), 64) is None
    assert "render_size 64 (params: 128)" in settings_mismatch(metrics, WorldGenEvalConfig(**TINY), 128)
