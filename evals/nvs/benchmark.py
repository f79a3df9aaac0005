"""Novel-view synthesis (OneDiffusion Table 2): GSO objects and procedural-world orbits.

Protocol (SPEC): condition on 1/2/3 views, predict the targets, compare on a white background
at full resolution with PSNR (uint8, as ``cv2.PSNR``), SSIM (scikit-image's, as EscherNet) and LPIPS (AlexNet,
weights from a local file); average per object, then over objects.
"""

from __future__ import annotations

import numpy as np

from evals.benchmark import Benchmark, save_tile_grid
from evals.nvs import metrics
from evals.registry import register
from evals.world_rigs import world_rig
from onegen.config import Params


class _NVSBenchmark(Benchmark):
    baseline = "copy-nearest-view"
    protocol_version = "2"  # 2: SSIM as EscherNet's (scikit-image, 7x7 uniform window on uint8)
    needs = "predict_views"

    def __init__(self, params: Params):
        path = params.evals.lpips_weights
        # LPIPS needs pretrained weights, which are never downloaded: without them it is not reported
        self.lpips = metrics.LPIPSAlex(path) if path is not None else None

    def scorers(self):
        return [self.lpips.record if self.lpips is not None else None]

    def predict(self, predictor, batch):
        return predictor.predict_views(batch)

    def score(self, item, prediction):
        per_view = []
        for t in item["target_views"]:
            pred, gt = prediction[t], item["images"][t]
            if pred.shape != gt.shape:
                raise ValueError(f"{item['id']}: view {t}: prediction {pred.shape}, target {gt.shape}")
            s = {"psnr": metrics.psnr_uint8(pred, gt), "ssim": metrics.ssim(pred, gt)}
            if self.lpips is not None:
                s["lpips"] = self.lpips(pred, gt)
            per_view.append(s)
        return {k: float(np.mean([s[k] for s in per_view])) for k in per_view[0]}

    def aggregate(self, scores):
        return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}

    def sample_grid(self, items, predictions, path):
        rows = []
        for it, pred in zip(items, predictions):
            t = it["target_views"][:3]
            rows.append([it["images"][it["condition_views"][0]], *(it["images"][v] for v in t), *(pred[v] for v in t)])
        save_tile_grid(rows, path, side=96)
        return True


@register("world_nvs")
class WorldNVS(_NVSBenchmark):
    """Held-out procedural scenes on an orbit: condition on view 0, predict the others."""

    data_name = "procedural-world-orbits"
    setting = "1-view"

    def __init__(self, params: Params):
        super().__init__(params)
        self.cfg = params.evals.world

    def items(self):
        return [world_rig(self.cfg, "world_nvs", i, self.cfg.nvs_views)
                | {"condition_views": [0], "target_views": list(range(1, self.cfg.nvs_views))}
                for i in range(self.cfg.items)]


@register("nvs_gso")
class GSO(_NVSBenchmark):
    """GSO-30 (25 views each, 256², white background); targets are views 10-24."""

    data_name = "gso30"

    def __init__(self, params: Params):
        super().__init__(params)
        from evals.nvs import gso

        cfg = params.evals.gso
        if cfg.path is None:
            raise FileNotFoundError("evals.gso.path is not set: point it at the GSO render folder (30 objects)")
        self.gso = gso
        self.objects = gso.load_gso(cfg.path)
        n = cfg.condition_views
        self.condition = gso.CONDITION_VIEWS[n]
        self.known_poses = cfg.known_poses or n == 1
        self.setting = "1-view" if n == 1 else f"{n}-view ({'known' if self.known_poses else 'unknown'} poses)"

    def items(self):
        return [{"id": o.name, "images": list(o.images), "world_to_camera": list(o.world_to_camera), "K": o.K,
                 "condition_views": list(self.condition), "target_views": list(self.gso.TARGET_VIEWS),
                 "poses_known": self.known_poses,  # the setting is part of what a cached score was scored on
                 "hash_fields": [o.name, self.condition, self.known_poses]} for o in self.objects]
