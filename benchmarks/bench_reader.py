"""What the shard reader's own ``.npy`` decoder saves against ``np.load``, member by member and in the
trainer's batch stream.

    python benchmarks/bench_reader.py [--families text2image depth multiview] [--batches 40]

Reads the latent shards ``dvc repro`` wrote (``data/latents/<family>``: latents and prompt features,
all ``.npy``), in the same process:

* members: every ``.npy`` member of the first ``--samples`` samples of each family, decoded by
  ``np.load`` and by ``onegen.format.decode_member``, best of 5 passes each;
* stream: ``model.train.slot_batches`` (shuffle, task-group mix, shape buckets, collation) for
  ``--batches`` batches of ``--batch``, with ``np.load`` swapped in as the reference, then ours,
  three rounds alternating.

Prints µs per member, samples/s and the ratios. CPU figures of this machine, not of a GPU host.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.train import slot_batches  # noqa: E402
from onegen import format as fmt  # noqa: E402
from onegen.shards.reader import ReadReport, iter_tar_samples, shard_urls  # noqa: E402


def reference_decode(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def best_of(passes: int, fn) -> float:
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stream_rate(dirs: list[Path], batch: int, batches: int) -> float:
    """Samples/s of the trainer's batch stream, the first batch (shuffle buffer filling) left out."""
    stream = slot_batches(dict.fromkeys(dirs), batch, seed=0, shuffle=256, report=ReadReport())
    next(stream)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batch * batches / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/latents"))
    ap.add_argument("--families", nargs="+", default=["text2image", "depth", "multiview"])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    dirs = [args.root / f for f in args.families]
    if missing := [str(d) for d in dirs if not any(d.glob("shard-*.tar"))]:
        sys.exit(f"no latent shards in {', '.join(missing)}: run `dvc repro` (its latents stages) first")

    members = [data for d in dirs for raw in islice((r for u in shard_urls(d) for r in iter_tar_samples(u, ReadReport())),
                                                    args.samples)
               for name, data in raw.items() if name.endswith(".npy")]
    ref = best_of(5, lambda: [reference_decode(m) for m in members]) / len(members)
    ours = best_of(5, lambda: [fmt.decode_member("bench", "x.npy", m) for m in members]) / len(members)
    print(f"members: {len(members)} .npy, {np.mean([len(m) for m in members]) / 1024:.1f} KiB mean; "
          f"np.load {ref * 1e6:.1f} µs, ours {ours * 1e6:.1f} µs: {ref / ours:.2f}x", flush=True)

    ours_decode, rates = fmt._decode_npy, {"np.load": [], "ours": []}
    try:
        for _ in range(3):
            for name, decoder in (("np.load", reference_decode), ("ours", ours_decode)):
                fmt._decode_npy = decoder
                rates[name].append(stream_rate(dirs, args.batch, args.batches))
    finally:
        fmt._decode_npy = ours_decode
    ref_rate, our_rate = np.median(rates["np.load"]), np.median(rates["ours"])
    print(f"stream ({args.batches} batches of {args.batch}, median of 3): np.load {ref_rate:.0f} samples/s, "
          f"ours {our_rate:.0f} samples/s: {our_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
