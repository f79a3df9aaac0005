"""Camera-pose estimation (OneDiffusion §3.3: denoise ray views given images, rays -> cameras).

Beyond the paper's tables: RayDiffusion-style relative-rotation accuracy at 15° and
camera-centre accuracy after similarity alignment, on procedural-world rigs and GSO views.
"""

from __future__ import annotations

import numpy as np

from evals.benchmark import Benchmark
from evals.pose import metrics
from evals.registry import register
from onegen.config import Params
from onegen.seeding import item_seed
from onegen.sources import procedural as world

GSO_POSE_VIEWS = tuple(range(0, 25, 3))  # 9 views spread over each object's 25


class _PoseBenchmark(Benchmark):
    baseline = "random-cameras"

    def predict(self, predictor, batch):
        return predictor.predict_cameras(batch)

    def score(self, item, prediction):
        R_pred, c_pred = (np.asarray(x, np.float64) for x in prediction)
        w2c = np.stack(item["world_to_camera"])
        R_gt = w2c[:, :3, :3]
        c_gt = -np.einsum("nji,nj->ni", R_gt, w2c[:, :3, 3])
        errors = metrics.relative_rotation_errors(R_pred, R_gt)
        return {"rot_acc_15": float(metrics.rotation_accuracy(errors, 15.0)),
                "centre_acc_10": float(metrics.camera_centre_accuracy(c_pred, c_gt, 0.1))}

    def aggregate(self, scores):
        return {k: 100 * float(np.mean([s[k] for s in scores])) for k in scores[0]}


@register("world_pose")
class WorldPose(_PoseBenchmark):
    """Held-out procedural scenes seen by jittered orbit rigs."""

    data_name = "procedural-world-rigs"

    def __init__(self, params: Params):
        self.cfg = params.evals.world

    def items(self):
        out = []
        for i in range(self.cfg.items):
            s = item_seed(self.cfg.seed, "eval/world_pose", i)
            scene = world.sample_scene(s, 2, 6)
            cams = world.orbit_cameras(self.cfg.pose_views, self.cfg.resolution, self.cfg.resolution, seed=s,
                                       start_azimuth_deg=float(np.random.default_rng(s).uniform(0, 360)))
            out.append({"id": f"world_pose_{i:05d}", "images": [world.render(scene, c).rgb for c in cams],
                        "world_to_camera": [c.world_to_camera for c in cams], "K": cams[0].K,
                        "hash_fields": [s, world.RENDERER_VERSION, self.cfg.resolution, self.cfg.pose_views]})
        return out


@register("pose_gso")
class GSOPose(_PoseBenchmark):
    data_name = "gso30-pose"

    def __init__(self, params: Params):
        from evals.nvs import gso

        if params.evals.gso.path is None:
            raise FileNotFoundError("evals.gso.path is not set: point it at the GSO render folder (30 objects)")
        self.objects = gso.load_gso(params.evals.gso.path)

    def items(self):
        return [{"id": o.name, "images": [o.images[v] for v in GSO_POSE_VIEWS],
                 "world_to_camera": [o.world_to_camera[v] for v in GSO_POSE_VIEWS], "K": o.K,
                 "hash_fields": o.name} for o in self.objects]
