"""Resizing a decoded sample for a training stage at another side than its shards'."""

from pathlib import Path

import numpy as np
import pytest

from onegen.camera import Camera
from onegen.format import Provenance, Sample, View
from onegen.plucker import rays_for_cameras
from onegen.shards.resize import resize_sample


def camera(yaw: float, h: int, w: int, f: float = 90.0) -> Camera:
    c, s = np.cos(yaw), np.sin(yaw)
    w2c = np.eye(4)
    w2c[:3, :3] = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    w2c[:3, 3] = [0.1, -0.2, 4.0]
    return Camera(K=np.array([[f, 0, w / 2 + 3], [0, f * 1.1, h / 2 - 2], [0, 0, 1]]), world_to_camera=w2c,
                  height=h, width=w)


def sample(views: list[View]) -> Sample:
    return Sample(key="world/000001", task="[[multiview]]", caption="a scene", views=views,
                  provenance=Provenance("world", "000001", 0))


def test_cameras_follow_the_crop_and_rays_are_recomputed_at_the_new_grid():
    rng = np.random.default_rng(0)
    cams = [camera(y, 96, 128) for y in (0.0, 0.4, -0.7)]  # landscape: the centre square is cropped first
    rays = rays_for_cameras(cams, normalize=True).astype(np.float16)
    views = [View("image", rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), camera=c) for c in cams]
    views += [View("rays", r, role="camera", camera=c, meta={"normalized": True}) for r, c in zip(rays, cams)]
    out = resize_sample(sample(views), 48)
    assert [v.data.shape for v in out.views] == [(48, 48, 3)] * 3 + [(16, 6, 6)] * 3
    # a world point projects to the same place, in the new pixels, as it did in the crop of the old ones
    point = np.array([0.3, -0.1, 0.5, 1.0])
    for old, new in zip(cams, (v.camera for v in out.views[:3])):
        uv_old = old.K @ (old.world_to_camera @ point)[:3]
        uv_new = new.K @ (new.world_to_camera @ point)[:3]
        np.testing.assert_allclose(uv_new[:2] / uv_new[2], (uv_old[:2] / uv_old[2] - [16, 0]) * 48 / 96)
    # the rays are those of the cameras a 96² crop at x 16 resized to 48² has, computed afresh (same normalisation,
    # same dtype), and those cameras are the image views'
    crop = [Camera(K=np.diag([0.5, 0.5, 1.0]) @ np.array([[1, 0, -16], [0, 1, 0], [0, 0, 1.0]]) @ c.K,
                   world_to_camera=c.world_to_camera, height=48, width=48) for c in cams]
    want = rays_for_cameras(crop, normalize=True)
    for v, c in zip(out.views[3:], out.views[:3]):
        np.testing.assert_allclose(v.camera.K, c.camera.K)
    got = np.stack([v.data for v in out.views[3:]])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3)


def test_label_maps_keep_their_values_and_pictures_are_filtered():
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30]], np.uint8), size=(64, 64))
    depth = rng.integers(1, 5000, (64, 64)).astype(np.uint16)
    depth[:8] = 0  # invalid pixels stay invalid, never averaged with their neighbours
    picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = resize_sample(sample([View("image", picture), View("semantic", labels, role="condition"),
                                View("depth", depth, role="condition", meta={"depth_scale": 0.001})]), 32)
    img, sem, dep = (v.data for v in out.views)
    assert {tuple(c) for c in sem.reshape(-1, 3)} <= {tuple(c) for c in labels.reshape(-1, 3)}
    assert set(np.unique(dep)) <= set(np.unique(depth)) and (dep[:4] == 0).all() and (dep[4:] > 0).all()
    assert out.views[2].meta == {"depth_scale": 0.001} and out.meta["resized_from"] == [[64, 64]]
    # noise filtered down: far smoother than one pixel in four picked out of it
    picked = picture[1::2, 1::2].astype(np.float32)
    assert img.astype(np.float32).std() < 0.8 * picked.std()
    assert abs(float(img.mean()) - float(picture.mean())) < 3


def test_what_cannot_be_resized_names_the_sample_and_view():
    latent = View("latent", np.zeros((16, 4, 4), np.float16), meta={"of": "image"})
    with pytest.raises(ValueError, match=r"world/000001: view 0 \(latent\): VAE latents cannot be resized"):
        resize_sample(sample([latent]), 16)
    rays = View("rays", np.zeros((16, 4, 4), np.float16), role="camera")
    with pytest.raises(ValueError, match="world/000001: a ray view without its camera"):
        resize_sample(sample([rays]), 16)
    with pytest.raises(ValueError, match=r"view 0 \(hed\): no resampling rule for a float32"):
        resize_sample(sample([View("hed", np.zeros((32, 32), np.float32))]), 16)


def test_a_view_smaller_than_the_side_is_never_upscaled():
    small = sample([View("image", np.zeros((32, 48, 3), np.uint8))])
    with pytest.raises(ValueError, match=r"world/000001: view 0 \(image\): 48x32 px, smaller than the stage's side 48"):
        resize_sample(small, 48)
    assert resize_sample(small, 32).views[0].data.shape == (32, 32, 3)  # the crop itself: no resampling needed


