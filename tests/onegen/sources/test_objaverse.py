from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.config import SourceConfig
from onegen.format import decode_sample, encode_sample
from onegen.plucker import rays_for_cameras
from onegen.sources import SourceError, open_source
from onegen.sources.objaverse import ObjaverseSource
from tests.onegen.sources.reader_checks import assert_record_info_matches, red_centroid

POINT = np.array([0.12, -0.08, 0.1])  # shown as a red dot in every render
FOV = 2 * np.degrees(np.arctan(16 / 35))  # 35 mm lens on a 32 mm sensor, as both render scripts
SIZE = 40


def red_dot_rgba(u, v, sigma=1.2):
    """Transparent render with an opaque-ish red blob at (u, v); composited on white it is red on white."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    alpha = 255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    out = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    out[..., 0] = 255
    out[..., 3] = alpha.round()
    return out



def axes(eye):
    """right, down, forward of a camera at ``eye`` looking at the origin, z up."""
    forward = -np.asarray(eye, dtype=np.float64) / np.linalg.norm(eye)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    return right, np.cross(forward, right), forward


def eye(i, n):
    a = 2 * np.pi * i / n
    return np.array([1.5 * np.cos(a), 1.5 * np.sin(a), 0.4 + 0.05 * i])


F = 0.5 * SIZE / np.tan(np.radians(FOV) / 2)


def make_lgm(folder: Path, n: int):
    """LGM layout: rgb/NNN.png + pose/NNN.txt, camera-to-world with OpenCV axes in Blender's world."""
    (folder / "rgb").mkdir(parents=True)
    (folder / "pose").mkdir()
    for i in range(n):
        right, down, forward = axes(eye(i, n))
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, down, forward], axis=1)
        c2w[:3, 3] = eye(i, n)
        x, y, z = c2w[:3, :3].T @ (POINT - eye(i, n))
        Image.fromarray(red_dot_rgba(SIZE / 2 + F * x / z, SIZE / 2 + F * y / z)).save(folder / "rgb" / f"{i:03d}.png")
        (folder / "pose" / f"{i:03d}.txt").write_text(" ".join(f"{v:.9f}" for v in c2w.ravel()))


def make_zero123(folder: Path, n: int):
    """Zero123 layout: NNN.png + NNN.npy, world-to-camera [R|t] of Blender's camera (OpenGL axes)."""
    folder.mkdir(parents=True)
    for i in range(n):
        right, down, forward = axes(eye(i, n))
        R = np.stack([right, -down, -forward])  # rows: Blender camera x (right), y (up), z (backward)
        RT = np.concatenate([R, (-R @ eye(i, n))[:, None]], axis=1)
        x, y, z = RT @ np.append(POINT, 1.0)
        Image.fromarray(red_dot_rgba(SIZE / 2 + F * x / -z, SIZE / 2 - F * y / -z)).save(folder / f"{i:03d}.png")
        np.save(folder / f"{i:03d}.npy", RT.astype(np.float32))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "renders"
    make_lgm(root / "a1b2", 8)
    make_zero123(root / "c3d4", 6)
    make_lgm(root / "e5f6", 5)
    (root / ".trash").mkdir()
    (tmp_path / "Cap3D_automated_Objaverse.csv").write_text(
        'a1b2,"A wooden chair, with ""curved"" legs."\nc3d4,A red lamp.\nzzzz,not here\n', encoding="utf-8")
    return root


def open_it(root: Path, **kw) -> ObjaverseSource:
    return ObjaverseSource(root, **{"views": (4, 5), "resolution": 32, "fov_deg": FOV, **kw})


