"""An object's identity measured on a procedural-world image: colour histogram + silhouette shape.

The world's identities are (shape, colour, material, size). A generated image has no instance
map, so objects are found by what the renderer makes true of every scene: the ground is a
near-grey plane and the sky a blue gradient between two fixed colours, while objects are
saturated colours, or black. Each pixel gets a class: background; black (darker than any ground
shadow); white (brighter than any lit ground -- only the lit faces of white objects pass, so
white identities are measured weakly); or, when saturated and not sky-coloured, the nearest of
the world's hues. Candidate objects are the connected components of each class, so two touching
objects of different colours stay apart.

An object's embedding is measured on its mask:

* colour -- a 28-bin histogram: saturated pixels by hue (12) x brightness (2), greyish pixels by
  brightness (4); compared by histogram intersection (1 = same colour distribution);
* shape -- four silhouette numbers in [0, 1] (circularity, box extent, box height share, width
  near the top relative to the widest row), which separate spheres, cubes, cylinders and cones
  seen from the world's cameras; compared with a Gaussian kernel of width ``SHAPE_SIGMA``.

Similarity = mean of the two (in [0, 1]). Material and size are not measured: highlights and
apparent size depend on light and distance more than on the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from onegen.sources.procedural import COLORS, SKY_HORIZON, SKY_ZENITH

MIN_SATURATION = 0.28  # ground grey stays below ~0.15 (channels within +-10 of ~150)
SKY_DISTANCE = 18.0  # RGB distance to the horizon-zenith segment below which a pixel is sky
BLACK_MAX = 40  # brightest channel of a black object; the darkest ground shadow is ~45
WHITE_MIN = 215  # darkest channel of a lit white face; the brightest lit ground is ~210
MIN_AREA_FRACTION = 0.001  # components smaller than this share of the image are noise
SHAPE_SIGMA = 0.15

_HUE_BINS, _SAT_VALUE_BINS, _GREY_BINS = 12, 2, 4
HISTOGRAM_BINS = _HUE_BINS * _SAT_VALUE_BINS + _GREY_BINS


@dataclass(frozen=True)
class ObjectEmbedding:
    colour: np.ndarray  # (HISTOGRAM_BINS,) float64, sums to 1
    shape: np.ndarray  # (4,) float64 in [0, 1]


def _hue(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2HSV)[..., 0].astype(np.int64)


# The world's chromatic colours as OpenCV hues (0..179); orange and brown share one hue and so
# one segmentation class (they still differ in the brightness bins of the histogram).
_PROTOTYPE_HUES = np.unique(_hue(np.array([[c for c in COLORS.values() if max(c) - min(c) > 60]], np.uint8))[0])


def segmentation_classes(rgb: np.ndarray) -> np.ndarray:
    """Per pixel: 0 background (ground, sky), 1 black, 2 white, 3.. the nearest world hue (HxW int)."""
    x = np.asarray(rgb, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {x.shape}")
    hi, lo = x.max(-1), x.min(-1)
    saturation = (hi - lo) / np.maximum(hi, 1.0)
    horizon, zenith = SKY_HORIZON * 255 + 0.5, SKY_ZENITH * 255 + 0.5
    d = zenith - horizon
    t = np.clip((x - horizon) @ d / (d @ d), 0, 1)
    sky = np.linalg.norm(x - (horizon + t[..., None] * d), axis=-1) < SKY_DISTANCE
    gap = np.abs(_hue(rgb)[..., None] - _PROTOTYPE_HUES)
    nearest = np.minimum(gap, 180 - gap).argmin(-1)  # hue is circular
    classes = np.where((saturation > MIN_SATURATION) & ~sky, 3 + nearest, 0)
    classes = np.where(hi < BLACK_MAX, 1, classes)
    return np.where(lo > WHITE_MIN, 2, classes)


def object_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that belong to some object rather than to the ground or the sky (HxW bool)."""
    return segmentation_classes(rgb) > 0


def candidate_objects(rgb: np.ndarray) -> list[np.ndarray]:
    """Connected components of each segmentation class (8-connected, after a 3x3 closing that
    bridges specular highlights), largest first; tiny ones dropped. Splitting by class keeps two
    touching objects of different colours apart."""
    classes = segmentation_classes(rgb)
    min_area = max(4, MIN_AREA_FRACTION * classes.size)
    found = []
    for k in np.unique(classes[classes > 0]):
        mask = cv2.morphologyEx((classes == k).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        found += [(stats[j, cv2.CC_STAT_AREA], labels == j) for j in range(1, n) if stats[j, cv2.CC_STAT_AREA] >= min_area]
    found.sort(key=lambda f: -f[0])
    return [m for _, m in found]


def colour_histogram(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2HSV)[mask].astype(np.int64)
    if len(hsv) == 0:
        raise ValueError("empty mask: no pixels to measure")
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]  # OpenCV: hue 0..179, saturation and value 0..255
    saturated = s > MIN_SATURATION * 255
    hue_bin = np.minimum(h * _HUE_BINS // 180, _HUE_BINS - 1)
    bins = np.where(saturated, hue_bin * _SAT_VALUE_BINS + (v >= 128),
                    _HUE_BINS * _SAT_VALUE_BINS + np.minimum(v * _GREY_BINS // 256, _GREY_BINS - 1))
    hist = np.bincount(bins, minlength=HISTOGRAM_BINS).astype(np.float64)
    return hist / hist.sum()


def shape_descriptor(mask: np.ndarray) -> np.ndarray:
    """(circularity, extent, height share, top width) of the mask's largest outer contour."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise ValueError("empty mask: no silhouette to measure")
    c = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(m)
    cv2.drawContours(filled, [c], -1, 1, thickness=cv2.FILLED)
    area = float(filled.sum())
    perimeter = max(cv2.arcLength(c, closed=True), 1.0)
    x, y, w, h = cv2.boundingRect(c)
    widths = filled[y : y + h, x : x + w].sum(1).astype(np.float64)
    top = widths[min(h - 1, h // 4)]
    return np.array([min(4 * np.pi * area / perimeter**2, 1.0), area / (w * h), h / (w + h),
                     top / max(widths.max(), 1.0)])


def embed(rgb: np.ndarray, mask: np.ndarray) -> ObjectEmbedding:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {rgb.shape[:2]}")
    return ObjectEmbedding(colour_histogram(rgb, mask), shape_descriptor(mask))


def similarity(a: ObjectEmbedding, b: ObjectEmbedding) -> float:
    """Mean of colour histogram intersection and a Gaussian kernel on the shape numbers, in [0, 1]."""
    colour = float(np.minimum(a.colour, b.colour).sum())
    shape = float(np.exp(-np.sum((a.shape - b.shape) ** 2) / (2 * SHAPE_SIGMA**2)))
    return 0.5 * (colour + shape)


def best_match(reference: ObjectEmbedding, rgb: np.ndarray) -> tuple[float, np.ndarray | None]:
    """The candidate object of ``rgb`` most similar to ``reference``: (similarity, its mask);
    (0.0, None) when the image holds no candidate object."""
    best, best_mask = 0.0, None
    for mask in candidate_objects(rgb):
        s = similarity(reference, embed(rgb, mask))
        if best_mask is None or s > best:
            best, best_mask = s, mask
    return best, best_mask