def test_a_pose_skeleton_is_redrawn_from_its_keypoints_moved_with_the_crop():
    from onegen.annotators.pose import OPENPOSE_COLORS, PoseResult, render_skeleton
    from onegen.families import pose_view

    rng = np.random.default_rng(3)
    h, w = 64, 96  # landscape: columns 16..80 are kept, then halved
    kp = np.concatenate([rng.uniform([20, 4], [76, 60], (2, 17, 2)), np.full((2, 17, 1), 0.9)], -1).astype(np.float32)
    boxes = np.array([[18, 2, 78, 62, 0.8], [30, 10, 50, 40, 0.7]], np.float32)
    stored = pose_view(PoseResult(kp, boxes, render_skeleton(kp, h, w, 0.5), threshold=0.5))
    image = View("image", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = resize_sample(sample([image, stored]), 32).views[1]

    moved = kp.copy()
    moved[..., 0] = (kp[..., 0] - 16) / 2
    moved[..., 1] = kp[..., 1] / 2
    np.testing.assert_allclose(np.array(out.meta["keypoints"]), moved, atol=0.01)
    np.testing.assert_allclose(np.array(out.meta["boxes"]), [[1, 1, 31, 31, 0.8], [7, 5, 17, 20, 0.7]], atol=0.01)
    assert out.meta["threshold"] == 0.5 and out.data.shape == (32, 32, 3)
    np.testing.assert_array_equal(out.data, render_skeleton(np.array(out.meta["keypoints"], np.float32), 32, 32, 0.5))
    # drawn, not resampled: every lit pixel is a joint's colour or a limb's at 60%, nothing blended in between
    palette = {tuple(c) for c in OPENPOSE_COLORS} | {tuple(round(v * 0.6) for v in c) for c in OPENPOSE_COLORS}
    lit = out.data[out.data.any(-1)]
    assert len(lit) and {tuple(int(v) for v in p) for p in lit} <= palette


def test_canny_edges_are_found_again_on_the_resized_picture_with_their_thresholds():
    import cv2

    from onegen.annotators.edges import Canny

    yy, xx = np.mgrid[:96, :96]
    picture = np.zeros((96, 96, 3), np.uint8)
    picture[(xx - 48) ** 2 + (yy - 40) ** 2 < 30**2] = (250, 200, 40)  # a disc: one closed edge
    picture[60:90, 10:40] = (30, 60, 220)
    edges = Canny()([picture], seeds=[7])[0]
    out = resize_sample(sample([View("image", picture), edges]), 48)
    low, high = edges.meta["low"], edges.meta["high"]
    redrawn = cv2.Canny(out.views[0].data, low, high)
    np.testing.assert_array_equal(out.views[1].data, redrawn)
    assert out.views[1].meta == edges.meta and set(np.unique(out.views[1].data)) == {0, 255}
    # against picking every other pixel of the stored map, whose one-pixel lines fall apart
    picked = edges.data[::2, ::2]
    assert (out.views[1].data > 0).sum() > 1.3 * (picked > 0).sum()


def test_sides_by_view_count_pick_each_sample_its_own():
    """The paper's ID finetune: 512² for 2-3 views, 256² for 4-5 (here 32 and 16); ray maps are not pictures,
    and more pictures than the rule names keep the stage's side (or the stored one)."""
    from onegen.config import TrainStage
    from onegen.shards.resize import resize_by_rule, resized_dir, rule_record, side_by_views

    stage = TrainStage(name="ft", families=["id", "multiview"], steps=1, batch_size=1,
                       family_resolution={"id": {"5": 16, 3: 32}, "multiview": {2: 16}})
    rule = stage.side_of("id")
    assert [side_by_views(rule, n) for n in (1, 3, 4, 5, 6)] == [32, 32, 16, 16, None]
    assert rule_record(rule) == "32to3v_16to5v" and resized_dir(Path("id"), rule) == Path("id/side32to3v_16to5v")
    assert str(rule) == "32px up to 3 views, 16px up to 5 views, else as stored"
    rng = np.random.default_rng(0)

    def pictures(n: int) -> Sample:
        return sample([View("image", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)])

    assert [resize_by_rule(pictures(n), rule).views[0].data.shape[0] for n in (2, 3, 4, 5, 6)] == [32, 32, 16, 16, 64]
    # two pictures with their two ray maps count as two views, not four
    cams = [camera(y, 64, 64) for y in (0.0, 0.5)]
    rig = [View("image", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), camera=c) for c in cams]
    rig += [View("rays", r, role="camera", camera=c, meta={"normalized": True})
            for r, c in zip(rays_for_cameras(cams, normalize=True), cams)]
    assert [v.data.shape for v in resize_by_rule(sample(rig), stage.side_of("multiview")).views] == \
        [(16, 16, 3)] * 2 + [(16, 2, 2)] * 2
    # a stage's own resolution is what more pictures than the rule names get
    beyond = TrainStage(name="ft", families=["id"], steps=1, batch_size=1, resolution=48,
                        family_resolution={"id": {3: 32}}).side_of("id")
    assert resize_by_rule(pictures(4), beyond).views[0].data.shape[0] == 48 and beyond.label == "32to3v_else48"
