"""``onegen eval annotators``: exact ground truth scores perfectly, and every scored annotator runs its
full path on tiny random-weight models (their figures mean nothing; the result names what ran)."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from evals import benchmark as runner_lib
from evals.annotators.benchmark import AnnotatorQuality, AnnotatorSuite
from onegen.annotators.captioner import Captioner, CaptionResult
from onegen.annotators.depth import DepthAnnotator
from onegen.annotators.segment import Segmentation, Segmenter
from onegen.cli import app
from onegen.config import (CaptionerConfig, DepthAnnotatorConfig, SegmenterConfig, load_profile, parse_params,
                           profile_path)
from tests.tiny_annotators import (OPEN, build_tiny_llava_next, save_tiny_depth_anything, save_tiny_grounding_dino,
                                   tiny_sam)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(tmp_path, annotators=None):
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")}
    d["evals"]["world"].update(items=3, resolution=64)
    d["annotators"].update(annotators or {})
    return d


def _oracle(item) -> dict:
    """What perfect annotators would answer: the renderer's own depth, instances and nouns."""
    ids = [k for k in np.unique(item["instance"]) if k > 0]
    seg = Segmentation(entities=item["nouns"], labels=item["labels"], boxes=item["boxes"].astype(np.float32),
                       scores=np.ones(len(ids), np.float32), mask_scores=np.ones(len(ids), np.float32),
                       masks=np.stack([item["instance"] == k for k in ids]),
                       instance=item["instance"].astype(np.uint16))
    disparity = np.where(item["depth"] > 0, 1 / np.maximum(item["depth"], 1e-6), 0).astype(np.float32)
    caption = CaptionResult(True, "Here: " + ", ".join(item["nouns"]) + ".", tuple(item["nouns"]), None, "", 1)
    return {"disparity": disparity, "segmentation": seg, "caption": caption}


def test_exact_ground_truth_scores_perfectly():
    bench = AnnotatorQuality(load_profile("default"))
    items = list(bench.items())
    assert len(items) == 24 and all(it["labels"] for it in items)
    m = bench.aggregate([bench.score(it, _oracle(it)) for it in items])
    assert m["depth_abs_rel"] == pytest.approx(0, abs=1e-4) and m["depth_delta1"] == 100
    assert m["box_ap50"] == pytest.approx(100) and m["mask_iou"] == pytest.approx(100)
    assert m["caption_valid"] == m["entity_recall"] == m["caption_recall"] == 100


def test_a_wrong_answer_costs_points():
    bench = AnnotatorQuality(load_profile("default"))
    item = next(iter(bench.items()))
    pred = _oracle(item)
    pred["disparity"] = pred["disparity"][::-1].copy()  # upside down
    pred["caption"] = CaptionResult(False, None, (), "too short", "x", 2)  # invalid: recalls nothing
    seg = pred["segmentation"]
    pred["segmentation"] = Segmentation(seg.entities, ["sphere" if lab != "sphere" else "cube" for lab in seg.labels],
                                        seg.boxes, seg.scores, seg.mask_scores, seg.masks, seg.instance)
    m = bench.aggregate([bench.score(item, pred)])
    assert m["depth_abs_rel"] > 5 and m["caption_valid"] == m["entity_recall"] == 0
    assert m["box_ap50"] == 0 and m["mask_iou"] == pytest.approx(100)  # right cut, wrong name


def test_boxes_on_an_empty_scene_are_false_positives():
    bench = AnnotatorQuality(load_profile("default"))
    item = next(iter(bench.items()))
    empty = {**item, "instance": np.zeros_like(item["instance"]), "boxes": np.zeros((0, 4)), "labels": [],
             "nouns": []}
    pred = _oracle(item)["segmentation"]
    alone = bench.aggregate([bench.score(item, {"segmentation": pred})])
    assert alone["box_ap50"] == pytest.approx(100)
    confident = Segmentation(pred.entities, pred.labels, pred.boxes, pred.scores + 1, pred.mask_scores, pred.masks,
                             pred.instance)  # ranked above every true box, so they cost precision
    both = bench.aggregate([bench.score(item, {"segmentation": pred}),
                            bench.score(empty, {"segmentation": confident})])
    assert both["box_ap50"] < 100 and both["mask_iou"] == pytest.approx(100)  # empty scenes add no instances


