from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from onegen.config import SourceConfig
from onegen.format import decode_sample, encode_sample
from onegen.plucker import rays_for_cameras
from onegen.sources import SourceError, open_source
from onegen.sources.hypersim import HypersimSource, planar_depth
from tests.onegen.sources.reader_checks import assert_record_info_matches, red_blob, red_centroid

W, H = 64, 48  # the 48x48 centre crop starts at x = 8; at resolution 48 nothing is rescaled
MPAU = 0.5  # metres per asset unit
POINT = np.array([0.4, -0.3, 0.0])  # on the floor (z = 0), shown as a red blob, in asset units
STANDARD = np.diag([np.tan(np.pi / 6), np.tan(np.pi / 6) * H / W, -1.0])
TILTED = np.array([[0.6501238075331314, 0.0, 0.0], [0.0, 0.43483397310392735, 0.0],  # ai_038_002's lens
                   [0.0, -0.22060419015836272, -1.1260474290333964]])


def pixel_grid():
    """Hypersim's (u, v) of every pixel centre: u in [-1, 1] rightwards, v in [-1, 1] upwards."""
    v, u = np.mgrid[0:H, 0:W] + 0.5
    return np.stack([2 * u / W - 1, 1 - 2 * v / H, np.ones_like(u)], axis=-1)


