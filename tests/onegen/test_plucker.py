from __future__ import annotations

import numpy as np
import pytest

from onegen.camera import Camera, intrinsics_from_fov, look_at
from onegen.plucker import (
    RAY_CHANNELS,
    RAY_SCALE,
    cameras_from_rays,
    decode_rays,
    normalize_cameras,
    plucker_rays,
    rays_for_cameras,
    FIRST_CAMERA_FRAME,
    relative_to_first,
)

H, W = 96, 128


def orbit_rig(n: int = 4, radius: float = 3.0, elevation_deg: float = 25.0, res: int = 128) -> list[Camera]:
    """Cameras on a circle around the world z axis, all looking at a point above the origin."""
    K = intrinsics_from_fov(50, res, res)
    e = np.deg2rad(elevation_deg)
    eyes = [radius * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
            for a in 2 * np.pi * np.arange(n) / n]
    return [Camera(K, look_at(eye, [0.0, 0.0, 0.3]), res, res) for eye in eyes]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def random_camera(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, world_to_camera, centre) with a random pose and random (slightly off-centre) intrinsics."""
    R, c = random_rotation(rng), rng.normal(size=3) * 3
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ c
    K = np.array([[rng.uniform(60, 200), 0, W / 2 + rng.normal() * 3],
                  [0, rng.uniform(60, 200), H / 2 + rng.normal() * 3],
                  [0, 0, 1]])
    return K, w2c, c


def angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R1.T @ R2) - 1) / 2, -1, 1))))


def test_shape_dtype_and_channel_tiling():
    K, w2c, _ = random_camera(np.random.default_rng(0))
    rays = plucker_rays(K, w2c, H, W)
    assert rays.shape == (RAY_CHANNELS, H // 8, W // 8) and rays.dtype == np.float32
    np.testing.assert_array_equal(rays[6:12], rays[:6])
    np.testing.assert_array_equal(rays[12:16], rays[:4])
    assert plucker_rays(K, w2c, H, W, downsample=4).shape == (16, H // 4, W // 4)


def test_unit_directions_and_plucker_constraint():
    K, w2c, _ = random_camera(np.random.default_rng(1))
    r = plucker_rays(K, w2c, H, W) / RAY_SCALE
    d, m = r[:3], r[3:6]
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose((d * m).sum(axis=0), 0.0, atol=1e-5)  # m . d = 0


def test_rays_pass_through_half_pixel_centres():
    K, w2c, c = random_camera(np.random.default_rng(2))
    d, _ = decode_rays(plucker_rays(K, w2c, H, W))
    # the ray of latent cell (i=2, j=5) projects back onto full-res pixel ((5 + .5) * 8, (2 + .5) * 8)
    x = K @ (w2c[:3, :3] @ (c + d[2 * (W // 8) + 5]) + w2c[:3, 3])
    np.testing.assert_allclose(x[:2] / x[2], [44.0, 20.0], atol=1e-6)


def test_scale_gives_roughly_unit_variance_on_an_orbit_rig():
    # measured: std 1.145 normalised (any radius), 1.67 unnormalised at radius 3 (grows with the rig's scale)
    normalised = rays_for_cameras(orbit_rig(), normalize=True)
    assert 0.5 < normalised.std() < 1.5
    assert 0.5 < rays_for_cameras(orbit_rig(radius=1.7)).std() < 1.5  # 1.09


def test_rays_for_cameras_shape_and_first_camera_at_origin():
    rays = rays_for_cameras(orbit_rig(n=6))
    assert rays.shape == (6, 16, 16, 16) and rays.dtype == np.float32
    np.testing.assert_allclose(rays[0, 3:6], 0.0, atol=1e-6)  # camera 0 at the origin: zero moments
    K = orbit_rig()[0].K
    np.testing.assert_allclose(rays[0], plucker_rays(K, FIRST_CAMERA_FRAME, 128, 128), atol=1e-6)
    # as the released code's rays (PyTorch3D: x left, y up): the top-left cell looks left, up and forward
    assert (rays[0, :3, 0, 0] > 0).all() and (rays[0, :2, -1, -1] < 0).all()


def test_single_camera_rig_with_normalize_is_its_identity_map():
    cam = orbit_rig(n=1)[0]
    np.testing.assert_array_equal(rays_for_cameras([cam], normalize=True), rays_for_cameras([cam]))


def test_rays_for_cameras_rejects_mixed_sizes():
    a, b = orbit_rig(n=2)
    with pytest.raises(ValueError, match="image size"):
        rays_for_cameras([a, Camera(b.K, b.world_to_camera, 64, 128)])


def test_relative_to_first_puts_camera_0_at_its_pytorch3d_frame_and_keeps_relative_poses():
    w2c = np.stack([c.world_to_camera for c in orbit_rig(n=5)])
    rel = relative_to_first(w2c)
    np.testing.assert_allclose(rel[0], FIRST_CAMERA_FRAME, atol=1e-12)
    for i, j in [(1, 2), (3, 0), (4, 1)]:
        np.testing.assert_allclose(rel[i] @ np.linalg.inv(rel[j]), w2c[i] @ np.linalg.inv(w2c[j]), atol=1e-12)


def test_normalize_cameras_meets_at_origin_with_first_camera_at_1_7():
    rng = np.random.default_rng(3)
    target = rng.normal(size=3)
    w2c = np.stack([look_at(target + rng.normal(size=3) * 4 + [0, 0, 6], target) for _ in range(5)])
    out = normalize_cameras(w2c)
    centres = np.stack([-T[:3, :3].T @ T[:3, 3] for T in out])
    axes = out[:, 2, :3]
    # every optical axis passes through the origin: its distance to the origin is |c x a|
    np.testing.assert_allclose(np.linalg.norm(np.cross(centres, axes), axis=1), 0.0, atol=1e-9)
    assert np.linalg.norm(centres[0]) == pytest.approx(1.7)
    # a similarity transform: relative rotations unchanged, relative translations scaled uniformly
    np.testing.assert_allclose(out[:, :3, :3], w2c[:, :3, :3], atol=1e-12)
    # normalise, then relative_to_first (the training order): in camera 0's frame the meeting
    # point (the world origin, at coordinates out[0] @ [0, 0, 0, 1]) lies 1.7 straight ahead
    np.testing.assert_allclose(out[0, :3, 3], [0, 0, 1.7], atol=1e-9)


def test_normalize_cameras_rejects_parallel_axes():
    w2c = np.stack([look_at([x, 0, 0], [x, 5, 0]) for x in (0.0, 1.0, 2.0)])
    with pytest.raises(ValueError, match="parallel"):
        normalize_cameras(w2c)


@pytest.mark.parametrize("known_K", [True, False])
def test_round_trip_recovers_rotation_and_centre(known_K):
    rng = np.random.default_rng(4)
    for _ in range(10):
        K, w2c, c = random_camera(rng)
        got = cameras_from_rays(plucker_rays(K, w2c, H, W), K if known_K else None, H, W)
        np.testing.assert_allclose(got.rotation, w2c[:3, :3], atol=1e-4)
        np.testing.assert_allclose(got.centre, c, atol=1e-4)
        np.testing.assert_allclose(got.world_to_camera, w2c, atol=1e-4)
        np.testing.assert_allclose(got.K, K, rtol=1e-4, atol=1e-4)
        assert np.linalg.det(got.rotation) == pytest.approx(1.0)


@pytest.mark.parametrize("known_K", [True, False])
def test_noisy_rays_recover_rotation_within_a_degree(known_K):
    rng = np.random.default_rng(5)
    for _ in range(10):
        K, w2c, c = random_camera(rng)
        rays = plucker_rays(K, w2c, H, W)
        R, centre, _ = cameras_from_rays(rays + rng.normal(scale=0.01, size=rays.shape), K if known_K else None, H, W)
        assert angle_deg(R, w2c[:3, :3]) < 1.0  # measured: <= 0.07 deg with K, <= 0.35 deg without
        np.testing.assert_allclose(centre, c, atol=5e-2)


@pytest.mark.parametrize("known_K", [True, False])
def test_float16_storage_round_trip(known_K):
    rng = np.random.default_rng(6)
    for _ in range(10):
        K, w2c, c = random_camera(rng)
        rays = plucker_rays(K, w2c, H, W).astype(np.float16)
        got = cameras_from_rays(rays, K if known_K else None, H, W)
        np.testing.assert_allclose(got.rotation, w2c[:3, :3], atol=1e-2)
        np.testing.assert_allclose(got.centre, c, atol=1e-2)


def test_rig_round_trip_in_first_camera_frame():
    cams = orbit_rig(n=4)
    rays = rays_for_cameras(cams).astype(np.float16)
    rel = relative_to_first(np.stack([c.world_to_camera for c in cams]))
    for r, T, cam in zip(rays, rel, cams):
        got = cameras_from_rays(r, cam.K, cam.height, cam.width)
        np.testing.assert_allclose(got.world_to_camera, T, atol=1e-2)


def test_cameras_from_rays_rejects_mismatched_size():
    K, w2c, _ = random_camera(np.random.default_rng(7))
    with pytest.raises(ValueError, match="rays"):
        cameras_from_rays(plucker_rays(K, w2c, H, W), K, H * 2, W)
