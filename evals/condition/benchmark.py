"""Conditional generation benchmarks (UniCon Table 1): FID and condition fidelity.

Each item is a real image, its caption, and one condition annotated from it. The predictor
answers ``generate_from_condition(items)``: an image of ``item["size"]`` for
``item["prompt"]`` following ``item["condition"]`` (an HxWx3 uint8 picture of kind
``item["condition_kind"]``). The generated image is annotated with the same annotator and
compared with the real image's annotation (:mod:`evals.condition.conditions`); FID compares the
generated set with the real set (:mod:`evals.condition.fid`).

``unicon_conditions`` -- real captioned images (:mod:`evals.condition.datasets`), one condition
per run (``evals.condition.condition``: depth, softedge or pose as UniCon; canny as well), FID
required (``evals.condition.inception_path``).

``world_conditions`` -- held-out procedural scenes. ``evals.world.conditions`` picks the
annotator-free ones (exact, offline; both by default): canny, and ``depth_edges`` (the generator
gets the scene's exact depth, and its image's Canny edges are compared with the true image's).
Depth runs when ``annotators.depth.path`` is set: the generator gets the exact depth, and as in
UniCon both images are re-annotated by Depth-Anything. FID runs when
``evals.condition.inception_path`` is set. The setting names the conditions that ran
(e.g. ``canny+depth_edges+depth``) and stderr says what was skipped and which key enables it.

An item's ``condition_kind`` is what the generator is given (depth for ``depth_edges``); its
``scorer`` is the condition that scores it. FID compares every generated image with the real
ones, each real image entering once per condition it was given under.
"""

from __future__ import annotations

import sys

import numpy as np

from evals.benchmark import Benchmark, save_tile_grid
from evals.condition import conditions as cond
from evals.condition import fid as fid_lib
from evals.predictors import PredictionError
from evals.registry import register
from onegen.config import Params
from onegen.pixels import tensor_to_pixels
from onegen.seeding import item_seed
from onegen.shards.reader import depth_to_condition
from onegen.sources import procedural as world

WORLD_CONDITIONS_VERSION = "1"


def _image(pred, item: dict) -> np.ndarray:
    ok = isinstance(pred, np.ndarray) and pred.dtype == np.uint8 and pred.ndim == 3 and pred.shape[2] == 3
    if not ok or pred.shape[:2] != tuple(item["size"]):
        got = f"{pred.dtype} {list(pred.shape)}" if isinstance(pred, np.ndarray) else type(pred).__name__
        raise PredictionError(f"{item['id']}: generated image must be {item['size'][0]}x{item['size'][1]}x3 uint8, got {got}")
    return pred


class _ConditionBenchmark(Benchmark):
    needs = "generate_from_condition"
    # 2: UniCon's PCK (over matched keypoints) and soft-edge conditions at ControlNet's safe levels;
    # 3: soft-edge EMSE on HED's own maps (the three-level reading beside it); world_conditions' canny and
    # depth_edges scores are unchanged by it but are scored again
    protocol_version = "3"
    conditions: dict[str, cond.Condition]
    fid: fid_lib.InceptionFeatures | None = None

    def predict(self, predictor, batch):
        return [_image(p, it) for it, p in zip(batch, predictor.generate_from_condition(batch), strict=True)]

    def _item(self, item_id: str, kind: str, image: np.ndarray, prompt: str, reference, picture: np.ndarray,
              hash_fields: list) -> dict:
        c = self.conditions[kind]
        given = getattr(c, "gives", kind)
        return {"id": item_id, "condition_kind": given, "scorer": kind, "condition": picture, "prompt": prompt,
                "image": image, "size": image.shape[:2], "reference_annotation": reference,
                "hash_fields": [*hash_fields, kind, c.record]}  # the item's own scorer: its condition's

    def scorers(self):
        return [self.fid.record if self.fid is not None else None]

    def score(self, item, prediction):
        c = self.conditions[item["scorer"]]
        out = c.compare(c([prediction])[0], item["reference_annotation"])
        if self.fid is not None:
            real, fake = self.fid([item["image"], prediction])
            out |= {"fid_real": fid_lib.encode_features(real), "fid_fake": fid_lib.encode_features(fake)}
        return out

    def aggregate(self, scores):
        metrics: dict[str, float] = {}
        for kind, c in self.conditions.items():
            mine = [s for s in scores if cond.SCORE_KEYS[kind] in s]
            if mine:
                metrics |= c.aggregate(mine)
        if self.fid is not None:
            if len(scores) < 2:
                print(f"{self.name}: FID needs at least 2 items, got {len(scores)}: not reported", file=sys.stderr)
            else:
                metrics["fid"] = fid_lib.frechet_distance(
                    np.stack([fid_lib.decode_features(s["fid_real"]) for s in scores]),
                    np.stack([fid_lib.decode_features(s["fid_fake"]) for s in scores]))
        return metrics

    def sample_grid(self, items, predictions, path):
        save_tile_grid([[it["condition"], p, it["image"]] for it, p in zip(items, predictions)], path)
        return True


