"""Where a benchmark's images spent the GPU: kernel and copy time per image, and the kernels that took it.

The profiler's device activity is device-wide, so kernels launched from worker threads count and
host work never does. Against the wall time it says whether the GPU idled or did more per image
than expected; the top kernels say what it did.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def op_profile(run: Callable[[], int], device: torch.device, top: int = 6) -> dict:
    """Profile ``run()``, which returns how many images it handled."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        images = run()
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    ops = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()]
    ops.sort(key=lambda o: -o[1])
    busy_ms = sum(ms for _, ms, _ in ops)
    return {"images": images, "wall_ms_per_image": 1e3 * wall / images, "op_ms_per_image": busy_ms / images,
            "top_ops": [{"op": k[:80], "ms_per_image": ms / images, "calls": n} for k, ms, n in ops[:top]]}


def print_profile(label: str, prof: dict) -> None:
    print(f"profile {label}: {prof['op_ms_per_image']:.2f} ms of GPU time per image in "
          f"{prof['wall_ms_per_image']:.2f} ms wall")
    for op in prof["top_ops"]:
        print(f"    {op['ms_per_image']:8.3f} ms/image {op['calls']:>6} calls  {op['op']}")
