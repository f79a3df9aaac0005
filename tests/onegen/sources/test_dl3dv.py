from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.config import SourceConfig
from onegen.format import decode_sample, encode_sample
from onegen.plucker import rays_for_cameras
from onegen.sources import SourceError, open_source
from onegen.sources.dl3dv import DL3DVSource
from tests.onegen.sources.reader_checks import assert_record_info_matches, red_blob, red_centroid

POINT = np.array([0.3, -0.2, 0.25])  # the 3D point every frame shows as a red blob




def nerfstudio_c2w(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Camera-to-world with OpenGL axes (columns: right, up, backward) looking at ``target``, z up."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = eye
    return c2w


def gl_pixel(c2w, fx, fy, cx, cy, dist=(0.0, 0.0, 0.0, 0.0)):
    """Where POINT lands in a nerfstudio/COLMAP image (y up in camera -> rows grow downwards)."""
    x, y, z = c2w[:3, :3].T @ (POINT - c2w[:3, 3])
    xn, yn = x / -z, -y / -z  # normalised image coordinates, y down
    k1, k2, p1, p2 = dist
    r2 = xn**2 + yn**2
    radial = 1 + k1 * r2 + k2 * r2**2
    xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn**2)
    yd = yn * radial + p1 * (r2 + 2 * yn**2) + 2 * p2 * xn * yn
    return fx * xd + cx, fy * yd + cy


