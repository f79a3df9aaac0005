"""Deterministic preprocessors for the simple image-to-image tasks (paper §4): Canny edges,
blur, downscaling, inpainting masks. Every random parameter comes from the caller's seeded
generator and is returned so it can be recorded in the view's metadata.

OpenCV is imported inside the functions that use it, so the families that need none of these
build on machines without it (lean GPU images carry only what they run).
"""

from __future__ import annotations

import numpy as np


CANNY_VERSION = "rgb"  # in the records of what draws with canny(): on the colour image (before: on its grey)


def canny(rgb: np.ndarray, low: int = 100, high: int = 200) -> tuple[np.ndarray, dict]:
    """Canny on the colour image, as ControlNet's Canny annotator calls OpenCV: each pixel's gradient is its
    strongest channel's, so an edge between two colours of one grey level is kept (on grey it vanishes)."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(rgb), low, high)
    return edges, {"op": "canny", "low": low, "high": high}


def blur(rgb: np.ndarray, rng: np.random.Generator, sigma_range=(1.0, 3.0)) -> tuple[np.ndarray, dict]:
    import cv2

    sigma = float(rng.uniform(*sigma_range))
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma), {"op": "gaussian_blur", "sigma": sigma}


def downscale(rgb: np.ndarray, rng: np.random.Generator, factors=(2, 4)) -> tuple[np.ndarray, dict]:
    """Low-resolution copy, resized back so both views share one resolution."""
    import cv2

    f = int(rng.choice(factors))
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), {"op": "downscale", "factor": f}


def inpaint_mask(rgb: np.ndarray, rng: np.random.Generator, area_range=(0.1, 0.4)) -> tuple[np.ndarray, dict]:
    """Image with a random rectangle blanked to black (the region the model must fill)."""
    h, w = rgb.shape[:2]
    area = rng.uniform(*area_range) * h * w
    aspect = rng.uniform(0.5, 2.0)
    bh = int(np.clip(np.sqrt(area / aspect), 1, h))
    bw = int(np.clip(np.sqrt(area * aspect), 1, w))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = rgb.copy()
    out[y : y + bh, x : x + bw] = 0
    return out, {"op": "inpaint_box", "box": [x, y, x + bw, y + bh]}