def test_counts_ids_captions_and_shapes(root: Path):
    src = open_it(root, captions=root.parent / "Cap3D_automated_Objaverse.csv", seed=1)
    assert len(src) == 3 and src.ids == ["a1b2", "c3d4", "e5f6"]
    recs = list(src)
    assert [r.meta["layout"] for r in recs] == ["lgm", "zero123", "lgm"]
    assert recs[0].captions == {"original": 'A wooden chair, with "curved" legs.'}
    assert recs[1].caption == "A red lamp." and recs[2].captions == {}
    for rec, n in zip(recs, (8, 6, 5)):
        assert rec.key == f"objaverse/{rec.provenance.source_id}" and rec.meta["kind"] == "scene"
        assert rec.meta["frame_count"] == n and 4 <= len(rec.views) <= 5
        assert rec.provenance.annotators[0]["name"] == "onegen.sources.objaverse"
        for v in rec.views:
            assert v.data.shape == (32, 32, 3) and v.data.dtype == np.uint8
            assert v.data[0, 0].tolist() == [255, 255, 255]  # transparent background composited on white
        decode_sample(encode_sample(rec))


def test_cameras_project_the_point_onto_its_dot(root: Path):
    for rec in open_it(root):
        for v in rec.views:
            cam = v.camera
            x = cam.K @ (cam.world_to_camera[:3, :3] @ POINT + cam.world_to_camera[:3, 3])
            assert x[2] > 0
            np.testing.assert_allclose(red_centroid(v.data), x[:2] / x[2], atol=0.15, err_msg=rec.key)
        assert np.all(np.isfinite(rays_for_cameras([v.camera for v in rec.views], normalize=True)))


def test_record_info_matches_the_record(root: Path):
    assert_record_info_matches(open_it(root, seed=6))


def test_view_choice_is_deterministic_and_seeded(root: Path):
    a, b, c = open_it(root, seed=4), open_it(root, seed=4), open_it(root, seed=5)
    assert [encode_sample(r) for r in a] == [encode_sample(r) for r in b]
    assert [r.meta["frames"] for r in a] != [r.meta["frames"] for r in c]


def test_open_source_dispatches(root: Path):
    cfg = SourceConfig(kind="objaverse", path=root, views=(4, 4), resolution=16, render_fov_deg=FOV)
    src = open_source(cfg)
    assert isinstance(src, ObjaverseSource) and [len(r.views) for r in src] == [4, 4, 4]


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "pose" / "000.txt").unlink(), r"000.txt: camera pose file is missing"),
    (lambda f: (f / "pose" / "000.txt").write_text("1 0 0"), r"000.txt: camera pose must hold 16 numbers"),
    (lambda f: (f / "pose" / "000.txt").write_text("1 0 0 0 " * 3 + "0 0 zero 1"), r"000.txt: malformed camera pose"),
    (lambda f: (f / "pose" / "000.txt").write_text(" ".join(["2"] * 16)), r"000.txt: pose is not a rigid transform"),
    (lambda f: (f / "rgb" / "000.png").write_bytes(b"not a png"), r"000.png: cannot decode image"),
    (lambda f: [p.unlink() for p in (f / "rgb").glob("*.png")], r"e5f6: no rendered views"),
])
def test_bad_lgm_input_names_the_file(root: Path, breakage, message):
    breakage(root / "e5f6")
    src = open_it(root, views=(5, 5))
    with pytest.raises(SourceError, match=message):
        src[2]
    assert len(src[0].views) == 5


@pytest.mark.parametrize("breakage, message", [
    (lambda f: np.save(f / "000.npy", np.eye(4)), r"000.npy: camera pose must be a 3x4"),
    (lambda f: (f / "000.npy").write_bytes(b"garbage"), r"000.npy: malformed camera pose"),
    (lambda f: (f / "000.npy").unlink(), r"000.npy: camera pose file is missing"),
    (lambda f: [(f / f"{i:03d}.png").unlink() for i in range(3)], r"c3d4: has 3 frame\(s\), fewer than the 5"),
])
def test_bad_zero123_input_names_the_file(root: Path, breakage, message):
    breakage(root / "c3d4")
    with pytest.raises(SourceError, match=message):
        open_it(root, views=(5, 5))[1]


def test_malformed_captions_csv(root: Path):
    (root.parent / "bad.csv").write_text("a1b2,ok\na1b2,too,many\n")
    with pytest.raises(SourceError, match=r"bad.csv:2: expected 'id,caption'"):
        open_it(root, captions=root.parent / "bad.csv")
