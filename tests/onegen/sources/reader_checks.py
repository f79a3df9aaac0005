"""What the reader tests share: a red blob drawn where a known 3D point projects, found again in
the image the reader returns, and the ``record_info`` contract every reader keeps."""

from __future__ import annotations

import numpy as np

from onegen.families import RecordInfo


def red_blob(h: int, w: int, u: float, v: float, sigma: float = 1.5) -> np.ndarray:
    """HxWx3 uint8: a red Gaussian blob centred at image point (u, v) (pixel centres at +0.5) on black."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    red = 255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    return np.stack([red, np.zeros_like(red), np.zeros_like(red)], axis=-1).round().astype(np.uint8)


def red_centroid(rgb: np.ndarray) -> np.ndarray:
    """(u, v) of the red blob; red minus green, so a white background weighs nothing either."""
    weight = np.clip(rgb[..., 0].astype(np.float64) - rgb[..., 1] - 20, 0, None)
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]] + 0.5
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


def assert_record_info_matches(src) -> None:
    """``record_info(j)`` (what planning reads without decoding) agrees with record ``j`` itself."""
    for j, rec in enumerate(src):
        assert RecordInfo(*src.record_info(j)) == RecordInfo.of(rec)
