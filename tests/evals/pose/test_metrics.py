"""Camera-pose metrics: relative rotation errors, centre accuracy after similarity alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.pose import metrics


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rodrigues' formula."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def _random_rotations(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, 3, 3)))
    return q * np.sign(np.linalg.det(q))[:, None, None]  # flip improper ones: (-Q) has det +1 in 3-D


def test_geodesic_angle_of_known_rotations():
    R = np.stack([_rotation([1, 2, 3], d) for d in (0.0, 1e-6, 20.0, 90.0, 179.9, 180.0)])
    np.testing.assert_allclose(metrics.geodesic_angle_deg(R), [0, 1e-6, 20, 90, 179.9, 180], atol=1e-9)


def test_twenty_degree_perturbation_of_one_camera():
    R_gt = _random_rotations(4, 0)
    R_pred = R_gt.copy()
    R_pred[0] = _rotation([0, 0, 1], 20.0) @ R_gt[0]  # camera 0 turned by 20° about its own z axis
    errors = metrics.relative_rotation_errors(R_pred, R_gt)
    # Pairs in triu order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); only those with camera 0 are off.
    np.testing.assert_allclose(errors, [20, 20, 20, 0, 0, 0], atol=1e-9)
    assert metrics.rotation_accuracy(errors, 15.0) == pytest.approx(0.5)
    assert metrics.rotation_accuracy(errors, 25.0) == 1.0


def test_relative_errors_ignore_a_global_rotation():
    R_gt = _random_rotations(5, 1)
    R_pred = R_gt @ _rotation([1, -1, 0.5], 73.0)  # the same rig in a rotated world frame
    np.testing.assert_allclose(metrics.relative_rotation_errors(R_pred, R_gt), 0.0, atol=1e-9)
    assert metrics.relative_rotation_errors(R_pred, R_gt).shape == (10,)


def test_rotation_inputs_are_validated():
    R = _random_rotations(3, 2)
    with pytest.raises(ValueError, match="at least 2 cameras"):
        metrics.relative_rotation_errors(R[:1], R[:1])
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.relative_rotation_errors(R, R[:2])
    with pytest.raises(ValueError, match=r"matrices \[1\] are not rotations"):
        metrics.relative_rotation_errors(R * np.array([1, -1, 1])[:, None, None], R)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.relative_rotation_errors(np.full_like(R, np.nan), R)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.rotation_accuracy(np.array([]))


def _centres(seed: int, n: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)) * [2.0, 1.0, 0.5] + [3.0, -1.0, 2.0]


def test_centre_accuracy_is_invariant_to_a_similarity_of_the_prediction():
    c_gt = _centres(3, 20)
    noise = np.random.default_rng(4).standard_normal(c_gt.shape) * 0.08 * metrics.gt_scene_scale(c_gt)
    c_pred = c_gt + noise
    errors = metrics.camera_centre_errors(c_pred, c_gt)
    accuracy = metrics.camera_centre_accuracy(c_pred, c_gt, 0.1)
    assert 0.0 < accuracy < 1.0  # a case where alignment matters to some cameras
    moved = 3.7 * c_pred @ _rotation([0.3, 1, -2], 140.0).T + [10.0, -4.0, 7.0]
    np.testing.assert_allclose(metrics.camera_centre_errors(moved, c_gt), errors, atol=1e-10)
    assert metrics.camera_centre_accuracy(moved, c_gt, 0.1) == accuracy


def test_exact_prediction_up_to_similarity_is_fully_accurate():
    c_gt = _centres(5)
    c_pred = 0.2 * c_gt @ _rotation([1, 0, 0], 30.0).T - 5.0
    np.testing.assert_allclose(metrics.camera_centre_errors(c_pred, c_gt), 0.0, atol=1e-10)
    assert metrics.camera_centre_accuracy(c_pred, c_gt) == 1.0


def test_scene_scale_is_the_farthest_camera_from_the_centroid():
    c_gt = np.array([[0.0, 0, 0], [2, 0, 0], [0, 2, 0], [2, 2, 0]])
    assert metrics.gt_scene_scale(c_gt) == pytest.approx(math.sqrt(2))


def test_similarity_alignment_recovers_the_transform_and_refuses_reflections():
    src = _centres(6)
    R = _rotation([1, 1, 1], 50.0)
    s, R_fit, t = metrics.similarity_alignment(src, 2.5 * src @ R.T + [1.0, 2.0, 3.0])
    assert s == pytest.approx(2.5) and np.allclose(R_fit, R) and np.allclose(t, [1, 2, 3])
    _, R_mirror, _ = metrics.similarity_alignment(src, src * [1, 1, -1])
    assert np.linalg.det(R_mirror) == pytest.approx(1.0)


def test_coincident_predictions_align_to_the_centroid():
    c_gt = _centres(7)
    c_pred = np.ones_like(c_gt)
    errors = metrics.camera_centre_errors(c_pred, c_gt)
    expected = np.linalg.norm(c_gt - c_gt.mean(axis=0), axis=1) / metrics.gt_scene_scale(c_gt)
    np.testing.assert_allclose(errors, expected)
    assert np.isfinite(errors).all()


def test_degenerate_centres_raise_value_error():
    c = _centres(8)
    with pytest.raises(ValueError, match="scene scale is zero"):
        metrics.camera_centre_accuracy(c, np.tile(c[:1], (len(c), 1)))
    with pytest.raises(ValueError, match="at least 2 cameras"):
        metrics.camera_centre_accuracy(c[:1], c[:1])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.camera_centre_accuracy(np.where(np.eye(8, 3) > 0, np.inf, c), c)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metrics.camera_centre_accuracy(c[:, :2], c[:, :2])
    with pytest.raises(ValueError, match="scene_scale must be positive"):
        metrics.camera_centre_accuracy(c, c, scene_scale=0.0)
