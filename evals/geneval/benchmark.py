"""GenEval (OneDiffusion Table 1) and its procedural-world edition.

An item is one prompt -- a line of GenEval's ``evaluation_metadata.jsonl`` (553 prompts, shipped
in ``data/`` with its MIT licence) or of the world's grammar. The predictor generates
``images_per_prompt`` images (``generate_images``); each is detected, the objects a colour clause
looks at are colour-classified, and ``rules.judge`` gives its verdict. As GenEval's
``summary_scores.py``: a tag's accuracy is the fraction of its images judged correct, the overall
score the mean over the six tags, and a prompt is correct when any of its images is.

``geneval`` uses a COCO YOLO segmentation model and CLIP ViT-L-14 from local paths;
``world_geneval`` the detector trained on world renders by ``onegen world-detector`` and the
world's palette classifier (``colors.WorldColorClassifier``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from evals.benchmark import Benchmark
from evals.geneval.colors import ColorClassifier, WorldColorClassifier
from evals.geneval.detector import Detections, YoloDetector
from evals.geneval.rules import COUNTING_THRESHOLD, TAGS, judge, keep_detections
from evals.geneval.world_detector import detector_dir, settings_mismatch
from evals.geneval.world_prompts import make_prompts
from evals.registry import register
from onegen.annotators.base import require_path, weights_sha256
from onegen.config import Params
from onegen.sources import procedural as world

METADATA = Path(__file__).with_name("data") / "evaluation_metadata.jsonl"
TILE = 96


def load_metadata(path: Path = METADATA) -> list[dict]:
    """GenEval's prompts, one metadata dict per line; a malformed line fails naming it."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            m = json.loads(line)
            if m["tag"] not in TAGS or not isinstance(m["prompt"], str) or not m["include"]:
                raise ValueError(f"tag {m['tag']!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a GenEval metadata line ({e})") from None
        out.append(m)
    return out


def classify_colors(image: np.ndarray, detections: Detections, metadata: dict, classifier,
                    counting_threshold: float = COUNTING_THRESHOLD) -> Detections:
    """A copy of ``detections`` with ``color`` set where GenEval looks at it: the ``count`` most
    confident kept objects of each colour clause that found enough of them."""
    dets = {name: [dict(d, color=d.get("color")) for d in ds] for name, ds in detections.items()}
    kept = keep_detections(dets, metadata["tag"], counting_threshold)  # the same dicts: colours set here reach `dets`
    for req in metadata.get("include", []):
        objs = kept.get(req["class"], [])[: req["count"]]
        if "color" in req and len(objs) == req["count"]:
            for d, c in zip(objs, classifier(image, [(d["box"], d.get("mask")) for d in objs], req["class"])):
                d["color"] = c
    return dets