def test_every_scored_annotator_runs_its_full_path(tmp_path):
    save_tiny_depth_anything(tmp_path / "da")
    save_tiny_grounding_dino(tmp_path / "gdino")
    torch.manual_seed(0)
    torch.save(tiny_sam().state_dict(), tmp_path / "sam.pth")
    build_tiny_llava_next(tmp_path / "vlm")
    suite = AnnotatorSuite({
        "depth": DepthAnnotator.load(DepthAnnotatorConfig(path=tmp_path / "da", input_size=56), "cpu"),
        "segmenter": Segmenter.load(SegmenterConfig(detector_path=tmp_path / "gdino", sam_path=tmp_path / "sam.pth",
                                                    sam_model="vit_b", **OPEN), "cpu", sam_build=tiny_sam),
        "captioner": Captioner.load(CaptionerConfig(path=tmp_path / "vlm", max_new_tokens=6, min_words=3,
                                                    max_words=40, max_entities=3, retries=0), "cpu")}, off={})
    params = parse_params(_params(tmp_path))
    res = runner_lib.run(AnnotatorQuality(params), suite, tmp_path / "out", batch_size=2)
    assert res["n_items"] == 3 and res["model"]["kind"] == "annotators"
    assert [r["name"] for r in res["model"]["annotators"]] == ["depth-anything-v2", "grounding_dino", "segment_anything_custom",
                                                                "captioner"]
    m = res["metrics"]
    assert set(m) == {"depth_abs_rel", "depth_delta1", "mask_iou", "box_ap50", "caption_valid", "entity_recall",
                      "caption_recall"}
    assert all(0 <= v <= 100 for k, v in m.items() if k != "depth_abs_rel") and m["depth_abs_rel"] > 0
    assert (tmp_path / "out" / "samples.png").is_file()


def test_cli_scores_what_params_configures_and_names_the_rest(tmp_path):
    save_tiny_depth_anything(tmp_path / "da")
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(_params(tmp_path, {"device": "cpu", "depth": {"path": str(tmp_path / "da"),
                                                                               "input_size": 56}})))
    r = CliRunner().invoke(app, ["eval", "annotators", "-p", str(p)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "reports/evals/annotators/result.json").read_text())
    assert set(res["metrics"]) == {"depth_abs_rel", "depth_delta1"}
    assert res["model"]["not_configured"] == {
        "segmenter": "annotators.segmenter.detector_path + annotators.segmenter.sam_path",
        "captioner": "annotators.captioner.path"}
    r = CliRunner().invoke(app, ["eval", "annotators", "-p", str(p), "--predictor", "baseline"])
    assert r.exit_code != 0 and "--predictor does not apply" in r.output


def test_nothing_configured_is_a_clear_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(_params(tmp_path)))
    r = CliRunner().invoke(app, ["eval", "annotators", "-p", str(p)])
    assert r.exit_code != 0 and "annotators: none is configured; set annotators.depth.path" in r.output


def test_a_changed_setting_is_scored_afresh(tmp_path):
    """The cache key covers the annotators' params blocks, not only their weights."""
    save_tiny_depth_anything(tmp_path / "da")
    hashes = []
    for size in (56, 112):
        d = _params(tmp_path, {"device": "cpu", "depth": {"path": str(tmp_path / "da"), "input_size": size}})
        hashes.append(AnnotatorSuite.from_params(parse_params(d)).describe()["hash"])
    assert hashes[0] != hashes[1]
