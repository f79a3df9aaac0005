"""Class-coloured maps (paper §3.3): semantic masks and box maps in the prompt guide's palette.

Each class gets a palette colour drawn at random but seeded per sample; the prompt names the
colour and class (``<#FFFF00 yellow mask: mouse>``) so the model learns the mapping from text.
"""

from __future__ import annotations

import numpy as np

from onegen.tasks import MAX_ENTITIES, PALETTE, PaletteColor


def assign_palette(labels: list[str], rng: np.random.Generator) -> dict[str, PaletteColor]:
    """Distinct random palette colours for up to MAX_ENTITIES class labels (order kept)."""
    unique = list(dict.fromkeys(labels))[:MAX_ENTITIES]
    picks = rng.choice(len(PALETTE), size=len(unique), replace=False)
    return {label: PALETTE[int(p)] for label, p in zip(unique, picks)}


def palette_entries(colors: dict[str, PaletteColor], kind: str) -> list[dict]:
    """The sample-json ``palette`` field; ``kind`` is "mask" or "boundingbox"."""
    return [{"hex": c.hex, "name": c.name, "label": label, "kind": kind} for label, c in colors.items()]


def semantic_map(instance: np.ndarray, labels: dict[int, str], colors: dict[str, PaletteColor]) -> np.ndarray:
    """Instance-id map (0 = background) -> HxWx3 uint8, each class in its colour on black."""
    lut = np.zeros((int(instance.max()) + 1, 3), dtype=np.uint8)
    for inst, label in labels.items():
        if label in colors and inst < len(lut):
            lut[inst] = colors[label].rgb
    return lut[instance]


def box_map(boxes: list[tuple[tuple[int, int, int, int], str]], colors: dict[str, PaletteColor],
            height: int, width: int) -> np.ndarray:
    """Filled boxes in class colours on black; larger boxes first so small ones stay visible."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    area = lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1])  # noqa: E731
    for (x1, y1, x2, y2), label in sorted(boxes, key=area, reverse=True):
        if label in colors:
            out[y1:y2, x1:x2] = colors[label].rgb
    return out