def judge_images(images: list[np.ndarray], metadata: dict, detector, classifier,
                 counting_threshold: float = COUNTING_THRESHOLD) -> list[tuple[bool, str]]:
    """GenEval's verdict on each image of one prompt."""
    out = []
    for image, dets in zip(images, detector(images), strict=True):
        colored = classify_colors(image, dets, metadata, classifier, counting_threshold)
        out.append(judge(metadata, colored, *image.shape[:2], counting_threshold))
    return out


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per-tag accuracy over images, their mean (``overall``), % correct images and prompts (as fractions)."""
    out: dict[str, float] = {}
    for tag in TAGS:
        n = sum(s.get(f"{tag}_images", 0.0) for s in scores)
        if n:
            out[tag] = sum(s.get(f"{tag}_correct", 0.0) for s in scores) / n
    if not out:
        raise ValueError("GenEval: no scored images")
    images = sum(v for s in scores for k, v in s.items() if k.endswith("_images"))
    correct = [sum(v for k, v in s.items() if k.endswith("_correct")) for s in scores]
    return {"overall": float(np.mean(list(out.values()))), **out, "correct_images": sum(correct) / images,
            "correct_prompts": float(np.mean([c > 0 for c in correct]))}


class _GenEvalBenchmark(Benchmark):
    baseline = "random-scene"
    needs = "generate_images"
    # as the original: 2 float32 thresholds and relations, numpy-1.23 tie order; 3 CLIP colours under fp16 autocast on CUDA
    protocol_version = "3"

    def __init__(self, prompts: list[dict], n_images: int, image_size: int, id_prefix: str, evaluator: list,
                 counting_threshold: float = COUNTING_THRESHOLD):
        self.prompts, self.n_images, self.image_size = prompts, n_images, image_size
        self.id_prefix, self.evaluator, self.counting_threshold = id_prefix, evaluator, counting_threshold
        self._models = None

    def _load(self) -> tuple:
        """(detector, colour classifier), loaded on first use: a resumed run may need neither."""
        raise NotImplementedError

    def items(self):
        size = (self.image_size, self.image_size)
        return [{"id": f"{self.id_prefix}{i:05d}", "metadata": m, "prompt": m["prompt"], "n_images": self.n_images,
                 "size": size, "hash_fields": [m, self.n_images, self.image_size]}
                for i, m in enumerate(self.prompts)]

    def scorers(self):
        return self.evaluator

    def predict(self, predictor, batch):
        generated = predictor.generate_images(batch)
        if len(generated) != len(batch):
            raise ValueError(f"{self.name}: predictor returned {len(generated)} image sets for {len(batch)} prompts")
        for it, images in zip(batch, generated):
            if len(images) != it["n_images"]:
                raise ValueError(f"{it['id']}: {len(images)} images generated, the protocol needs {it['n_images']}")
            for k, im in enumerate(images):
                if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
                    raise ValueError(f"{it['id']}: image {k} is not an HxWx3 uint8 array")
        return [{"images": images} for images in generated]

    def score(self, item, prediction):
        if self._models is None:
            self._models = self._load()
        verdicts = judge_images(prediction["images"], item["metadata"], *self._models, self.counting_threshold)
        prediction["verdicts"] = verdicts  # for the sample grid
        tag = item["metadata"]["tag"]
        return {f"{tag}_images": float(len(verdicts)), f"{tag}_correct": float(sum(ok for ok, _ in verdicts))}

    def aggregate(self, scores):
        return summarize(scores)

    def sample_grid(self, items, predictions, path):
        rows = []
        for it, pred in zip(items, predictions):
            row = Image.new("RGB", (TILE * len(pred["images"]), TILE + 14), "white")
            for k, (im, (ok, _)) in enumerate(zip(pred["images"], pred["verdicts"])):
                tile = Image.fromarray(im).resize((TILE - 4, TILE - 4))
                frame = Image.new("RGB", (TILE, TILE), (40, 160, 60) if ok else (200, 40, 40))
                frame.paste(tile, (2, 2))
                row.paste(frame, (k * TILE, 14))
            ImageDraw.Draw(row).text((2, 1), it["prompt"][: 12 * len(pred["images"])], fill="black")
            rows.append(np.asarray(row))
        width = max(r.shape[1] for r in rows)
        Image.fromarray(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                                        for r in rows])).save(path)
        return True


@register("geneval")
class GenEval(_GenEvalBenchmark):
    """GenEval's 553 prompts; a COCO YOLO segmentation detector and CLIP colours from local paths."""

    data_name = "geneval-553"

    def __init__(self, params: Params):
        cfg = params.evals.geneval
        self.detector_path = require_path("evals.geneval.detector_path", cfg.detector_path,
                                          "ultralytics YOLO segmentation checkpoint (COCO classes)")
        self.clip_path = require_path("evals.geneval.clip_path", cfg.clip_path, "open_clip ViT-L-14 checkpoint")
        self.clip_model = cfg.clip_model
        evaluator = [weights_sha256(self.detector_path), weights_sha256(self.clip_path), cfg.clip_model]
        super().__init__(load_metadata(), cfg.images_per_prompt, cfg.image_size, "", evaluator)

    def _load(self):
        return YoloDetector.load_coco(self.detector_path), ColorClassifier.load(self.clip_path, self.clip_model)


@register("world_geneval")
class WorldGenEval(_GenEvalBenchmark):
    """GenEval's rules on prompts in the world's grammar, judged by a detector trained on world renders."""

    data_name = "procedural-world-geneval"
    baseline = "oracle"
    protocol_version = "4"  # GenEval's 3, counting at the threshold fitted to the detector

    def __init__(self, params: Params):
        cfg = params.evals.geneval
        folder = detector_dir(params)
        self.detector_path, metrics = folder / "weights.pt", folder / "metrics.json"
        if not (self.detector_path.is_file() and metrics.is_file()):
            raise FileNotFoundError(f"world_geneval: no trained detector in {folder} (weights.pt, metrics.json): "
                                    f"run `onegen world-detector` (DVC stage world_detector)")
        self.detector_metrics = json.loads(metrics.read_text())
        for key, what in (("negative_fp_rate", "negatives in training"),
                          ("counting_threshold", "the counting threshold fitted to it")):
            if key not in self.detector_metrics:
                raise FileNotFoundError(f"world_geneval: {metrics} predates {what}; run "
                                        f"`onegen world-detector` again (DVC stage world_detector)")
        if mismatch := settings_mismatch(self.detector_metrics, cfg.world, params.world.resolution):
            raise ValueError(f"world_geneval: the detector in {folder} was trained otherwise than the params ask: "
                             f"{mismatch}; run `onegen world-detector` again (DVC stage world_detector)")
        counting = float(self.detector_metrics["counting_threshold"])
        super().__init__(make_prompts(cfg.world.prompts, cfg.world.seed), cfg.images_per_prompt,
                         params.world.resolution, "world_geneval_", [weights_sha256(self.detector_path), counting],
                         counting_threshold=counting)

    def _load(self):
        cal = self.detector_metrics["score_calibration"]
        return (YoloDetector.load(self.detector_path, "world_geneval detector", calibration=(cal["a"], cal["b"])),
                WorldColorClassifier(world.COLORS))

    def aggregate(self, scores):
        # The judge's own quality beside the scores: its mAP on renders, and how often it sees a shape in noise.
        return {**summarize(scores), "detector_map50": float(self.detector_metrics["map50_box"]),
                "detector_noise_fp": float(self.detector_metrics["negative_fp_rate"])}
