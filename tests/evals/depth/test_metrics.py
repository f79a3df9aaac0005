"""Depth protocol metrics on tiny arrays whose answers are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from evals.depth import metrics as m


def test_align_depth_recovers_scale_and_shift_ignoring_masked_out_pixels():
    pred = np.array([[0.5, 1.0, 2.0], [3.0, 4.0, 7.0]])
    target = 2.0 * pred + 0.5
    target[1, 2] = 1000.0  # an outlier the mask excludes: it must not pull the fit
    mask = np.ones_like(pred, bool)
    mask[1, 2] = False
    aligned, scale, shift = m.align_least_squares(pred, target, mask)
    assert scale == pytest.approx(2.0, abs=1e-12) and shift == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(aligned[mask], target[mask], atol=1e-12)
    assert aligned[1, 2] == pytest.approx(14.5)  # the aligned map covers masked-out pixels too


def test_align_depth_hand_computed_fit():
    # p = [0, 1, 2], t = [1, 2, 4]: mean p 1, mean t 7/3, sum dp*dt = 3, sum dp^2 = 2
    # -> scale 3/2, shift 7/3 - 3/2 = 5/6
    aligned, scale, shift = m.align_least_squares(np.array([0.0, 1, 2]), np.array([1.0, 2, 4]), np.ones(3, bool))
    assert scale == pytest.approx(1.5) and shift == pytest.approx(5 / 6)
    np.testing.assert_allclose(aligned, [5 / 6, 7 / 3, 23 / 6])


def test_align_constant_prediction_gives_target_mean_not_nan():
    aligned, _, _ = m.align_least_squares(np.full(3, 4.0), np.array([1.0, 2, 6]), np.ones(3, bool))
    np.testing.assert_allclose(aligned, [3.0, 3.0, 3.0])


def test_align_disparity_recovers_scale_and_shift_and_returns_depth():
    disparity_pred = np.array([0.1, 0.2, 0.4, 0.8])
    target_depth = 1.0 / (3.0 * disparity_pred + 0.25)
    aligned, scale, shift = m.align_least_squares(disparity_pred, target_depth, np.ones(4, bool), space="disparity")
    assert scale == pytest.approx(3.0, abs=1e-9) and shift == pytest.approx(0.25, abs=1e-9)
    np.testing.assert_allclose(aligned, target_depth, rtol=1e-12)


def test_align_disparity_floors_non_positive_disparity():
    # fitted on the first three pixels: disparity = pred exactly (scale 1, shift 0); the fourth
    # pixel's aligned disparity is -1, floored at MIN_DISPARITY before inverting
    pred = np.array([0.5, 1.0, 2.0, -1.0])
    target = 1.0 / np.array([0.5, 1.0, 2.0, 1.0])
    aligned, _, _ = m.align_least_squares(pred, target, np.array([True, True, True, False]), space="disparity")
    np.testing.assert_allclose(aligned, [2.0, 1.0, 0.5, 1.0 / m.MIN_DISPARITY])


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_align_empty_mask_raises_instead_of_nan(space):
    with pytest.raises(ValueError, match="no valid pixels"):
        m.align_least_squares(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), bool), space=space)


def test_align_rejects_non_finite_under_mask_but_not_outside():
    pred = np.array([1.0, 2.0, np.nan])
    target = np.array([2.0, 4.0, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        m.align_least_squares(pred, target, np.ones(3, bool))
    _, scale, _ = m.align_least_squares(pred, target, np.array([True, True, False]))
    assert scale == pytest.approx(2.0)


def test_align_rejects_shape_mismatch_and_unknown_space():
    with pytest.raises(ValueError, match="shape"):
        m.align_least_squares(np.ones(3), np.ones(4), np.ones(4, bool))
    with pytest.raises(ValueError, match="space"):
        m.align_least_squares(np.ones(3), np.ones(3), np.ones(3, bool), space="log")  # type: ignore[arg-type]


def test_abs_rel_by_hand():
    # masked pixels: |1-1|/1 + |2-1|/1 + |3-4|/4 = 1.25 over 3 pixels; the fourth is masked out
    pred = np.array([1.0, 2.0, 3.0, 9.0])
    target = np.array([1.0, 1.0, 4.0, 0.0])
    assert m.abs_rel(pred, target, np.array([True, True, True, False])) == pytest.approx(1.25 / 3)


def test_delta1_by_hand():
    # ratios 1.0 hit, 1.2 hit, 1.3 miss, 1/0.7=1.43 miss, -1 miss (non-positive), 1.25 miss (strict)
    pred = np.array([1.0, 1.2, 1.3, 0.7, -1.0, 1.25])
    target = np.ones(6)
    assert m.delta1(pred, target, np.ones(6, bool)) == pytest.approx(2 / 6)
    assert m.delta1(pred, target, np.ones(6, bool), threshold=1.25**2) == pytest.approx(5 / 6)


@pytest.mark.parametrize("metric", [m.abs_rel, m.delta1])
def test_metrics_empty_mask_and_non_positive_target_raise(metric):
    with pytest.raises(ValueError, match="no valid pixels"):
        metric(np.ones(3), np.ones(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="non-positive"):
        metric(np.ones(3), np.array([1.0, 0.0, 1.0]), np.ones(3, bool))


def test_valid_mask_range_is_exclusive_and_drops_non_finite():
    depth = np.array([0.0, 1e-3, 0.5, 9.99, 10.0, np.nan, np.inf, 3.0])
    extra = np.array([True] * 7 + [False])
    np.testing.assert_array_equal(m.valid_mask(depth, *m.NYU_RANGE),
                                  [False, False, True, True, False, False, False, True])
    np.testing.assert_array_equal(m.valid_mask(depth, *m.NYU_RANGE, extra),
                                  [False, False, True, True, False, False, False, False])
    with pytest.raises(ValueError, match="range"):
        m.valid_mask(depth, 5.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        m.valid_mask(depth, *m.NYU_RANGE, np.ones(3, bool))


def test_eigen_crop_mask():
    crop = m.eigen_crop_mask(480, 640)
    assert crop.shape == (480, 640) and crop.dtype == bool
    assert crop.sum() == (471 - 45) * (601 - 41)
    assert crop[45, 41] and crop[470, 600]
    assert not crop[44, 41] and not crop[45, 40] and not crop[471, 600] and not crop[470, 601]
    with pytest.raises(ValueError, match="480x640"):
        m.eigen_crop_mask(240, 320)


def test_constants():
    assert m.NYU_RANGE == (1e-3, 10.0) and m.DIODE_RANGE == (0.6, 350.0)


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_evaluate_perfect_affine_prediction(space):
    target = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = 0.5 * target - 0.2 if space == "depth" else 2.0 / target + 1.0
    scores = m.evaluate_depth(pred, target, np.ones_like(target, bool), *m.NYU_RANGE, space=space)
    assert set(scores) == {"abs_rel", "delta1"}
    assert scores["abs_rel"] == pytest.approx(0.0, abs=1e-12) and scores["delta1"] == 1.0


def test_evaluate_clips_to_min_depth():
    # fit of p=[0,1,2] to t=[1,2,9]: scale 4, shift 0 -> [0, 4, 8]; clipped to min 0.5 -> [0.5, 4, 8]
    # AbsRel = (0.5/1 + 2/2 + 1/9) / 3 (0.7037 unclipped); δ1: only 8/9 is within 1.25 -> 1/3
    scores = m.evaluate_depth(np.array([0.0, 1, 2]), np.array([1.0, 2, 9]), np.ones(3, bool), 0.5, 10.0)
    assert scores["abs_rel"] == pytest.approx((0.5 + 1 + 1 / 9) / 3)
    assert scores["delta1"] == pytest.approx(1 / 3)


def test_evaluate_clips_to_max_depth():
    # fit of p=[0,1,2] to t=[9,8,1]: scale -4, shift 10 -> [10, 6, 2]; clipped to max 9.5 -> [9.5, 6, 2]
    # AbsRel = (0.5/9 + 2/8 + 1/1) / 3; δ1: 9.5/9 hit, 8/6 miss, 2/1 miss -> 1/3
    scores = m.evaluate_depth(np.array([0.0, 1, 2]), np.array([9.0, 8, 1]), np.ones(3, bool), 0.5, 9.5)
    assert scores["abs_rel"] == pytest.approx((0.5 / 9 + 0.25 + 1) / 3)
    assert scores["delta1"] == pytest.approx(1 / 3)


def test_evaluate_applies_range_and_mask():
    # target 0 (missing) and 20 (beyond 10 m) and the masked-out pixel are dropped from fit and scores
    target = np.array([0.0, 2.0, 4.0, 20.0, 3.0])
    pred = np.array([np.nan, 1.0, 2.0, 5.0, 100.0])
    mask = np.array([True, True, True, True, False])
    scores = m.evaluate_depth(pred, target, mask, *m.NYU_RANGE)
    assert scores == {"abs_rel": pytest.approx(0.0, abs=1e-12), "delta1": 1.0}


def test_evaluate_all_invalid_raises_not_nan():
    target = np.array([0.0, 20.0, np.nan])
    with pytest.raises(ValueError, match="no valid pixels"):
        m.evaluate_depth(np.ones(3), target, np.ones(3, bool), *m.NYU_RANGE)
