"""Camera-pose estimation (OneDiffusion §3.3: denoise ray views given images, rays -> cameras).

Beyond the paper's tables: RayDiffusion-style relative-rotation accuracy at 15° and
camera-centre accuracy after similarity alignment, on procedural-world rigs and GSO views.
"""

from __future__ import annotations

import numpy as np

from evals.benchmark import Benchmark
from evals.pose import metrics
from evals.registry import register
from evals.world_rigs import world_rig
from onegen.camera import camera_centres
from onegen.config import Params

GSO_POSE_VIEWS = tuple(range(0, 25, 3))  # 9 views spread over each object's 25


class _PoseBenchmark(Benchmark):
    baseline = "random-cameras"
    needs = "predict_cameras"

    def predict(self, predictor, batch):
        return predictor.predict_cameras(batch)

    def score(self, item, prediction):
        R_pred, c_pred = (np.asarray(x, np.float64) for x in prediction)
        w2c = np.stack(item["world_to_camera"])
        R_gt = w2c[:, :3, :3]
        c_gt = camera_centres(w2c)
        errors = metrics.relative_rotation_errors(R_pred, R_gt)
        return {"rot_acc_15": float(metrics.rotation_accuracy(errors, 15.0)),
                "centre_acc_10": float(metrics.camera_centre_accuracy(c_pred, c_gt, 0.1, item.get("scene_scale")))}

    def aggregate(self, scores):
        return {k: 100 * float(np.mean([s[k] for s in scores])) for k in scores[0]}


@register("world_pose")
class WorldPose(_PoseBenchmark):
    """Held-out procedural scenes seen by jittered orbit rigs."""

    data_name = "procedural-world-rigs"

    def __init__(self, params: Params):
        self.cfg = params.evals.world

    def items(self):
        return [world_rig(self.cfg, "world_pose", i, self.cfg.pose_views) for i in range(self.cfg.items)]


@register("pose_gso")
class GSOPose(_PoseBenchmark):
    """Nine of each object's 25 views; the centre errors are relative to the scale of all 25 cameras, as
    RayDiffusion's evaluation takes it over the whole sequence (``full_scene_scale``), not the views evaluated."""

    data_name = "gso30-pose"
    protocol_version = "2"  # 2: scene scale over all of the object's cameras

    def __init__(self, params: Params):
        from evals.nvs import gso

        if params.evals.gso.path is None:
            raise FileNotFoundError("evals.gso.path is not set: point it at the GSO render folder (30 objects)")
        self.objects = gso.load_gso(params.evals.gso.path)

    def items(self):
        return [{"id": o.name, "images": [o.images[v] for v in GSO_POSE_VIEWS],
                 "world_to_camera": [o.world_to_camera[v] for v in GSO_POSE_VIEWS], "K": o.K,
                 "scene_scale": metrics.gt_scene_scale(camera_centres(np.stack(o.world_to_camera))),
                 "hash_fields": o.name} for o in self.objects]
