"""Getting images onto the accelerator in batches: what every model annotator does first.

Images arrive as HxWx3 uint8 RGB numpy arrays of any size. Same-size images travel together:
one pinned host buffer, one non-blocking copy, one resize kernel, so the decode and encode
threads of a build keep the GPU busy. A result never depends on which other images shared
its batch (beyond float noise): batches are formed by shape only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from onegen.annotators.base import AnnotatorError

Amp = Literal["off", "bf16", "fp16"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: list[np.ndarray], who: str) -> None:
    """One-line error naming the first image that is not HxWx3 uint8."""
    for i, im in enumerate(images):
        ok = isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
        if not ok or min(im.shape[:2]) < 1:
            got = f"{im.dtype} {list(im.shape)}" if isinstance(im, np.ndarray) else type(im).__name__
            raise AnnotatorError(f"{who}: image {i}: expected an HxWx3 uint8 RGB array, got {got}")


def shape_batches(images: list[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices of same-size images, at most ``batch_size`` per batch, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[:2], []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s : s + batch_size]


def upload(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-size HxWx3 uint8 images -> Bx3xHxW float32 in [0, 1] on ``device``."""
    h, w = images[0].shape[:2]
    pinned = device.type == "cuda"
    host = torch.empty((len(images), h, w, 3), dtype=torch.uint8, pin_memory=pinned)
    view = host.numpy()
    for i, im in enumerate(images):
        view[i] = im
    return host.to(device, non_blocking=pinned).permute(0, 3, 1, 2).float().div_(255.0)


def autocast(device: torch.device, amp: Amp):
    """Mixed precision on CUDA only: CPU results stay float32 (and bit-stable for tests)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    enabled = device.type == "cuda" and dtype is not None
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=enabled)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def processor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of a transformers model folder's image processor; ImageNet's when it has none.

    Only the constants are taken: the processor's own CPU path is per-image and slow.
    """
    cfg_file = Path(folder) / "preprocessor_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    return tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std", IMAGENET_STD))


class HostCopy:
    """Device tensors on their way to the host: queued behind the work that makes them, into pinned
    buffers, without blocking the caller; ``wait()`` returns them as numpy arrays.

    An annotator queues its next batch before it waits for this one, so the device never idles
    while the host turns a finished batch into outputs."""

    def __init__(self, *tensors: torch.Tensor):
        self.event = None
        if tensors[0].device.type == "cuda":
            self.host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                         for t in tensors]
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(tensors[0].device))  # the copies' device, not the current one
        else:
            self.host = [t.cpu() for t in tensors]

    def wait(self) -> list[np.ndarray]:
        if self.event is None:
            return [h.numpy() for h in self.host]
        self.event.synchronize()
        return [h.numpy().copy() for h in self.host]  # the pinned buffers go back to torch's cache now

