from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.config import SourceConfig
from onegen.format import decode_sample, encode_sample
from onegen.plucker import rays_for_cameras
from onegen.sources import SourceError, open_source
from onegen.sources.co3d import CO3DSource
from tests.onegen.sources.reader_checks import assert_record_info_matches, red_blob, red_centroid

POINT = np.array([0.2, -0.15, 0.1])  # shown as a red blob in every frame
W, H = 56, 40




def pytorch3d_camera(eye):
    """R, T with X_cam = X @ R + T, camera axes +X left, +Y up, +Z forward, looking at the origin."""
    forward = -np.asarray(eye, dtype=np.float64) / np.linalg.norm(eye)
    left = np.cross([0, 0, 1.0], forward)
    left /= np.linalg.norm(left)
    R = np.stack([left, np.cross(forward, left), forward], axis=1)  # columns: the camera axes in world
    return R, -np.asarray(eye) @ R


def pytorch3d_pixel(R, T, focal, principal, fmt, X=POINT):
    """PyTorch3D NDC projection, then NDC -> pixels (NDC +x left, +y up) as CO3D defines its formats."""
    Xc = X @ R + T
    ndc = np.asarray(focal) * Xc[:2] / Xc[2] + np.asarray(principal)
    scale = np.array([W / 2, H / 2]) if fmt == "ndc_norm_image_bounds" else np.full(2, min(W, H) / 2)
    return np.array([W / 2, H / 2]) - ndc * scale


def make_category(root: Path, category: str, sequences: dict[str, int], fmt: str) -> None:
    frames = []
    for seq, n in sequences.items():
        (root / category / seq / "images").mkdir(parents=True)
        for i in range(n):
            a = 2 * np.pi * i / n
            R, T = pytorch3d_camera([2.5 * np.cos(a), 2.5 * np.sin(a), 0.8])
            focal, principal = [1.6, 1.5 * W / H] if fmt == "ndc_norm_image_bounds" else [2.1, 2.1], [0.05, -0.04]
            rel = f"{category}/{seq}/images/frame{i + 1:06d}.jpg"
            Image.fromarray(red_blob(H, W, *pytorch3d_pixel(R, T, focal, principal, fmt))).save(root / rel, quality=95)
            frames.append({"sequence_name": seq, "frame_number": i, "frame_timestamp": i / 30,
                           "image": {"path": rel, "size": [H, W]},
                           "depth": {"path": None, "scale_adjustment": 1.0},
                           "viewpoint": {"R": R.tolist(), "T": T.tolist(), "focal_length": focal,
                                         "principal_point": principal, "intrinsics_format": fmt}})
    with gzip.open(root / category / "frame_annotations.jgz", "wt", encoding="utf-8") as f:
        json.dump(frames[::-1], f)  # order in the file does not matter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "co3d"
    make_category(root, "apple", {"110_13051_23361": 7, "189_20393_38136": 5}, "ndc_norm_image_bounds")
    make_category(root, "teddybear", {"34_1403_4393": 6}, "ndc_isotropic")
    return root


def open_it(root: Path, **kw) -> CO3DSource:
    return CO3DSource(root, **{"views": (4, 5), "resolution": 32, **kw})


def test_counts_ids_shapes_no_captions(root: Path):
    src = open_it(root, seed=2)
    assert src.ids == ["apple_110_13051_23361", "apple_189_20393_38136", "teddybear_34_1403_4393"]
    assert src.frame_counts == [7, 5, 6]
    for rec, n in zip(src, (7, 5, 6)):
        assert rec.key == f"co3d/{rec.provenance.source_id}" and rec.meta["kind"] == "scene"
        assert rec.captions == {} and rec.caption == ""  # paper: task token only
        assert 4 <= len(rec.views) <= 5 and rec.meta["frame_count"] == n
        assert rec.meta["frames"] == sorted(rec.meta["frames"])
        assert rec.provenance.annotators[0]["name"] == "onegen.sources.co3d"
        assert all(v.data.shape == (32, 32, 3) for v in rec.views)
        decode_sample(encode_sample(rec))
    assert open_it(root, categories=["teddybear"]).ids == ["teddybear_34_1403_4393"]


def test_cameras_project_the_point_onto_its_blob(root: Path):
    for rec in open_it(root):
        for v in rec.views:
            cam = v.camera
            x = cam.K @ (cam.world_to_camera[:3, :3] @ POINT + cam.world_to_camera[:3, 3])
            assert x[2] > 0
            np.testing.assert_allclose(red_centroid(v.data), x[:2] / x[2], atol=0.2, err_msg=f"{rec.key} {v.meta}")
        assert np.all(np.isfinite(rays_for_cameras([v.camera for v in rec.views])))


