"""Which reading of UniCon's edge EMSE fits the scale of its Table 1 (2.28-4.84, x1e-2)?

UniCon released no evaluation code; its text says "MSE on non-zero areas" of the estimated edge
maps, "nearly a binary value map". Without HED weights offline, a soft-edge stand-in (blurred
Sobel magnitude through a sigmoid, 8-bit as HED's maps) scores a "good generator" (the photo
blurred, tinted, noised and shifted 2 pixels) and an unrelated photo under each reading:

  levels-union  the three-level maps (ControlNet's safe_step) over the pixels either map has non-zero
  soft-union    the 8-bit soft maps over the pixels either map has non-zero (what `edge_emse` computes)
  levels-all / soft-all   the same over every pixel

with the stand-in's flat regions a little above 0 (``--floor soft``: non-zero everywhere) or
exactly 0 (``--floor zero``). CPU, seconds: ``python benchmarks/probe_edge_emse.py``.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from skimage import data

from evals.condition.conditions import safe_levels
from evals.condition.metrics import edge_emse

PHOTOS = ("astronaut", "coffee", "chelsea")
SLOPES = {"soft": 3.0, "zero": 6.0}  # sigmoid slope: at 6 flat regions round to 0 in 8 bits


def stand_in_edges(image: np.ndarray, slope: float) -> np.ndarray:
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.5)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    soft = 1.0 / (1.0 + np.exp(-slope * (magnitude / np.percentile(magnitude, 90) - 1.5)))
    return (soft * 255.0).astype(np.uint8)


def good_generator(image: np.ndarray, seed: int) -> np.ndarray:
    noisy = cv2.GaussianBlur(image, (0, 0), 0.8).astype(np.float32) + np.random.default_rng(seed).normal(0, 4, image.shape)
    return np.roll(np.clip(noisy * 1.05 + 5, 0, 255).astype(np.uint8), 2, axis=1)


def readings(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    g, r = generated / 255.0, reference / 255.0
    gl, rl = safe_levels(generated) / 255.0, safe_levels(reference) / 255.0
    return {"levels-union": 100 * edge_emse(gl, rl), "soft-union": 100 * edge_emse(g, r),
            "levels-all": 100 * float(np.mean((gl - rl) ** 2)), "soft-all": 100 * float(np.mean((g - r) ** 2)),
            "non-zero share": float(((generated > 0) | (reference > 0)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--floor", choices=[*SLOPES, "both"], default="both")
    ap.add_argument("--side", type=int, default=512)
    args = ap.parse_args()
    unrelated = cv2.resize(data.rocket(), (args.side, args.side), interpolation=cv2.INTER_AREA)
    print("UniCon Table 1, soft edge: ControlNet 2.30, UniCon 2.28, Readout-Guidance 4.84 (x1e-2)")
    for floor in SLOPES if args.floor == "both" else [args.floor]:
        for name in PHOTOS:
            photo = cv2.resize(getattr(data, name)(), (args.side, args.side), interpolation=cv2.INTER_AREA)
            reference = stand_in_edges(photo, SLOPES[floor])
            for label, other in (("good generator", good_generator(photo, 0)), ("unrelated", unrelated)):
                row = readings(stand_in_edges(other, SLOPES[floor]), reference)
                print(f"floor {floor:4s} {name:9s} {label:14s} " + "  ".join(f"{k} {v:6.2f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
