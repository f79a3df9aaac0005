"""Renderer and shard-reader throughput, each against a reference run in the same process.

    python benchmarks/bench_world.py [--views 400] [--size 128] [--samples 512]

Prints: procedural renderer views/s at the given size (one thread); then, over the same
shards, samples/s and MB/s of (a) a plain ``tarfile`` read of every member (the reference),
(b) our safe member grouping (``iter_tar_samples``), (c) plain ``webdataset`` decoding the
same members to tensors (a decode reference), (d) our full reader to tensors (PNG decode, depth
normalisation, validation), with ratios against (a).
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from onegen.config import WorldConfig  # noqa: E402
from onegen.shards.reader import ReadReport, iter_tar_samples, sample_stream, shard_urls  # noqa: E402
from onegen.shards.writer import ShardLimits, build_shards  # noqa: E402
from onegen.sources import procedural, world_records  # noqa: E402
from onegen.families import Ref, build  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def plain_tarfile(urls: list[str]) -> int:
    members = 0
    for url in urls:
        with tarfile.open(url, "r|") as tf:
            for info in tf:
                tf.extractfile(info).read()
                members += 1
    return members


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=400)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)

    vps = procedural.render_throughput(n_views=args.views, size=args.size)
    print(f"renderer: {vps:.1f} views/s at {args.size}x{args.size} (1 thread, {args.views} views)")

    cfg = WorldConfig(scenes=max(1, args.samples // 4), views_per_scene=4, id_groups=0, resolution=args.size)
    world = [world_records.make_record(cfg, 0, i) for i in range(cfg.scenes)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "depth"
        n = cfg.scenes * 4
        build_shards(out, n, lambda i: build("depth", Ref("world", i // 4, i % 4), world[i // 4], 0, i),
                     ShardLimits(128, 1 << 30), "bench", desc="bench shards")
        urls = shard_urls(out)
        mb = sum(os.path.getsize(u) for u in urls) / 2**20
        _, t_ref = timed(lambda: plain_tarfile(urls))
        _, t_grp = timed(lambda: sum(1 for u in urls for _ in iter_tar_samples(u, ReadReport())))
        _, t_wds = timed(lambda: sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode("torchrgb")))
        _, t_full = timed(lambda: sum(1 for _ in sample_stream(urls, ReadReport())))
        print(f"shards: {n} depth samples, {len(urls)} shards, {mb:.1f} MB")
        for name, t in (("plain tarfile (reference)", t_ref), ("iter_tar_samples", t_grp),
                        ("webdataset .decode(torchrgb)", t_wds), ("reader -> tensors", t_full)):
            print(f"  {name:28s} {n / t:9.1f} samples/s {mb / t:8.1f} MB/s  ratio vs tarfile {t_ref / t:.3f}")


if __name__ == "__main__":
    main()
