"""Condition fidelity (UniCon Table 1, appendix): estimate the condition on the generated image and
on the real one with the same annotator, then compare. Pure numpy, no IO.

* **Edge EMSE** -- mean squared error between the two edge maps (scaled to [0, 1]) over the
  pixels where either map is non-zero. UniCon says "non-zero areas (i.e. edge areas) in the
  estimated edge maps" without naming one map; the union counts both missing and spurious
  edges (the reference's edges alone would not penalise clutter). Two empty maps agree: 0.
  The paper prints EMSE in units of 1e-2; the benchmark does the same.
* **Depth AbsRel** -- the depth protocol of :mod:`evals.depth.metrics` with the real image's
  estimate as ground truth: least-squares scale and shift of the generated estimate onto it,
  then mean |aligned - ref| / ref. Both maps are in the annotator's own space (Depth-Anything
  gives relative disparity); pixels where the reference is below ``MIN_RELATIVE`` of its
  maximum (sky and horizon, disparity ~0) carry no depth and are left out rather than divided by ~0.
* **Pose PCK@0.1** -- per (reference person, generated person) pair, the share of the reference
  person's visible keypoints that the generated person also has within 0.1 x max(h, w) of the
  reference person's box (mmpose's PCK with bbox normalisation). Pairs are matched greedily in
  descending PCK, each person used once, and the image's PCK is over the matched keypoints
  (UniCon's protocol: "Finally, we compute PCK over the matched keypoints"), so a person the
  generated image lacks drops out, and an image with nobody generated has no PCK. Beside it, a
  stricter figure divides by the visible keypoints of *all* reference people: a missing person's
  keypoints count as wrong there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from evals.depth.metrics import abs_rel, align_least_squares

PCK_THRESHOLD = 0.1
MIN_RELATIVE = 1e-3


def edge_emse(generated: np.ndarray, reference: np.ndarray) -> float:
    """MSE over the union of non-zero pixels of two uint8 (0..255) or [0, 1] float edge maps."""
    g, r = _unit(generated, "generated"), _unit(reference, "reference")
    if g.shape != r.shape:
        raise ValueError(f"edge maps differ in shape: {g.shape} vs {r.shape}")
    area = (g > 0) | (r > 0)
    return float(np.mean((g[area] - r[area]) ** 2)) if area.any() else 0.0


def _unit(edges: np.ndarray, what: str) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim == 3 and e.shape[2] == 3:  # an edge picture: its channels are equal
        e = e[..., 0]
    if e.ndim != 2:
        raise ValueError(f"{what} edge map must be HxW (or HxWx3), got shape {e.shape}")
    return e.astype(np.float64) / 255.0 if e.dtype == np.uint8 else e.astype(np.float64)


def depth_abs_rel(generated: np.ndarray, reference: np.ndarray) -> float:
    """AbsRel of the generated image's depth estimate against the real image's, after alignment."""
    g, r = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    if g.shape != r.shape:
        raise ValueError(f"depth maps differ in shape: {g.shape} vs {r.shape}")
    valid = np.isfinite(r) & np.isfinite(g) & (r > MIN_RELATIVE * np.nanmax(np.where(np.isfinite(r), r, 0)))
    aligned, _, _ = align_least_squares(g, r, valid)
    return abs_rel(aligned, r, valid)


@dataclass(frozen=True)
class Person:
    keypoints: np.ndarray  # (K, 2) x, y in pixels
    visible: np.ndarray  # (K,) bool
    box: np.ndarray | None = None  # (4,) x1, y1, x2, y2; None = the visible keypoints' extent

    def size(self) -> float:
        """max(h, w) of the box: the PCK normaliser."""
        if self.box is not None:
            x1, y1, x2, y2 = np.asarray(self.box, np.float64)
        else:
            p = np.asarray(self.keypoints, np.float64)[np.asarray(self.visible, bool)]
            (x1, y1), (x2, y2) = p.min(0), p.max(0)
        return float(max(x2 - x1, y2 - y1))


def correct_keypoints(reference: Person, generated: Person, threshold: float = PCK_THRESHOLD) -> int:
    """How many of the reference's visible keypoints the generated person places within threshold."""
    ref_vis, gen_vis = np.asarray(reference.visible, bool), np.asarray(generated.visible, bool)
    if ref_vis.shape != gen_vis.shape:
        raise ValueError(f"keypoint sets differ: {ref_vis.shape} vs {gen_vis.shape}")
    d = np.linalg.norm(np.asarray(generated.keypoints, np.float64) - np.asarray(reference.keypoints, np.float64), axis=1)
    return int(np.sum(ref_vis & gen_vis & (d <= threshold * reference.size())))


def greedy_match(pck: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) pairs taken in descending value, each row and column at most once; ties keep
    row-major order."""
    pck = np.asarray(pck, np.float64)
    order = sorted(np.ndindex(*pck.shape), key=lambda rc: -pck[rc])
    rows, cols, pairs = set(), set(), []
    for r, c in order:
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
            pairs.append((r, c))
    return pairs


class PoseCounts(NamedTuple):
    correct: int  # keypoints within the threshold, over the matched pairs
    matched: int  # visible keypoints of the matched reference people (UniCon's denominator)
    total: int  # visible keypoints of all reference people (the strict denominator)


def pose_pck(reference: list[Person], generated: list[Person], threshold: float = PCK_THRESHOLD) -> PoseCounts:
    """One image's keypoint counts; all 0 when the real image has no person with a visible keypoint."""
    reference = [p for p in reference if np.asarray(p.visible, bool).any()]
    visible = np.array([np.asarray(p.visible, bool).sum() for p in reference], dtype=np.int64)
    if not reference or not generated:
        return PoseCounts(0, 0, int(visible.sum()))
    correct = np.array([[correct_keypoints(r, g, threshold) for g in generated] for r in reference])
    pairs = greedy_match(correct / visible[:, None])
    return PoseCounts(int(sum(correct[r, g] for r, g in pairs)), int(sum(visible[r] for r, _ in pairs)),
                      int(visible.sum()))
