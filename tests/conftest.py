"""Shared test helpers: small synthetic One-Gen samples (no renderer needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onegen import tasks
from onegen.camera import Camera, intrinsics_from_fov, look_at
from onegen.format import Provenance, Sample, View


def synthetic_sample(i: int, task: str = tasks.DEPTH2IMAGE, size: int = 16, source: str = "synth") -> Sample:
    """A deterministic sample for item ``i``: noisy image + 16-bit depth (+ rays for multiview)."""
    rng = np.random.default_rng(i)
    cam = Camera(intrinsics_from_fov(50, size, size), look_at([3, 1, 2], [0, 0, 0]), size, size)
    views = [View("image", rng.integers(0, 256, (size, size, 3), dtype=np.uint8), camera=cam)]
    if task == tasks.MULTIVIEW:
        views.append(View("image", rng.integers(0, 256, (size, size, 3), dtype=np.uint8), camera=cam))
        views += [View("rays", rng.standard_normal((16, size // 8, size // 8)).astype(np.float16), role="camera")
                  for _ in range(2)]
    elif task != tasks.TEXT2IMAGE:
        views.append(View("depth", rng.integers(1, 65535, (size, size), dtype=np.uint16), role="condition",
                          meta={"depth_scale": 0.001}))
    return Sample(key=f"{source}/item_{i:05d}", task=task, caption=f"caption {i}", views=views,
                  provenance=Provenance(source, f"item_{i:05d}", i))


@pytest.fixture
def make_sample():
    return synthetic_sample


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are op-overhead bound; a second OpenMP thread only adds barrier stalls on shared
    cores. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