def camera(eye, target):
    """Camera-to-world rotation (columns: right, up, backward), Hypersim's convention, z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(right, forward), -forward], axis=1)


def render(R_wc, C, M):
    """Tonemapped image with POINT as a red blob, and distance_from_camera in metres to the floor."""
    x = np.linalg.solve(M, R_wc.T @ (POINT - C))  # M [u, v, 1] ~ ray in camera space
    u, v = x[:2] / x[2]
    rgb = red_blob(H, W, (u + 1) * W / 2, (1 - v) * H / 2)
    rays = pixel_grid() @ M.T @ R_wc.T  # world-space rays (asset units per unit step)
    t = -C[2] / rays[..., 2]  # hit the floor z = 0
    return rgb, (t * np.linalg.norm(rays, axis=-1) * MPAU).astype(np.float16)


def write_h5(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=data)


def make_trajectory(scene: Path, cam: str, frames: list[int], M) -> None:
    n = max(frames) + 1
    eyes = np.array([[3 * np.cos(a), 3 * np.sin(a), 3.5] for a in np.linspace(0, 2, n)])
    Rs = np.stack([camera(e, np.array([0.2, 0.1, 0.0])) for e in eyes])
    write_h5(scene / "_detail" / cam / "camera_keyframe_positions.hdf5", eyes)
    write_h5(scene / "_detail" / cam / "camera_keyframe_orientations.hdf5", Rs)
    preview = scene / "images" / f"scene_{cam}_final_preview"
    preview.mkdir(parents=True)
    for k in frames:
        rgb, distance = render(Rs[k], eyes[k], M)
        Image.fromarray(rgb).save(preview / f"frame.{k:04d}.tonemap.jpg", quality=95)
        Image.fromarray(rgb).save(preview / f"frame.{k:04d}.gamma.jpg")  # other previews are ignored
        if k == frames[0]:
            distance[0:5, 8:13] = np.nan  # e.g. a window: no depth
        write_h5(scene / "images" / f"scene_{cam}_geometry_hdf5" / f"frame.{k:04d}.depth_meters.hdf5", distance)


def write_scene_csv(scene: Path) -> None:
    (scene / "_detail").mkdir(parents=True, exist_ok=True)
    (scene / "_detail" / "metadata_scene.csv").write_text(
        f"parameter_name,parameter_value\nmeters_per_asset_unit,{MPAU}\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "hypersim"
    write_scene_csv(root / "ai_001_001")
    make_trajectory(root / "ai_001_001", "cam_00", [0, 1, 2, 3, 5, 6, 7, 8, 9, 10], STANDARD)  # frame 4 excluded
    make_trajectory(root / "ai_001_001", "cam_01", [0, 1, 2], STANDARD)
    write_scene_csv(root / "ai_038_002")
    make_trajectory(root / "ai_038_002", "cam_00", [0, 1, 2, 3], TILTED)
    names = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    with open(tmp_path / "metadata_camera_parameters.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scene_name", "settings_output_img_height", *names])
        writer.writerow(["ai_001_001", 768.0, *STANDARD.ravel()])
        writer.writerow(["ai_038_002", 768.0, *TILTED.ravel()])
    (root / "README.txt").write_text("not a scene")
    return root


def open_it(root: Path, **kw) -> HypersimSource:
    return HypersimSource(root, **{"views": (4, 5), "resolution": 48,
                                   "camera_parameters": root.parent / "metadata_camera_parameters.csv", **kw})


def test_records_use_every_frame_once(root: Path):
    src = open_it(root)
    assert src.ids == ["ai_001_001_cam_00_part0", "ai_001_001_cam_00_part1", "ai_001_001_cam_01_part0",
                       "ai_038_002_cam_00_part0"]
    recs = list(src)
    assert [r.meta["frames"] for r in recs] == [[0, 2, 5, 7, 9], [1, 3, 6, 8, 10], [0, 1, 2], [0, 1, 2, 3]]
    for rec in recs:
        assert rec.key == f"hypersim/{rec.provenance.source_id}" and rec.meta["kind"] == "scene"
        assert rec.captions == {} and rec.meta["meters_per_asset_unit"] == MPAU
        assert [v.modality for v in rec.views] == ["image", "depth"] * len(rec.meta["frames"])
        for img, depth in zip(rec.views[::2], rec.views[1::2]):
            assert img.data.shape == (48, 48, 3) and img.data.dtype == np.uint8
            assert depth.data.shape == (48, 48) and depth.data.dtype == np.uint16
            assert depth.meta == {"depth_scale": 0.001, "units": "m", "kind": "z-depth", "invalid": 0}
            assert depth.camera == img.camera
        assert rec.provenance.annotators[0]["name"] == "onegen.sources.hypersim"
        decode_sample(encode_sample(rec))
    assert encode_sample(open_it(root)[1]) == encode_sample(recs[1])  # deterministic


def test_cameras_project_the_point_onto_its_blob(root: Path):
    for rec in open_it(root):
        for v in rec.views[::2]:
            cam = v.camera
            x = cam.K @ (cam.world_to_camera[:3, :3] @ (POINT * MPAU) + cam.world_to_camera[:3, 3])  # metres
            assert x[2] > 0
            np.testing.assert_allclose(red_centroid(v.data), x[:2] / x[2], atol=0.2, err_msg=f"{rec.key} frame {v.meta}")
        assert np.all(np.isfinite(rays_for_cameras([v.camera for v in rec.views[::2]])))


def test_depth_is_planar_and_lands_on_the_floor(root: Path):
    for rec in open_it(root):
        for k, depth in enumerate(rec.views[1::2]):
            cam, z = depth.camera, depth.data.astype(np.float64) * 0.001
            valid = depth.data > 0
            if k == 0 and rec.meta["part"] == 0:
                assert not valid[0:5, 0:5].any() and valid[5:, 5:].all()  # NaN distance -> invalid 0
            v, u = np.mgrid[0:48, 0:48] + 0.5
            cam_pts = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(cam.K).T * z[..., None]
            R, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
            world = (cam_pts - t) @ R  # R^T (X_cam - t), row-wise
            np.testing.assert_allclose(world[valid][:, 2], 0.0, atol=4e-3, err_msg=rec.key)  # the floor, metres


def test_record_info_matches_the_record(root: Path):
    assert_record_info_matches(open_it(root, seed=6))


def test_planar_depth_hand_checked():
    K = np.array([[2.0, 0.0, 1.5], [0.0, 2.0, 1.5], [0.0, 0.0, 1.0]])
    distance = np.full((3, 3), 5.0)
    distance[2, 2] = np.nan
    z = planar_depth(distance, K)
    assert z[1, 1] == 5.0  # the principal ray: distance is depth
    np.testing.assert_allclose(z[0, 0], 5 / np.sqrt(0.5**2 + 0.5**2 + 1))  # ray (-0.5, -0.5, 1)
    assert z[2, 2] == 0.0


def test_without_camera_parameters_uses_the_60_degree_camera(root: Path):
    cam = HypersimSource(root, views=(4, 5), resolution=48)[2].views[0].camera
    f = W / 2 / np.tan(np.pi / 6)
    np.testing.assert_allclose(cam.K, [[f, 0, W / 2 - 8], [0, f, H / 2], [0, 0, 1]], atol=1e-9)


def test_open_source_dispatches(root: Path):
    cfg = SourceConfig(kind="hypersim", path=root, views=(2, 12), resolution=16,
                       camera_parameters=root.parent / "metadata_camera_parameters.csv")
    src = open_source(cfg)
    assert isinstance(src, HypersimSource) and len(src) == 3 and src[0].views[1].data.shape == (16, 16)


@pytest.mark.parametrize("breakage, message", [
    (lambda s: (s / "images" / "scene_cam_00_geometry_hdf5" / "frame.0002.depth_meters.hdf5").unlink(),
     r"frame.0002.depth_meters.hdf5: file is missing"),
    (lambda s: (s / "images" / "scene_cam_00_geometry_hdf5" / "frame.0002.depth_meters.hdf5").write_bytes(b"junk"),
     r"frame.0002.depth_meters.hdf5: unreadable hdf5"),
    (lambda s: write_h5(s / "images" / "scene_cam_00_geometry_hdf5" / "frame.0002.depth_meters.hdf5",
                        np.zeros((10, 10), np.float16)), r"ai_038_002 cam_00 frame 0002: depth is \(10, 10\)"),
    (lambda s: write_h5(s / "_detail" / "cam_00" / "camera_keyframe_positions.hdf5", np.zeros((2, 3))),
     r"no keyframe 2 for ai_038_002 cam_00 frame 0002"),
    (lambda s: write_h5(s / "_detail" / "cam_00" / "camera_keyframe_orientations.hdf5", np.zeros((4, 3))),
     r"camera_keyframe_orientations.hdf5: expected float \(N, 3, 3\)"),
    (lambda s: (s / "_detail" / "metadata_scene.csv").write_text("parameter_name,parameter_value\n"),
     r"metadata_scene.csv: no numeric meters_per_asset_unit"),
    (lambda s: (s / "images" / "scene_cam_00_final_preview" / "frame.0002.tonemap.jpg").write_bytes(b"\xff\xd8junk"),
     r"frame.0002.tonemap.jpg: cannot decode image"),
])
def test_bad_input_names_the_file(root: Path, breakage, message):
    breakage(root / "ai_038_002")
    src = open_it(root)
    with pytest.raises(SourceError, match=message):
        src[3]
    assert len(src[2].views) == 6


def test_bad_camera_parameters(root: Path):
    params = root.parent / "metadata_camera_parameters.csv"
    params.write_text(params.read_text().replace("ai_038_002", "ai_999_999"))
    with pytest.raises(SourceError, match=r"metadata_camera_parameters.csv: no camera parameters for scene ai_038"):
        open_it(root)[3]
    params.write_text("scene_name,M_cam_from_uv_00\nai_001_001,1.0\n")
    with pytest.raises(SourceError, match=r"malformed camera parameters csv"):
        open_it(root)