def make_scene(folder: Path, n: int, size=(64, 48), declared=None, per_frame=False, dist=(0.0, 0.0, 0.0, 0.0),
               subdir="images", model="OPENCV", off=0.0):
    """A nerfstudio scene of ``n`` frames on an orbit; intrinsics for ``declared`` (w, h), files at ``size``.

    Cameras aim ``off`` right of and below POINT (off-centre, where lens distortion shows).
    """
    w, h = size
    dw, dh = declared or size
    fx, fy, cx, cy = 0.9 * dw, 0.85 * dw, 0.52 * dw, 0.47 * dh
    sx, sy = w / dw, h / dh
    frames = []
    for i in range(n):
        a = 2 * np.pi * i / n
        eye = [3 * np.cos(a), 3 * np.sin(a), 1.0 + 0.1 * i]
        aim = nerfstudio_c2w(eye, POINT)
        c2w = nerfstudio_c2w(eye, POINT - off * aim[:3, 0] + off * aim[:3, 1] if off else np.zeros(3))
        u, v = gl_pixel(c2w, fx, fy, cx, cy, dist)
        (folder / subdir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(red_blob(h, w, u * sx, v * sy)).save(folder / subdir / f"frame_{i + 1:05d}.png")
        frame = {"file_path": f"images/frame_{i + 1:05d}.png", "transform_matrix": c2w.tolist(), "colmap_im_id": i}
        if per_frame:
            frame |= {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": dw, "h": dh}
        frames.append(frame)
    meta = {"camera_model": model, "k1": dist[0], "k2": dist[1], "p1": dist[2], "p2": dist[3], "frames": frames[::-1],
            "applied_transform": np.eye(4)[:3].tolist()}
    if not per_frame:
        meta |= {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": dw, "h": dh}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "dl3dv"
    # 960P layout: intrinsics for 4x the stored size, images under images_4/ while the json says images/
    make_scene(root / "1K" / "aaa", 6, size=(48, 32), declared=(192, 128), subdir="images_4")
    make_scene(root / "1K" / "bbb", 10, per_frame=True, subdir="images_4")
    make_scene(root / "1K" / "ccc", 5, dist=(-0.3, 0.05, 0.002, -0.001), subdir="images_4", off=0.9)
    (root / ".cache" / "x").mkdir(parents=True)
    (root / ".cache" / "x" / "transforms.json").write_text("{}")
    (tmp_path / "captions.csv").write_text("1K_bbb,a kitchen table\nother,unused\n")
    return root


def open_it(root: Path, **kw) -> DL3DVSource:
    return DL3DVSource(root, **{"views": (4, 5), "resolution": 32, "image_subdir": "images_4", **kw})


def test_counts_ids_shapes_and_provenance(root: Path):
    src = open_it(root, captions=root.parent / "captions.csv", seed=3)
    assert len(src) == 3 and src.ids == ["1K_aaa", "1K_bbb", "1K_ccc"]
    for j, (source_id, frames) in enumerate(zip(src.ids, (6, 10, 5))):
        rec = src[j]
        assert rec.key == f"dl3dv/{source_id}" and rec.meta["kind"] == "scene"
        assert rec.meta["frame_count"] == frames and 4 <= len(rec.views) <= 5
        assert rec.meta["frames"] == sorted(rec.meta["frames"])  # time order
        for v in rec.views:
            assert v.modality == "image" and v.data.shape == (32, 32, 3) and v.data.dtype == np.uint8
            assert v.camera.height == v.camera.width == 32
        prov = rec.provenance
        assert (prov.source, prov.source_id) == ("dl3dv", source_id) and prov.seed >= 0
        assert prov.annotators == [{"name": "onegen.sources.dl3dv", "version": "2", "weights_sha256": None}]
        decode_sample(encode_sample(rec))  # a valid One-Gen sample
    assert src[1].captions == {"original": "a kitchen table"} and src[1].caption == "a kitchen table"
    assert src[0].captions == {} and src[-1].key == "dl3dv/1K_ccc"


def test_cameras_project_the_point_onto_its_blob(root: Path):
    src = open_it(root)
    for rec in src:
        for v in rec.views:
            cam = v.camera
            x = cam.K @ (cam.world_to_camera[:3, :3] @ POINT + cam.world_to_camera[:3, 3])
            assert x[2] > 0  # in front of the camera: OpenCV axes look down +z
            # ccc's frames are distorted: the blob sits where the undistorted pinhole camera puts the point
            np.testing.assert_allclose(red_centroid(v.data), x[:2] / x[2], atol=0.15, err_msg=f"{rec.key} {v.meta}")
        rays = rays_for_cameras([v.camera for v in rec.views])
        assert rays.shape == (len(rec.views), 16, 4, 4) and np.all(np.isfinite(rays))


def test_record_info_matches_the_record(root: Path):
    assert_record_info_matches(open_it(root, seed=6))


def test_view_choice_is_deterministic_and_seeded(root: Path):
    a, b = open_it(root, seed=11), open_it(root, seed=11)
    for j in range(len(a)):
        assert a[j].meta["frames"] == b[j].meta["frames"]
        assert encode_sample(a[j]) == encode_sample(b[j])
    other = open_it(root, seed=12)
    assert [other[j].meta["frames"] for j in range(3)] != [a[j].meta["frames"] for j in range(3)]


def test_open_source_dispatches(root: Path):
    cfg = SourceConfig(kind="dl3dv", path=root, views=(4, 4), resolution=16, image_subdir="images_4")
    src = open_source(cfg, seed=5)
    assert isinstance(src, DL3DVSource) and len(src[0].views) == 4 and src[0].views[0].data.shape == (16, 16, 3)


def edit_json(scene: Path, fn) -> None:
    meta = json.loads((scene / "transforms.json").read_text())
    fn(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("breakage, message", [
    (lambda s: (s / "images_4" / "frame_00001.png").unlink(), r"frame_00001.png: image file is missing"),
    (lambda s: (s / "images_4" / "frame_00001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"),
     r"frame_00001.png: cannot decode image"),
    (lambda s: (s / "transforms.json").write_text('{"frames": [}'), r"transforms.json: malformed transforms.json"),
    (lambda s: (s / "transforms.json").write_text('{"frames": []}'), r"non-empty 'frames' list"),
    (lambda s: edit_json(s, lambda m: m["frames"][2].pop("file_path")), r"frames\[2\] has no 'file_path' string"),
    (lambda s: edit_json(s, lambda m: m.pop("fl_x")), r"frame images/frame_\d+.png: no focal length 'fl_x'"),
    (lambda s: edit_json(s, lambda m: m.update(camera_model="OPENCV_FISHEYE")), r"'OPENCV_FISHEYE' is not supported"),
    (lambda s: edit_json(s, lambda m: [f.update(transform_matrix=[[1, 0, 0]]) for f in m["frames"]]),
     r"frame images/frame_\d+.png: pose must be a finite 4x4"),
    (lambda s: edit_json(s, lambda m: m.update(frames=m["frames"][:3])), r"has 3 frame\(s\), fewer than the 5"),
])
def test_bad_input_names_the_file(root: Path, breakage, message):
    breakage(root / "1K" / "ccc")
    src = open_it(root, views=(5, 5))  # all 5 frames of ccc, so the broken first frame is read
    with pytest.raises(SourceError, match=message) as e:
        src[2]
    assert "ccc" in str(e.value)
    assert len(src[0].views) == 5  # the other scenes still read
