"""GPU-busy fraction (and SM clock) for the benchmarks: NVML sampled while a region runs.

NVML's utilisation is the share of time at least one kernel was running, averaged by the driver over
its own window (1/6 s to 1 s), so regions of a few seconds or more read true; quick smoke runs do not.
Beside images/s it tells whether a pipeline starves the GPU (host-bound) or the GPU does more work
than the bare model.
"""

from __future__ import annotations

import threading
import time

import torch


class GpuBusy:
    """Mean NVML utilisation (the share of time a kernel was running) over a region; None off CUDA.

    Sampled every 50 ms from a thread; it says how much of the wall time the GPU idled while the host
    prepared inputs or waited, which img/s alone does not."""

    def __init__(self, device: torch.device):
        self.handle, self.samples, self.stop = None, [], threading.Event()
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                # By UUID: NVML numbers every GPU of the host, whatever CUDA_VISIBLE_DEVICES shows torch.
                uuid = torch.cuda.get_device_properties(device.index or torch.cuda.current_device()).uuid
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
                try:  # some virtual and MIG devices report no clock: keep the busy figure then
                    pynvml.nvmlDeviceGetClockInfo(self.handle, pynvml.NVML_CLOCK_SM)
                    clock = lambda: pynvml.nvmlDeviceGetClockInfo(self.handle, pynvml.NVML_CLOCK_SM)  # noqa: E731
                except pynvml.NVMLError:
                    clock = lambda: None  # noqa: E731
                self.read = lambda: (pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu, clock())
            except Exception as e:  # noqa: BLE001 - the figure is optional, the timing is not
                print(f"no GPU-busy figure: {e}", flush=True)

    def __enter__(self):
        if self.handle is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append((time.perf_counter(), self.read()))

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.stop.set()
            self.thread.join()

    @property
    def fraction(self) -> float | None:
        return self.fraction_between(float("-inf"), float("inf"))

    def fraction_between(self, start: float, end: float) -> float | None:
        """The mean over samples taken between two ``time.perf_counter()`` readings."""
        window = [u for t, (u, _) in self.samples if start <= t <= end]
        return round(sum(window) / len(window) / 100, 3) if window else None

    @property
    def sm_clock_mhz(self) -> int | None:
        """Mean SM clock: a long run that the power limit slows reads lower than a short burst, so two
        regions' speeds compare only at like clocks."""
        clocks = [c for _, (_, c) in self.samples if c is not None]
        return round(sum(clocks) / len(clocks)) if clocks else None