def test_hand_checked_camera(tmp_path: Path):
    """R = I, T = (0, 0, 4), f = (2, 2), p = (0.1, -0.2) in ndc_norm_image_bounds, image 56x40.

    X = (1, 0.5, 0): X_cam = (1, 0.5, 4), NDC = (2/4 + 0.1, 1/4 - 0.2) = (0.6, 0.05), pixel =
    (28 - 0.6*28, 20 - 0.05*20) = (11.2, 19.0); the 40x40 centre crop starts at x = 8 -> (3.2, 19.0).
    """
    (tmp_path / "c" / "s" / "images").mkdir(parents=True)
    frames = []
    for i in range(4):
        Image.new("RGB", (W, H)).save(tmp_path / "c" / "s" / "images" / f"{i}.jpg")
        frames.append({"sequence_name": "s", "frame_number": i,
                       "image": {"path": f"c/s/images/{i}.jpg", "size": [H, W]},
                       "viewpoint": {"R": np.eye(3).tolist(), "T": [0, 0, 4], "focal_length": [2, 2],
                                     "principal_point": [0.1, -0.2], "intrinsics_format": "ndc_norm_image_bounds"}})
    with gzip.open(tmp_path / "c" / "frame_annotations.jgz", "wt") as f:
        json.dump(frames, f)
    cam = CO3DSource(tmp_path, views=(4, 4), resolution=40)[0].views[0].camera
    np.testing.assert_allclose(cam.K, [[56, 0, 25.2 - 8], [0, 40, 24], [0, 0, 1]], atol=1e-12)
    x = cam.K @ (cam.world_to_camera[:3, :3] @ [1, 0.5, 0] + cam.world_to_camera[:3, 3])
    np.testing.assert_allclose(x[:2] / x[2], [3.2, 19.0], atol=1e-12)
    np.testing.assert_allclose(cam.centre, [0, 0, -4], atol=1e-12)


def test_record_info_matches_the_record(root: Path):
    assert_record_info_matches(open_it(root, seed=6))


def test_view_choice_is_deterministic_and_seeded(root: Path):
    a, b, c = open_it(root, seed=8), open_it(root, seed=8), open_it(root, seed=9)
    assert [encode_sample(r) for r in a] == [encode_sample(r) for r in b]
    assert [r.meta["frames"] for r in a] != [r.meta["frames"] for r in c]


def test_open_source_dispatches(root: Path):
    src = open_source(SourceConfig(kind="co3d", path=root, categories=["apple"], views=(4, 4), resolution=16))
    assert isinstance(src, CO3DSource) and len(src) == 2 and len(src[1].views) == 4


def rewrite(root: Path, fn) -> None:
    path = root / "teddybear" / "frame_annotations.jgz"
    with gzip.open(path, "rt") as f:
        frames = json.load(f)
    with gzip.open(path, "wt") as f:
        json.dump(fn(frames), f)


def test_bad_annotation_files_fail_at_open(root: Path):
    path = root / "teddybear" / "frame_annotations.jgz"
    path.write_bytes(b"not gzip")
    with pytest.raises(SourceError, match=r"teddybear/frame_annotations.jgz: malformed frame annotations"):
        open_it(root)
    with gzip.open(path, "wt") as f:
        json.dump({"frames": []}, f)
    with pytest.raises(SourceError, match=r"must be a JSON list"):
        open_it(root)
    with gzip.open(path, "wt") as f:
        json.dump([{"frame_number": 0}], f)
    with pytest.raises(SourceError, match=r"frame 0 lacks a 'sequence_name'"):
        open_it(root)
    with pytest.raises(SourceError, match=r"category 'banana' has no frame annotations"):
        open_it(root, categories=["banana"])


def all_frames(key, value):
    def fn(frames):
        for fr in frames:
            fr["viewpoint"][key] = value
        return frames
    return fn


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "teddybear" / "34_1403_4393" / "images" / "frame000001.jpg").unlink(),
     r"frame000001.jpg: image file is missing"),
    (lambda r: (r / "teddybear" / "34_1403_4393" / "images" / "frame000001.jpg").write_bytes(b"\xff\xd8\xff\xe0junk"),
     r"frame000001.jpg: cannot decode image"),
    (lambda r: rewrite(r, all_frames("intrinsics_format", "screen")), r"unknown intrinsics_format 'screen'"),
    (lambda r: rewrite(r, all_frames("R", [[1, 0], [0, 1]])), r"frame \d: viewpoint needs finite R 3x3"),
    (lambda r: rewrite(r, all_frames("R", np.diag([1, 1, 2]).tolist())), r"frame \d: pose is not a rigid"),
    (lambda r: rewrite(r, lambda fs: [{k: v for k, v in f.items() if k != "image"} for f in fs]),
     r"frame \d: malformed image/viewpoint annotation"),
    (lambda r: rewrite(r, lambda fs: fs[:3]), r"sequence 34_1403_4393: has 3 frame\(s\)"),
])
def test_bad_frames_fail_when_read(root: Path, breakage, message):
    breakage(root)
    src = open_it(root, views=(6, 6))  # every frame of the teddybear sequence
    with pytest.raises(SourceError, match=message) as e:
        src[2]
    assert "teddybear" in str(e.value)
    assert len(src[0].views) == 6
