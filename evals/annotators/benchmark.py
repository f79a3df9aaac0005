"""``onegen eval annotators``: what the configured annotators are worth, before a data team spends
GPU-weeks running them (issue 3, beyond the paper).

Held-out procedural scenes have exact ground truth, so each annotator that params configures is
scored against it, exactly as the shard build runs it (same classes, same ``load``):

* depth (Depth-Anything-V2): the stored 16-bit relative disparity, read back, aligned to the
  metric depth in disparity space (least squares, the depth benchmarks' protocol), AbsRel and δ1;
* segmenter (open-vocabulary boxes + SAM): asked for the world's four shape names, box AP50 (mean
  over classes) and the mean best mask IoU of the ground-truth instances;
* captioner (VLM): share of valid answers, and the recall of the visible shapes' nouns in its
  entity list and in its caption (an invalid answer recalls nothing: it never enters a shard).

The world is simple on purpose (coloured primitives on a ground plane), so these figures rank
annotators and catch a broken one; they do not predict quality on photographs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np

from evals.annotators import metrics
from evals.benchmark import Benchmark, save_tile_grid
from evals.depth.benchmark import WORLD_RANGE
from evals.depth.metrics import evaluate_depth
from evals.registry import register
from onegen.annotators.base import resolve_device
from onegen.config import Params
from onegen.families import MODEL_ANNOTATORS
from onegen.seeding import item_seed
from onegen.sources import procedural as world

SCORED = ("depth", "segmenter", "captioner")
PERCENT = ("depth_abs_rel", "depth_delta1", "caption_valid", "entity_recall", "caption_recall")


class AnnotatorSuite:
    """The predictor of this benchmark: every scored annotator that params configures."""

    def __init__(self, models: dict[str, object], off: dict[str, str], settings: dict | None = None):
        unknown = set(models) - set(SCORED)
        if unknown:
            raise ValueError(f"annotators: no quality metric for {sorted(unknown)}; scored: {', '.join(SCORED)}")
        self.models, self.off = models, off  # off: name -> the params keys that would switch it on
        # Their params blocks and the device: a threshold or another dtype changes answers as weights do.
        self.settings = settings or {}

    @classmethod
    def from_params(cls, params: Params) -> AnnotatorSuite:
        wanted = [MODEL_ANNOTATORS[n] for n in SCORED]
        on = [a for a in wanted if a.configured(params.annotators)]
        if not on:
            raise FileNotFoundError("annotators: none is configured; set " + ", ".join(a.keys for a in wanted))
        return cls({a.name: a.load(params.annotators) for a in on}, {a.name: a.keys for a in wanted if a not in on},
                   {"device": str(resolve_device(params.annotators.device)),
                    **{a.name: getattr(params.annotators, a.block).model_dump(mode="json") for a in on}})

    def records(self) -> list[dict]:
        out = []
        for m in self.models.values():
            out += m.records if hasattr(m, "records") else [m.record]
        return out

    def describe(self) -> dict:
        records = self.records()
        return {"name": "annotators: " + ", ".join(self.models), "kind": "annotators",
                "hash": hashlib.sha256(json.dumps([records, self.settings], sort_keys=True).encode()).hexdigest()[:16],
                "annotators": records, "not_configured": self.off}

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        out: list[dict] = [{} for _ in images]
        if "depth" in self.models:
            from onegen.annotators.depth import stored_disparity

            for o, view in zip(out, self.models["depth"](images)):
                o["disparity"] = stored_disparity(view)
        if "segmenter" in self.models:
            for o, seg in zip(out, self.models["segmenter"](images, [list(world.SHAPES)] * len(images))):
                o["segmentation"] = seg
        if "captioner" in self.models:
            for o, cap in zip(out, self.models["captioner"](images)):
                o["caption"] = cap
        return out


@register("annotators")
class AnnotatorQuality(Benchmark):
    """Configured annotators against the exact ground truth of held-out procedural scenes."""

    data_name = "procedural-world-annotators"
    fixed_predictor = "annotators"  # scores params' annotators, whatever model --predictor names

    def __init__(self, params: Params):
        self.cfg = params.evals.world

    def items(self):
        for i in range(self.cfg.items):
            s = item_seed(self.cfg.seed, "eval/annotators", i)
            scene = world.sample_scene(s, 2, 6)
            r = world.render(scene, world.random_camera(s, self.cfg.resolution, self.cfg.resolution))
            shape = {o.instance_id: o.shape for o in scene.objects}
            visible = sorted(r.boxes)
            yield {"id": f"annotators_{i:05d}", "rgb": r.rgb, "depth": r.depth, "instance": r.instance,
                   "boxes": np.array([r.boxes[k] for k in visible], np.float64).reshape(-1, 4),
                   "labels": [shape[k] for k in visible], "nouns": sorted({shape[k] for k in visible}),
                   "hash_fields": [s, world.RENDERER_VERSION, self.cfg.resolution]}

    def predict(self, predictor, batch):
        return predictor([it["rgb"] for it in batch])

    def score(self, item, prediction):
        out: dict = {}
        if "disparity" in prediction:
            m = evaluate_depth(prediction["disparity"], item["depth"], item["depth"] > 0, *WORLD_RANGE,
                               space="disparity")
            out |= {"depth_abs_rel": m["abs_rel"], "depth_delta1": m["delta1"]}
        if "segmentation" in prediction:
            seg = prediction["segmentation"]
            ious = metrics.best_mask_iou(seg.masks, item["instance"])
            out |= {"mask_iou_sum": float(np.sum(ious)), "mask_instances": float(len(ious))}
            # AP pools every image's matches (an image without objects contributes false positives),
            # so the item keeps them, cached as JSON beside its floats.
            out["box_matches"] = json.dumps(metrics.match_detections(seg.boxes, seg.labels, seg.scores,
                                                                     item["boxes"], item["labels"]))
            out["box_ground_truth"] = json.dumps(Counter(item["labels"]))
        if "caption" in prediction and item["nouns"]:
            cap = prediction["caption"]
            out["caption_valid"] = float(cap.ok)
            out["entity_recall"] = metrics.noun_recall(item["nouns"], list(cap.entities)) if cap.ok else 0.0
            out["caption_recall"] = metrics.noun_recall(item["nouns"], cap.caption) if cap.ok else 0.0
        return out

    def aggregate(self, scores):
        out = {k: 100 * float(np.mean(v)) for k in PERCENT if (v := [s[k] for s in scores if k in s])}
        segmented = [s for s in scores if "box_matches" in s]
        instances = sum(s["mask_instances"] for s in segmented)
        if instances:  # pooled over every instance of every image, like the boxes below
            out["mask_iou"] = 100 * sum(s["mask_iou_sum"] for s in segmented) / instances
        counts = sum((Counter(json.loads(s["box_ground_truth"])) for s in segmented), Counter())
        if sum(counts.values()):
            matches = [tuple(m) for s in segmented for m in json.loads(s["box_matches"])]
            out["box_ap50"] = 100 * metrics.mean_ap(matches, dict(counts))
        return out

    def sample_grid(self, items, predictions, path):
        from onegen.annotators.depth import condition_image
        from onegen.annotators.segment import class_map_view

        rows = []
        for it, p in zip(items, predictions):
            row = [it["rgb"]]
            if "disparity" in p:
                row.append(condition_image(p["disparity"]))
            if "segmentation" in p:
                row.append(class_map_view(p["segmentation"], "semantic", np.random.default_rng(0))[0].data)
            rows.append(row)
        save_tile_grid(rows, path)
        return True
