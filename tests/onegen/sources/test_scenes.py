from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onegen.sources import SourceError
from onegen.sources.scenes import (
    check_pose, pick_views, read_captions_csv, rgb_on_white, safe_id, scale_intrinsics, square_crop,
)
from tests.onegen.sources.reader_checks import red_blob, red_centroid




def project(K: np.ndarray, w2c: np.ndarray, X) -> np.ndarray:
    x = K @ (w2c[:3, :3] @ np.asarray(X, dtype=np.float64) + w2c[:3, 3])
    return x[:2] / x[2]


def test_square_crop_moves_a_projected_point_exactly():
    K = np.array([[70.0, 0.0, 41.0], [0.0, 66.0, 27.5], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    X = np.array([0.31, -0.12, 2.0])
    before = project(K, w2c, X)
    image = Image.fromarray(red_blob(60, 90, *before))
    out, K2 = square_crop(image, K, 40)
    # crop of the 60x60 centre square (x0 = 15), then scale 40/60
    np.testing.assert_allclose(project(K2, w2c, X), (before - [15, 0]) * 40 / 60, atol=1e-12)
    assert out.size == (40, 40)
    np.testing.assert_allclose(red_centroid(np.asarray(out)), project(K2, w2c, X), atol=0.1)
    tall, K3 = square_crop(Image.fromarray(red_blob(90, 60, *before)), K, 30)  # y0 = 15 on a tall image
    np.testing.assert_allclose(project(K3, w2c, X), (before - [0, 15]) * 30 / 60, atol=1e-12)
    np.testing.assert_allclose(red_centroid(np.asarray(tall)), project(K3, w2c, X), atol=0.1)


def test_scale_intrinsics_matches_a_resampled_image():
    K = np.array([[100.0, 0.0, 60.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    K4 = scale_intrinsics(K, 0.25, 0.25)
    np.testing.assert_allclose(K4, [[25, 0, 15], [0, 25, 10], [0, 0, 1]])


def test_pick_views_is_seeded_sorted_and_spread():
    for count in (4, 5, 13, 300):
        picks = pick_views(count, (4, 12), seed=7, where="x")
        assert picks == pick_views(count, (4, 12), seed=7, where="x")
        assert 4 <= len(picks) <= min(12, count) and picks == sorted(set(picks))
        edges = [count * i // len(picks) for i in range(len(picks) + 1)]
        assert all(a <= p < b for p, a, b in zip(picks, edges[:-1], edges[1:]))  # one per stratum
    runs = {tuple(pick_views(300, (4, 12), seed=s, where="x")) for s in range(20)}
    assert len(runs) == 20 and len({len(r) for r in runs}) > 3  # the seed changes both K and the frames
    with pytest.raises(SourceError, match="scene_a: has 3 frame"):
        pick_views(3, (4, 12), seed=0, where="scene_a")


def test_safe_id_and_rgba_on_white():
    assert safe_id("1K/ab.c d-é") == "1K_ab_c_d-_"
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]
    rgba[0, 1] = [0, 0, 0, 128]
    out = np.asarray(rgb_on_white(Image.fromarray(rgba)))
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [127, 127, 127]


def test_check_pose_refuses_non_rigid_matrices():
    T = np.eye(4)
    assert check_pose(T, "p") is not None
    with pytest.raises(SourceError, match="p: pose is not a rigid"):
        check_pose(np.diag([2.0, 1.0, 1.0, 1.0]), "p")
    with pytest.raises(SourceError, match="p: pose must be a finite 4x4"):
        check_pose(np.eye(3), "p")


def test_captions_csv(tmp_path: Path):
    path = tmp_path / "cap.csv"
    path.write_text('a,"a chair, red"\nb,a lamp\n\nc,unused\n', encoding="utf-8")
    assert read_captions_csv(path, {"a", "b"}) == {"a": "a chair, red", "b": "a lamp"}
    path.write_text("a,x\nb\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"cap.csv:2: expected 'id,caption'"):
        read_captions_csv(path)
