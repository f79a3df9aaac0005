"""GenEval's scoring (summary_scores.py arithmetic), colour bookkeeping, its folder layout, and the
``geneval`` benchmark end to end with tiny seeded models standing in for YOLO and CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evals import benchmark
from evals.geneval.benchmark import GenEval, classify_colors, load_metadata, summarize
from evals.predictors import FolderPredictions, PredictionError, RandomScene
from onegen.annotators.base import AnnotatorError
from onegen.config import Params


def test_summary_is_the_mean_of_tag_accuracies_over_images():
    scores = [{"counting_images": 4.0, "counting_correct": 2.0},
              {"counting_images": 4.0, "counting_correct": 0.0},
              {"colors_images": 4.0, "colors_correct": 4.0}]
    # counting 2/8, colors 4/4 -> overall (0.25 + 1) / 2; images 6/12; prompts 2 of 3 have a correct image
    assert summarize(scores) == {"overall": 0.625, "counting": 0.25, "colors": 1.0, "correct_images": 0.5,
                                 "correct_prompts": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="no scored images"):
        summarize([])


def test_colours_are_classified_only_where_a_clause_looks():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "two red cars"}
    dets = {"car": [{"box": [0, 0, 5, 5], "score": s, "mask": None} for s in (0.5, 0.9, 0.2, 0.7)],
            "dog": [{"box": [0, 0, 5, 5], "score": 0.9, "mask": None}]}
    calls = []

    def classifier(image, objects, name):
        calls.append((name, len(objects)))
        return ["red", "blue"]

    out = classify_colors(np.zeros((8, 8, 3), np.uint8), dets, meta, classifier)
    assert calls == [("car", 2)]
    assert [d["color"] for d in out["car"]] == [None, "red", None, "blue"]  # the two most confident, in score order
    assert out["dog"][0]["color"] is None and "color" not in dets["car"][1]  # the input is not modified
    # too few cars kept: GenEval classifies nothing
    calls.clear()
    classify_colors(np.zeros((8, 8, 3), np.uint8), {"car": dets["car"][:1]}, meta, classifier)
    assert calls == []


def test_metadata_loader_names_a_bad_line(tmp_path):
    rows = load_metadata()
    assert len(rows) == 553 and sum(r["tag"] == "counting" for r in rows) == 80
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(rows[0]) + "\n" + '{"tag": "single_object", "prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a GenEval metadata line"):
        load_metadata(p)


def _items(n_images=2):
    return [{"id": "00007", "prompt": "a photo of a cat", "n_images": n_images, "size": (16, 16),
             "metadata": {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}}]


def test_folder_predictions_read_genevals_layout(tmp_path):
    folder = tmp_path / "00007" / "samples"
    folder.mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((16, 16, 3), k * 50, np.uint8)).save(folder / f"{k:04d}.png")
    (tmp_path / "00007" / "metadata.jsonl").write_text(json.dumps({"prompt": "a photo of a cat"}))
    images = FolderPredictions(tmp_path).generate_images(_items())[0]
    assert [int(im[0, 0, 0]) for im in images] == [0, 50]
    with pytest.raises(PredictionError, match="00007: 2 images .* needs 3"):
        FolderPredictions(tmp_path).generate_images(_items(3))
    (tmp_path / "00007" / "metadata.jsonl").write_text(json.dumps({"prompt": "a photo of a dog"}))
    with pytest.raises(PredictionError, match="another prompt"):
        FolderPredictions(tmp_path).generate_images(_items())


def test_default_baselines_resolve():
    from evals.geneval.benchmark import WorldGenEval
    from evals.predictors import make_predictor

    assert make_predictor(f"baseline:{GenEval.baseline}").describe()["name"] == "random-scene"
    assert make_predictor(f"baseline:{WorldGenEval.baseline}").describe()["name"] == "oracle"


def test_geneval_needs_both_paths_and_names_the_keys(tmp_path):
    with pytest.raises(AnnotatorError, match="evals.geneval.detector_path is not set"):
        GenEval(Params())
    (tmp_path / "det.pt").write_bytes(b"x")
    with pytest.raises(AnnotatorError, match="evals.geneval.clip_path is not set"):
        GenEval(Params.model_validate({"evals": {"geneval": {"detector_path": str(tmp_path / "det.pt")}}}))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A COCO-sized YOLOv8n-seg and a tiny CLIP, seeded random weights, saved as the user's files would be."""
    import open_clip

    from onegen.annotators.yolo import import_ultralytics

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    import_ultralytics().YOLO("yolov8n-seg.yaml").save(d / "yolo.pt")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "geneval-bench-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "geneval-bench-tiny-clip.json")
    torch.save(open_clip.create_model("geneval-bench-tiny-clip").state_dict(), d / "clip.pt")
    return d


def test_geneval_end_to_end_with_tiny_models(tiny_models, tmp_path):
    params = Params.model_validate({"evals": {"geneval": {
        "detector_path": str(tiny_models / "yolo.pt"), "clip_path": str(tiny_models / "clip.pt"),
        "clip_model": "geneval-bench-tiny-clip", "image_size": 64, "images_per_prompt": 2}}})
    bench = GenEval(params)
    bench.name = "geneval"
    items = bench.items()
    assert len(items) == 553 and items[0]["id"] == "00000" and items[0]["size"] == (64, 64)
    result = benchmark.run(bench, RandomScene(), tmp_path, batch_size=3, limit=3)
    assert result["n_items"] == 3 and result["model"]["name"] == "random-scene"
    m = result["metrics"]
    assert set(m) == {"overall", "correct_images", "correct_prompts", *{it["metadata"]["tag"] for it in items[:3]}}
    assert all(0.0 <= v <= 1.0 for v in m.values())
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert all(sum(v for k, v in r["scores"].items() if k.endswith("_images")) == 2.0 for r in rows)
