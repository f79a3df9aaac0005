"""bench_annotators' pipeline: every e2e annotator call comes from a thread that has called it before."""

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from tests.benchmarks.scripts import load_script


def test_e2e_calls_come_only_from_threads_warmed_once_each(tmp_path):
    bench = load_script("bench_annotators")
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
