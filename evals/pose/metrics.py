"""Camera-pose metrics as RayDiffusion computes them (``ray_diffusion/eval/utils.py``, ``eval_jobs.py``).

Conventions: rotations are world-to-camera (x_cam = R x_world + t, as in :mod:`onegen.camera`);
centres are world coordinates (-R^T t). Pure numpy; bad input raises ``ValueError``, never gives NaN.

Relative rotation error
    For each pair of cameras i < j, the geodesic angle between the predicted and the true relative
    rotations R_i R_j^T. RayDiffusion lists both orders (i, j) and (j, i) of every pair, in
    PyTorch3D's row-vector convention; the two orders have the same error, so its accuracy equals
    the one over unordered pairs computed here. Invariant to a global rotation of either set.
Rotation accuracy
    Fraction of those errors strictly below a threshold (RayDiffusion: 15°).
Camera-centre accuracy
    The predicted centres are aligned to the true ones by the least-squares similarity transform
    (scale, rotation, translation; Umeyama 1991, no reflection). The error of a camera is the
    distance between its aligned and true centres divided by the scene scale, the distance from
    the centroid of the true centres to the farthest true centre. Accuracy is the fraction of
    cameras with error strictly below a threshold (RayDiffusion: 0.1). RayDiffusion takes the scene
    scale over all cameras of the sequence, not only the evaluated ones; pass ``scene_scale`` to do
    the same. With two cameras the alignment is always exact. Predicted centres that coincide are a
    valid (bad) prediction: the best alignment puts them all at the true centroid.
"""

from __future__ import annotations

import numpy as np

_ROTATION_TOLERANCE = 1e-3  # float32 predictions are orthonormal to ~1e-6; a looser matrix is no rotation


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: non-finite values")
    return x


def _rotations(R: np.ndarray, name: str) -> np.ndarray:
    R = _finite(R, name)
    if R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"{name}: expected (N, 3, 3) rotations, got shape {R.shape}")
    orthonormal = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2)) <= _ROTATION_TOLERANCE
    proper = np.linalg.det(R) > 0
    bad = np.flatnonzero(~(orthonormal & proper))
    if bad.size:
        raise ValueError(f"{name}: matrices {bad.tolist()[:5]} are not rotations (orthonormal, det +1)")
    return R


def _centres(c: np.ndarray, name: str) -> np.ndarray:
    c = _finite(c, name)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"{name}: expected (N, 3) camera centres, got shape {c.shape}")
    return c


def geodesic_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of each (..., 3, 3) rotation, in [0, 180]."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    axis = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.linalg.norm(axis, axis=-1) / 2
    # atan2 rather than arccos(cos): arccos loses half its digits near 0° and 180°.
    return np.degrees(np.arctan2(sin, cos))


def relative_rotation_errors(R_pred: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Degrees, one per camera pair i < j (``np.triu_indices`` order), of N >= 2 cameras."""
    P, G = _rotations(R_pred, "R_pred"), _rotations(R_gt, "R_gt")
    if P.shape != G.shape:
        raise ValueError(f"shape mismatch: R_pred {P.shape}, R_gt {G.shape}")
    if len(P) < 2:
        raise ValueError(f"relative rotations need at least 2 cameras, got {len(P)}")
    i, j = np.triu_indices(len(P), k=1)
    rel_pred = P[i] @ P[j].transpose(0, 2, 1)
    rel_gt = G[i] @ G[j].transpose(0, 2, 1)
    return geodesic_angle_deg(rel_pred @ rel_gt.transpose(0, 2, 1))


def _accuracy(errors: np.ndarray, threshold: float, what: str) -> float:
    errors = _finite(errors, what)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array, got shape {errors.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return float(np.mean(errors < threshold))


def rotation_accuracy(errors: np.ndarray, threshold: float = 15.0) -> float:
    """Fraction of relative rotation errors (degrees) strictly below ``threshold``."""
    return _accuracy(errors, threshold, "rotation errors")


def gt_scene_scale(c_gt: np.ndarray) -> float:
    """Distance from the centroid of the true centres to the farthest one (RayDiffusion's scene scale)."""
    c = _centres(c_gt, "c_gt")
    scale = float(np.linalg.norm(c - c.mean(axis=0), axis=1).max())
    if not scale > 0:
        raise ValueError("c_gt: all camera centres coincide, so the scene scale is zero")
    return scale


def similarity_alignment(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R and translation t minimising sum ||dst_i - (s R src_i + t)||² (Umeyama)."""
    src, dst = _centres(src, "src"), _centres(dst, "dst")
    if src.shape != dst.shape:
        raise ValueError(f"shape mismatch: src {src.shape}, dst {dst.shape}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_src, dst - mu_dst
    var_src = float(np.mean(np.sum(a * a, axis=1)))
    if var_src == 0:
        # Any rotation fits equally; scale 0 puts every point at dst's centroid, the least-squares optimum.
        return 0.0, np.eye(3), mu_dst
    U, D, Vt = np.linalg.svd(b.T @ a / len(src))
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt))])  # no reflections
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_src)
    return s, R, mu_dst - s * R @ mu_src


def camera_centre_errors(c_pred: np.ndarray, c_gt: np.ndarray, scene_scale: float | None = None) -> np.ndarray:
    """Per camera: |aligned predicted centre - true centre| / scene scale (default: :func:`gt_scene_scale`)."""
    P, G = _centres(c_pred, "c_pred"), _centres(c_gt, "c_gt")
    if P.shape != G.shape:
        raise ValueError(f"shape mismatch: c_pred {P.shape}, c_gt {G.shape}")
    if len(P) < 2:
        raise ValueError(f"camera-centre accuracy needs at least 2 cameras, got {len(P)}")
    if scene_scale is None:
        scene_scale = gt_scene_scale(G)
    elif not (np.isfinite(scene_scale) and scene_scale > 0):
        raise ValueError(f"scene_scale must be positive and finite, got {scene_scale}")
    s, R, t = similarity_alignment(P, G)
    aligned = s * P @ R.T + t
    return np.linalg.norm(aligned - G, axis=1) / scene_scale


def camera_centre_accuracy(c_pred: np.ndarray, c_gt: np.ndarray, threshold: float = 0.1,
                           scene_scale: float | None = None) -> float:
    """Fraction of cameras whose aligned centre error (:func:`camera_centre_errors`) is below ``threshold``."""
    return _accuracy(camera_centre_errors(c_pred, c_gt, scene_scale), threshold, "centre errors")
