"""Items computed ahead in worker processes and handed out in order: ``build_shards``'s
``make_sample`` when making an item costs more than writing it (the procedural renderer).

``build_shards`` asks for items by increasing index and jumps forward only past finished shards
on a resume, so a window of submitted indices from the last one asked serves it; a jump drops the
window and starts a new one there. Each item is a pure function of its index (seeded per item),
so the shards are the bytes a one-process build writes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

MIN_ITEMS_PER_WORKER = 8  # below this, starting the worker processes costs more than they save


def spawn_can_start() -> bool:
    """A spawned worker re-runs ``__main__`` from its file; a script piped to ``python -`` has none
    (its ``__file__`` is ``<stdin>``), so there the items are made in this process instead."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(os.path.join(multiprocessing.process.ORIGINAL_DIR or "", path))


class Ahead(Generic[T]):
    """``make(i)`` for ``i < n``, up to ``window`` items ahead in ``workers`` processes; a context manager.

    ``make`` must pickle (a module-level function or a ``functools.partial`` of one); ``setting`` names
    the params key of ``workers`` for the error when the workers die. With one
    worker, too few items to pay for starting processes, or no ``__main__`` file for a worker to
    start from, it is called in this process."""

    def __init__(self, make: Callable[[int], T], n: int, workers: int, window_per_worker: int = 4,
                 setting: str = "build.cpu_workers"):
        self.make, self.n, self.workers, self.setting = make, n, workers, setting
        self.pool = None
        if workers > 1 and n >= workers * MIN_ITEMS_PER_WORKER and spawn_can_start():
            # spawn: never fork a process that may hold CUDA or Ray state
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.window = workers * window_per_worker
        self.ahead: deque[Future] = deque()
        self.next = self.submitted = -1

    def __call__(self, i: int) -> T:
        if self.pool is None:
            return self.make(i)
        if i != self.next:  # the first call, or a resume jumped past finished shards
            for f in self.ahead:
                f.cancel()
            self.ahead.clear()
            self.next = self.submitted = i
        while self.submitted < min(self.n, self.next + self.window):
            self.ahead.append(self.pool.submit(self.make, self.submitted))
            self.submitted += 1
        self.next += 1
        try:
            return self.ahead.popleft().result()
        except BrokenProcessPool:
            raise RuntimeError(f"the {self.workers} worker processes making items died (out of memory, or run from a "
                               f"script without an `if __name__ == \"__main__\":` guard); {self.setting}: 1 makes "
                               f"them in this process") from None

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
