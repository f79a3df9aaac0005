"""Affine-invariant depth evaluation (OneDiffusion Table 4, Marigold's protocol): pure numpy, no IO.

Protocol (SPEC "Evaluation protocols", Depth): a pixel is valid when its ground truth lies strictly
inside the dataset's range and the dataset's own mask (and, for NYUv2, the Eigen crop) allows it;
the prediction is fitted to the ground truth by least-squares scale and shift over the valid pixels
(in depth space, or optionally in disparity space), clipped to the range, and scored per image with
AbsRel and δ1 (fractions in 0..1; the benchmark averages over images and reports percent).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

NYU_RANGE: tuple[float, float] = (1e-3, 10.0)  # metres, exclusive bounds
DIODE_RANGE: tuple[float, float] = (0.6, 350.0)

# Eigen et al.'s evaluation crop for the 480x640 NYUv2 frames: rows 45:471, columns 41:601 (half-open).
EIGEN_CROP_SHAPE = (480, 640)
EIGEN_CROP = (slice(45, 471), slice(41, 601))

# Floor for an aligned disparity before inverting it; as Marigold does. 1/1e-3 = 1000 m lies beyond
# both datasets' far limits, so after clipping to the range the floor never changes a score.
MIN_DISPARITY = 1e-3

Space = Literal["depth", "disparity"]


def _fit_pixels(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The masked pixels as float64 vectors; refuses an empty mask and non-finite values under it."""
    pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, dtype=bool)
    if not (pred.shape == target.shape == mask.shape):
        raise ValueError(f"shape mismatch: pred {pred.shape}, target {target.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError(f"no valid pixels for {what}: the mask selects nothing")
    p = pred[mask].astype(np.float64)
    t = target[mask].astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError(f"prediction has non-finite values at {int((~np.isfinite(p)).sum())} valid pixels ({what})")
    if not np.isfinite(t).all():
        raise ValueError(f"target has non-finite values at {int((~np.isfinite(t)).sum())} valid pixels ({what})")
    return p, t


def _positive_target(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    p, t = _fit_pixels(pred, target, mask, what)
    if (t <= 0).any():
        raise ValueError(f"target has {int((t <= 0).sum())} non-positive depths at valid pixels ({what})")
    return p, t


def _least_squares(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    # lstsq rather than the closed form: a constant prediction is rank-deficient, and lstsq still
    # returns the (minimum-norm) fit whose aligned prediction is the target's mean.
    a = np.stack([p, np.ones_like(p)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, t, rcond=None)
    return float(scale), float(shift)


def align_least_squares(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, space: Space = "depth"
) -> tuple[np.ndarray, float, float]:
    """Fit ``scale * pred + shift`` to ``target`` (depth, metres) over ``mask``; return it as depth.

    ``space="depth"``: ``pred`` is an affine-invariant depth, fitted to ``target``.
    ``space="disparity"``: ``pred`` is an affine-invariant disparity, fitted to ``1 / target``; the
    aligned disparity is floored at ``MIN_DISPARITY`` and inverted back to depth. ``scale`` and
    ``shift`` are in the space of the fit. The aligned prediction covers every pixel (float64).
    """
    if space not in ("depth", "disparity"):
        raise ValueError(f"unknown alignment space {space!r}: use 'depth' or 'disparity'")
    full = np.asarray(pred, dtype=np.float64)
    if space == "depth":
        scale, shift = _least_squares(*_fit_pixels(pred, target, mask, "depth-space alignment"))
        return full * scale + shift, scale, shift
    # Unlike Marigold, non-positive predicted disparities stay in the fit: an affine-invariant
    # prediction's sign means nothing until the shift is known.
    p, t = _positive_target(pred, target, mask, "disparity-space alignment")
    scale, shift = _least_squares(p, 1.0 / t)
    disparity = np.maximum(full * scale + shift, MIN_DISPARITY)
    return 1.0 / disparity, scale, shift


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """The Eigen crop as a boolean mask; only defined on NYUv2's 480x640 frames."""
    if (height, width) != EIGEN_CROP_SHAPE:
        raise ValueError(f"the Eigen crop is defined for 480x640 NYUv2 frames, got {height}x{width}")
    mask = np.zeros(EIGEN_CROP_SHAPE, dtype=bool)
    mask[EIGEN_CROP] = True
    return mask


def valid_mask(
    depth: np.ndarray, min_depth: float, max_depth: float, extra_mask: np.ndarray | None = None
) -> np.ndarray:
    """Pixels with finite ground truth strictly inside (min_depth, max_depth), and inside ``extra_mask``."""
    if not 0 < min_depth < max_depth:
        raise ValueError(f"depth range must satisfy 0 < min < max, got ({min_depth}, {max_depth})")
    depth = np.asarray(depth)
    valid = np.isfinite(depth) & (depth > min_depth) & (depth < max_depth)
    if extra_mask is not None:
        extra = np.asarray(extra_mask, dtype=bool)
        if extra.shape != depth.shape:
            raise ValueError(f"shape mismatch: depth {depth.shape}, extra_mask {extra.shape}")
        valid &= extra
    return valid


def abs_rel(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean of |pred - target| / target over the masked pixels of one image."""
    p, t = _positive_target(pred, target, mask, "AbsRel")
    return float(np.mean(np.abs(p - t) / t))


def delta1(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, threshold: float = 1.25) -> float:
    """Fraction of masked pixels with max(pred / target, target / pred) < threshold."""
    p, t = _positive_target(pred, target, mask, "delta1")
    # Written on the ratio r = pred / target so that a non-positive prediction counts as a miss
    # (max(r, 1/r) would be negative, hence "below threshold") and nothing divides by pred.
    r = p / t
    return float(np.mean((r < threshold) & (r > 1.0 / threshold)))


def evaluate_depth(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    min_depth: float,
    max_depth: float,
    space: Space = "depth",
) -> dict[str, float]:
    """One image under the protocol: {"abs_rel", "delta1"} as fractions.

    ``mask`` is the dataset's validity (and crop); the range filter is applied here as well, so
    passing an already range-filtered mask is harmless.
    """
    valid = valid_mask(target, min_depth, max_depth, mask)
    aligned, _, _ = align_least_squares(pred, target, valid, space=space)
    aligned = np.clip(aligned, min_depth, max_depth)
    return {"abs_rel": abs_rel(aligned, target, valid), "delta1": delta1(aligned, target, valid)}
