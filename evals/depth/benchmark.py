"""Monocular depth benchmarks (OneDiffusion Table 4): NYUv2, DIODE, and the procedural world.

Protocol (SPEC): valid pixels by range (and the dataset's mask, and NYUv2's Eigen crop),
least-squares scale and shift in depth space (or disparity space), prediction clipped to the
range, AbsRel and δ1 per image, averaged over images, reported in percent like the paper.
"""

from __future__ import annotations

import numpy as np

from evals.benchmark import Benchmark, save_tile_grid
from evals.depth import metrics
from evals.registry import register
from onegen.config import Params
from onegen.seeding import item_seed
from onegen.sources import procedural as world

WORLD_RANGE = (0.1, 60.0)  # metres: the procedural ground ends at 30 m, cameras stand ~10 m out


class _DepthBenchmark(Benchmark):
    baseline = "constant-depth"
    needs = "predict_depth"
    depth_range: tuple[float, float] = metrics.NYU_RANGE
    space = "depth"  # a predictor's own ``depth_space`` replaces it (the model predicts disparity)

    def predict(self, predictor, batch):
        self.space = getattr(predictor, "depth_space", type(self).space)
        return predictor.predict_depth(batch)

    def valid(self, item: dict) -> np.ndarray:
        return metrics.valid_mask(item["depth"], *self.depth_range, item.get("mask"))

    def score(self, item, prediction):
        m = metrics.evaluate_depth(prediction, item["depth"], self.valid(item), *self.depth_range, space=self.space)
        return {k: float(v) for k, v in m.items()}

    def aggregate(self, scores):
        return {"abs_rel": 100 * float(np.mean([s["abs_rel"] for s in scores])),
                "delta1": 100 * float(np.mean([s["delta1"] for s in scores]))}

    def sample_grid(self, items, predictions, path):
        as_depth = (lambda p: p) if self.space == "depth" else (lambda p: -p)  # negated disparity: drawn alike
        save_tile_grid([[it["rgb"], _depth_image(it["depth"], it["depth"] > 0),
                         _depth_image(as_depth(pred), np.ones_like(pred, bool))] for it, pred in zip(items, predictions)],
                       path)
        return True


def _depth_image(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    d = np.where(valid, depth, np.nan).astype(np.float32)
    lo, hi = np.nanpercentile(d, [2, 98]) if np.isfinite(d).any() else (0.0, 1.0)
    x = np.nan_to_num((d - lo) / max(hi - lo, 1e-6), nan=1.0)
    return (np.clip(1 - x, 0, 1)[..., None].repeat(3, 2) * 255).astype(np.uint8)


@register("world_depth")
class WorldDepth(_DepthBenchmark):
    """Held-out procedural scenes with exact metric depth (an offline sanity edition)."""

    depth_range = WORLD_RANGE
    data_name = "procedural-world-depth"

    def __init__(self, params: Params):
        self.cfg = params.evals.world

    def items(self):
        out = []
        for i in range(self.cfg.items):
            s = item_seed(self.cfg.seed, "eval/world_depth", i)
            scene = world.sample_scene(s, 2, 6)
            r = world.render(scene, world.random_camera(s, self.cfg.resolution, self.cfg.resolution))
            out.append({"id": f"world_depth_{i:05d}", "rgb": r.rgb, "depth": r.depth, "mask": r.depth > 0,
                        "hash_fields": [s, world.RENDERER_VERSION, self.cfg.resolution]})
        return out


@register("depth_nyuv2")
class NYUv2(_DepthBenchmark):
    """NYUv2 Eigen test split (654 images), raw depth, 1e-3..10 m, Eigen crop."""

    depth_range = metrics.NYU_RANGE
    data_name = "nyuv2-test-654"
    setting = "all"

    def __init__(self, params: Params):
        from evals.depth import datasets

        cfg = params.evals.nyuv2
        if cfg.path is None:
            raise FileNotFoundError("evals.nyuv2.path is not set: point it at nyu_depth_v2_labeled.mat "
                                    "(layout: mat) or Marigold's nyu_labeled_extracted (layout: marigold)")
        self.source = datasets.NYUv2Mat(cfg.path) if cfg.layout == "mat" else datasets.NYUv2Marigold(cfg.path)

    def items(self):
        return (dict(it, hash_fields=it["id"]) for it in self.source)

    def valid(self, item):
        h, w = item["depth"].shape
        return super().valid(item) & metrics.eigen_crop_mask(h, w)


@register("depth_diode")
class DIODE(_DepthBenchmark):
    """DIODE validation (771 images: 325 indoor + 446 outdoor), 0.6..350 m, dataset masks."""

    depth_range = metrics.DIODE_RANGE
    data_name = "diode-val-771"

    def __init__(self, params: Params):
        from evals.depth import datasets

        cfg = params.evals.diode
        if cfg.path is None:
            raise FileNotFoundError("evals.diode.path is not set: point it at the DIODE root holding val/")
        self.setting = cfg.subset
        self.source = datasets.DIODE(cfg.path, subset=cfg.subset)

    def items(self):
        return (dict(it, hash_fields=it["id"]) for it in self.source)
