"""GSO loader (both layouts), its errors, and per-object scoring on fixtures the tests write."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.nvs import gso
from onegen.camera import look_at

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def _orbit_pose(view: int, distance: float = 1.8) -> np.ndarray:
    """OpenCV world-to-camera (4x4) of a camera on a z-up orbit looking at the origin."""
    azimuth, elevation = 2 * math.pi * view / gso.N_VIEWS, math.radians(10 + view)
    eye = distance * np.array([math.cos(azimuth) * math.cos(elevation),
                               math.sin(azimuth) * math.cos(elevation), math.sin(elevation)])
    return look_at(eye, [0.0, 0.0, 0.0])


def _rgba(view: int, size: int) -> np.ndarray:
    """A view-specific colour in a fully opaque left half; the right half is transparent."""
    image = np.zeros((size, size, 4), dtype=np.uint8)
    image[:, : size // 2] = [10 * view, 200 - 5 * view, 30, 255]
    return image


def _write_plain_object(folder: Path, size: int = gso.RESOLUTION) -> None:
    (folder / "rgb").mkdir(parents=True)
    (folder / "pose").mkdir()
    for v in range(gso.N_VIEWS):
        Image.fromarray(_rgba(v, size)).save(folder / "rgb" / f"{v:03d}.png")
        np.save(folder / "pose" / f"{v:03d}.npy", _orbit_pose(v)[:3])


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gso_plain")
    for name in ("mug", "alarm_clock"):
        _write_plain_object(root / name)
    return root


def _copy_object(plain_root: Path, tmp_path: Path, name: str = "mug") -> Path:
    root = tmp_path / "gso"
    shutil.copytree(plain_root / name, root / name)
    return root


def test_load_plain_layout(plain_root):
    objects = gso.load_gso(plain_root)
    assert [o.name for o in objects] == ["alarm_clock", "mug"]  # sorted
    obj = objects[1]
    assert obj.images.shape == (25, 256, 256, 3) and obj.images.dtype == np.uint8
    assert obj.world_to_camera.shape == (25, 4, 4)
    for v in (0, 7, 24):
        assert obj.images[v, 5, 5].tolist() == [10 * v, 200 - 5 * v, 30]  # opaque: its colour
        assert obj.images[v, 5, 250].tolist() == [255, 255, 255]  # transparent: white
        np.testing.assert_allclose(obj.world_to_camera[v], _orbit_pose(v), atol=1e-12)
    np.testing.assert_allclose(obj.K, [[280, 0, 128], [0, 280, 128], [0, 0, 1]], atol=1e-9)  # 49.13° FOV


def test_named_objects_load_in_the_given_order(plain_root):
    assert [o.name for o in gso.load_gso(plain_root, ["mug", "alarm_clock"])] == ["mug", "alarm_clock"]
    with pytest.raises(gso.GSODataError, match="teapot"):
        gso.load_gso(plain_root, ["teapot"])


def test_protocol_views():
    assert gso.CONDITION_VIEWS == {1: (0,), 2: (0, 1), 3: (0, 1, 2)}
    assert gso.TARGET_VIEWS == tuple(range(10, 25))
    assert gso.FOV_DEG == pytest.approx(49.1343, abs=1e-4)


def test_eschernet_layout_resizes_and_converts_blender_poses(tmp_path):
    model = tmp_path / "gso" / "elephant" / "render_mvs_25" / "model"
    model.mkdir(parents=True)
    (tmp_path / "gso" / "elephant" / "meshes").mkdir()  # the GSO object's own files sit beside the renders
    for v in range(gso.N_VIEWS):
        Image.fromarray(_rgba(v, 512)).save(model / f"{v:03d}.png")
        np.save(model / f"{v:03d}.npy", (BLENDER_TO_OPENCV @ _orbit_pose(v)[:3]))
    (obj,) = gso.load_gso(tmp_path / "gso")
    assert obj.images.shape == (25, 256, 256, 3)
    assert obj.images[3, 100, 20].tolist() == [30, 185, 30] and obj.images[3, 100, 200].tolist() == [255] * 3
    np.testing.assert_allclose(obj.world_to_camera, np.stack([_orbit_pose(v) for v in range(25)]), atol=1e-12)
    # The OpenCV camera looks at the object: the origin projects to the image centre.
    x = obj.K @ obj.world_to_camera[4][:3, 3]
    np.testing.assert_allclose(x[:2] / x[2], [128, 128], atol=1e-9)


def test_optional_intrinsics_file_is_scaled_to_256(tmp_path):
    root = tmp_path / "gso"
    _write_plain_object(root / "box", size=128)
    np.save(root / "box" / "K.npy", np.array([[100.0, 0, 64], [0, 110, 60], [0, 0, 1]]))
    (obj,) = gso.load_gso(root)
    np.testing.assert_allclose(obj.K, [[200, 0, 128], [0, 220, 120], [0, 0, 1]])


def _one_line_error(root: Path, path: Path) -> str:
    with pytest.raises(gso.GSODataError) as info:
        gso.load_gso(root)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_corrupt_png_names_the_file(plain_root, tmp_path):
    root = _copy_object(plain_root, tmp_path)
    garbage = root / "mug" / "rgb" / "013.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "unreadable image" in _one_line_error(root, garbage)


def test_truncated_png_names_the_file(plain_root, tmp_path):
    root = _copy_object(plain_root, tmp_path)
    truncated = root / "mug" / "rgb" / "020.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert "unreadable image" in _one_line_error(root, truncated)


def test_missing_view_names_the_file(plain_root, tmp_path):
    root = _copy_object(plain_root, tmp_path)
    missing = root / "mug" / "pose" / "024.npy"
    missing.unlink()
    assert "missing" in _one_line_error(root, missing)


@pytest.mark.parametrize("content, reason", [
    (np.eye(3), "3x4 or 4x4"),
    (np.hstack([2 * np.eye(3), np.zeros((3, 1))]), "not a rotation"),
    (np.full((3, 4), np.nan), "non-finite"),
    (None, "unreadable pose"),
])
def test_malformed_pose_names_the_file(plain_root, tmp_path, content, reason):
    root = _copy_object(plain_root, tmp_path)
    pose = root / "mug" / "pose" / "011.npy"
    if content is None:
        pose.write_bytes(b"garbage")
    else:
        np.save(pose, content)
    assert reason in _one_line_error(root, pose)


def test_folder_of_neither_layout_is_refused(plain_root, tmp_path):
    root = _copy_object(plain_root, tmp_path)
    (root / "notes").mkdir()
    assert "not a GSO object folder" in _one_line_error(root, root / "notes")


def _small_object(name: str, seed: int) -> gso.GSOObject:
    images = np.random.default_rng(seed).integers(1, 255, (25, 32, 32, 3), dtype=np.uint8)
    return gso.GSOObject(name, images, np.tile(np.eye(4), (25, 1, 1)), np.eye(3))


def test_score_object_averages_over_target_views_only():
    obj = _small_object("a", 0)
    preds = {v: obj.images[v].copy() for v in range(25)}
    for v in gso.TARGET_VIEWS[:5]:
        preds[v] += 1  # off by one everywhere: 20·log10(255) dB
    preds[0] = np.zeros_like(preds[0])  # a condition view: never scored
    scores = gso.score_object(preds, obj, lpips=lambda p, t: float(np.abs(p.astype(int) - t).mean()))
    assert scores["psnr"] == pytest.approx((5 * 20 * math.log10(255) + 10 * 361.20199909921956) / 15)
    assert scores["lpips"] == pytest.approx(5 / 15)
    assert 0.9 < scores["ssim"] < 1.0
    assert set(gso.score_object(preds, obj)) == {"psnr", "ssim"}  # no LPIPS model, no LPIPS


def test_score_object_refuses_missing_or_misshapen_views():
    obj = _small_object("a", 1)
    preds = {v: obj.images[v] for v in gso.TARGET_VIEWS if v != 17}
    with pytest.raises(ValueError, match=r"a: no prediction for target views \[17\]"):
        gso.score_object(preds, obj)
    preds[17] = obj.images[17][:16]
    with pytest.raises(ValueError, match="a: view 17"):
        gso.score_object(preds, obj)


def test_aggregate_means_over_objects():
    per_object = {"a": {"psnr": 20.0, "ssim": 0.8}, "b": {"psnr": 30.0, "ssim": 0.6}}
    assert gso.aggregate(per_object) == pytest.approx({"psnr": 25.0, "ssim": 0.7})
    with pytest.raises(ValueError, match="b: metrics"):
        gso.aggregate({"a": {"psnr": 1.0}, "b": {"psnr": 1.0, "lpips": 0.1}})
    with pytest.raises(ValueError, match="no objects"):
        gso.aggregate({})
