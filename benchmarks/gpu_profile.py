"""Where a benchmark's images spent the GPU: kernel and copy time per image, and the kernels that took it.

The profiler's device activity is device-wide, so kernels launched from worker threads count and
host work never does. Against the wall time it says whether the GPU idled or did more per image
than expected; the top kernels say what it did.
"""

from __future__ import annotations

import re
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
    ops = kernel_times(prof.key_averages())
    busy_ms = sum(ms for _, ms, _ in ops)
    return {"images": images, "wall_ms_per_image": 1e3 * wall / images, "op_ms_per_image": busy_ms / images,
            "classes": {c: ms / images for c, ms in kernel_classes(ops).items()},
            "top_ops": [{"op": k[:80], "ms_per_image": ms / images, "calls": n} for k, ms, n in ops[:top]]}


# first match wins: attention kernels are built from CUTLASS too, and Inductor's GEMM templates (max-autotune)
# are Triton kernels named `triton_tem_..._mm_...`; a kernel that only casts, or casts and concatenates or
# slices, is Inductor's `triton_<kind>_fused__to_copy[_t|_cat|...]_<n>` (in a train step mostly autocast's weight
# casts); fused elementwise work names its other ops, and a compiled AdamW update (model/master_adamw.py) is the
# one that fuses the first moment's lerp with the second's sqrt
KERNEL_CLASSES = (
    ("optimizer", re.compile(r"multi_tensor_apply|adam|^triton_\w+_fused_\w*_lerp_\w*_sqrt_", re.I)),
    ("attention", re.compile(r"sdpa|fmha|flash|attention|flex|cudnn::fusion", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|cublas|sm90_|^triton_tem_\w*mm", re.I)),
    ("cast", re.compile(r"^triton_[a-z]+_fused__to_copy(_t|_cat|_slice|_split_with_sizes)*_\d+$")),
    ("elementwise", re.compile(r"triton|elementwise|reduce|vectorized|unrolled|norm|softmax", re.I)),
    ("copy", re.compile(r"memcpy|memset", re.I)),
)


def kernel_classes(ops: list[tuple[str, float, int]]) -> dict[str, float]:
    """ms per class (``KERNEL_CLASSES``, else "other") of ``kernel_times`` rows, every class present."""
    totals = dict.fromkeys([name for name, _ in KERNEL_CLASSES] + ["other"], 0.0)
    for key, ms, _ in ops:
        totals[next((name for name, pattern in KERNEL_CLASSES if pattern.search(key)), "other")] += ms
    return totals


def kernel_times(events) -> list[tuple[str, float, int]]:
    """(name, ms, calls) of the GPU's kernels and copies, longest first. Only device rows, and none of
    the user annotations among them (``record_function`` ranges: ``Optimizer.step``, compiled regions),
    whose spans cover kernels that have rows of their own; an op's row likewise carries its kernels'
    time, so host rows never count here."""
    from torch.autograd import DeviceType

    rows = [(e.key, e.self_device_time_total / 1e3, e.count) for e in events
            if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    return sorted(rows, key=lambda r: -r[1])


def host_times(events) -> list[tuple[str, float, int]]:
    """(name, ms, calls) of the host's ops by their self time, longest first."""
    from torch.autograd import DeviceType

    rows = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events if e.device_type == DeviceType.CPU]
    return sorted(rows, key=lambda r: -r[1])


class StepProfile:
    """GPU kernels and host ops of a loop's steps after ``first`` through ``last``: call
    :meth:`at` after every step. Where a loop is slower than its kernels, the GPU time per step falls
    short of the wall time, and the host ops (self time: data waits, copies, launches) say where the
    rest went. Host ops are recorded too, so the window runs a little slower than the steps around it."""

    def __init__(self, device: torch.device, first: int, last: int, top: int = 12):
        from torch.profiler import ProfilerActivity, profile

        self.device, self.first, self.last, self.top = device, first, last, top
        cuda = [ProfilerActivity.CUDA] if device.type == "cuda" else []  # on a CPU: the host ops alone
        self.prof = profile(activities=[ProfilerActivity.CPU, *cuda])
        self.t0, self.result, self.started = 0.0, None, False

    def at(self, step: int) -> None:
        if step == self.first:
            self._sync()
            self.prof.start()
            self.t0, self.started = time.perf_counter(), True
        elif step == self.last and self.started:  # a loop resumed past ``first`` profiles nothing
            self._sync()
            wall = time.perf_counter() - self.t0
            self.prof.stop()
            self.result = self._summary(wall, self.last - self.first)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _summary(self, wall: float, steps: int) -> dict:
        events = self.prof.key_averages()
        gpu, host = kernel_times(events), host_times(events)

        def rows(ops):
            return [{"op": k[:80], "ms_per_step": round(ms / steps, 3), "calls": n} for k, ms, n in ops[:self.top]]

        cuda = self.device.type == "cuda"
        return {"steps": steps, "wall_ms_per_step": round(1e3 * wall / steps, 2),
                "gpu_ms_per_step": round(sum(ms for _, ms, _ in gpu) / steps, 2) if cuda else None,
                "top_gpu": rows(gpu) if cuda else [], "top_host": rows(host)}


def print_profile(label: str, prof: dict) -> None:
    print(f"profile {label}: {prof['op_ms_per_image']:.2f} ms of GPU time per image in "
          f"{prof['wall_ms_per_image']:.2f} ms wall")
    print("    by class, ms/image: " + ", ".join(f"{c} {ms:.2f}" for c, ms in prof["classes"].items()))
    for op in prof["top_ops"]:
        print(f"    {op['ms_per_image']:8.3f} ms/image {op['calls']:>6} calls  {op['op']}")


def print_step_profile(label: str, prof: dict | None) -> None:
    """A ``StepProfile`` result in the log: wall and GPU time a step, then the top GPU kernels and host ops."""
    if prof is None:  # a loop that never reached the profiled steps
        print(f"profile {label}: none")
        return
    gpu = "-" if prof["gpu_ms_per_step"] is None else f"{prof['gpu_ms_per_step']:.2f}"
    print(f"profile {label}: {prof['wall_ms_per_step']:.2f} ms a step wall, {gpu} ms of GPU kernels")
    for side in ("top_gpu", "top_host"):
        for op in prof[side]:
            print(f"    {side[4:]:4s} {op['ms_per_step']:8.3f} ms/step {op['calls']:>6} calls  {op['op']}")
