"""GSO pose items: the scene scale of the centre errors is the whole object's, as RayDiffusion's evaluation."""

import numpy as np

from evals.nvs import gso
from evals.pose import metrics
from evals.pose.benchmark import GSO_POSE_VIEWS, GSOPose
from onegen.camera import camera_centres
from onegen.config import load_profile
from tests.evals.nvs.test_gso import _write_plain_object


def test_gso_centre_errors_are_relative_to_all_of_the_objects_cameras(tmp_path):
    _write_plain_object(tmp_path / "gso" / "mug")
    params = load_profile("default")
    params = params.model_copy(update={"evals": params.evals.model_copy(update={
        "gso": params.evals.gso.model_copy(update={"path": tmp_path / "gso"})})})
    item = GSOPose(params).items()[0]
    every = camera_centres(np.stack(gso.load_gso(tmp_path / "gso")[0].world_to_camera))
    assert len(every) == gso.N_VIEWS > len(GSO_POSE_VIEWS) == len(item["world_to_camera"])
    assert item["scene_scale"] == metrics.gt_scene_scale(every) != metrics.gt_scene_scale(every[list(GSO_POSE_VIEWS)])
    w2c = np.stack(item["world_to_camera"])
    moved = camera_centres(w2c) + np.random.default_rng(0).normal(0, 0.05, (len(w2c), 3))  # ~5% of the orbit
    bench = GSOPose(params)
    scores = {s: bench.score(item | {"scene_scale": s}, (w2c[:, :3, :3], moved))["centre_acc_10"] for s in (10.0, 0.01)}
    assert scores == {10.0: 1.0, 0.01: 0.0}  # the item's scale is the one the errors are divided by