@register("unicon_conditions")
class UniConConditions(_ConditionBenchmark):
    """Real captioned images; one condition per run, as UniCon Table 1's three column groups."""

    baseline = "copy-reference"
    data_name = "captioned-images"

    def __init__(self, params: Params):
        from evals.condition.datasets import CaptionedImages

        cfg = params.evals.condition
        if cfg.path is None:
            raise FileNotFoundError("evals.condition.path is not set: point it at a folder of real images with "
                                    "metadata.jsonl (file_name, text), see evals/condition/datasets.py")
        self.source = CaptionedImages(cfg.path, cfg.resolution)
        self.setting = cfg.condition
        self.fid = fid_lib.InceptionFeatures.load(cfg.inception_path, params.annotators.device)
        self.conditions = {cfg.condition: cond.load(cfg.condition, params)}

    def items(self):
        c = self.conditions[self.setting]
        for it in self.source:
            reference = c([it["image"]])[0]
            yield self._item(it["id"], self.setting, it["image"], it["prompt"], reference, c.picture(reference),
                             it["hash_fields"])


@register("world_conditions")
class WorldConditions(_ConditionBenchmark):
    """Held-out procedural scenes: Canny and depth by Canny as configured; depth and FID when their
    weights are configured."""

    baseline = "random-scene"
    data_name = "procedural-world-conditions"

    def __init__(self, params: Params):
        self.cfg = params.evals.world
        self.conditions = {kind: cond.load(kind, params) for kind in self.cfg.conditions}
        skipped = []
        if params.annotators.depth.path is not None:
            self.conditions["depth"] = cond.load("depth", params)
        else:
            skipped.append("depth AbsRel (set annotators.depth.path)")
        if params.evals.condition.inception_path is not None:
            self.fid = fid_lib.InceptionFeatures.load(params.evals.condition.inception_path, params.annotators.device)
        else:
            skipped.append("FID (set evals.condition.inception_path)")
        self.setting = "+".join(self.conditions)
        if skipped:
            print(f"world_conditions: measuring {self.setting}; skipped: {'; '.join(skipped)}", file=sys.stderr)

    def items(self):
        for i in range(self.cfg.items):
            s = item_seed(self.cfg.seed, "eval/world_conditions", i)
            scene = world.sample_scene(s, 2, 6)
            cam = world.random_camera(s, self.cfg.resolution, self.cfg.resolution)
            r = world.render(scene, cam)
            caption = world.caption(scene, cam, render=r)
            fields = [s, world.RENDERER_VERSION, self.cfg.resolution, WORLD_CONDITIONS_VERSION]
            for kind, c in self.conditions.items():
                reference = c([r.rgb])[0]
                # The world knows depth exactly: the generator gets it, drawn as the depth family draws it.
                picture = _depth_picture(r.depth) if getattr(c, "gives", kind) == "depth" else c.picture(reference)
                yield self._item(f"world_conditions_{kind}_{i:05d}", kind, r.rgb, caption, reference, picture, fields)


def _depth_picture(depth_m: np.ndarray) -> np.ndarray:
    return tensor_to_pixels(depth_to_condition(depth_m))  # near = white
