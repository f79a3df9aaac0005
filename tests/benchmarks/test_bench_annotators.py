"""bench_annotators' pipeline: every e2e annotator call comes from a thread that has called it before."""

import importlib.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def load_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_annotators.py"
    spec = importlib.util.spec_from_file_location("bench_annotators", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_e2e_calls_come_only_from_threads_warmed_once_each(tmp_path):
    bench = load_benchmark()
    calls: list[tuple[int, int]] = []  # (thread, images)
    lock = threading.Lock()

    def annotate(images):
        with lock:
            calls.append((threading.get_ident(), len(images)))
        return [im.mean() for im in images]

    stage = bench.Stage("fake", "mean colour", 4, annotate, lambda i, out: {"__key__": f"{i:04d}", "txt": b"%f" % out},
                        lambda: None)
    blobs = bench.synthetic_blobs(6, (16, 24), "png")
    runners = bench.warm_runners(stage, blobs, 3)
    warmed = [t for t, _ in calls]
    assert len(warmed) == len(set(warmed)) == 3  # one call in each of the three threads
    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(2) as encoders:
        rate, size, _ = bench.end_to_end(stage, blobs, 22, (decoders, encoders), runners, 3, tmp_path / "x.tar",
                                         torch.device("cpu"))
    runners.shutdown()
    timed = calls[3:]
    assert sum(n for _, n in timed) == 22 and {t for t, _ in timed} <= set(warmed)
    assert rate > 0 and size == (tmp_path / "x.tar").stat().st_size
    assert len(bench.tarfile.open(tmp_path / "x.tar").getnames()) == 22
