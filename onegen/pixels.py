"""Pixels as shards store them (uint8, height x width x 3) and as the VAE and model take them (float, 3 x height x
width in [-1, 1]). Every stage that crosses between the two goes through here, so that a picture written from a
model's output is rounded the same way wherever it is made."""

from __future__ import annotations

import numpy as np
import torch


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, C] (or a grey H x W) -> float [..., 3, H, W] in [-1, 1]; an alpha channel is dropped."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    # channel-first while still uint8: strided float ops on a permuted view are several times slower
    chw = np.ascontiguousarray(np.moveaxis(pixels[..., :3], -1, -3))
    return torch.from_numpy(chw).float().div_(127.5).sub_(1.0)


def tensor_to_pixels(x: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1], on any device and of any dtype -> uint8 [..., H, W, 3], values beyond the
    range clipped."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()
