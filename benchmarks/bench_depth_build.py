"""Depth-Anything-V2 inside the One-Gen shard build (issue 3): does the Ray build keep the GPU busy?

    python benchmarks/bench_depth_build.py --json $OUT/depth_build.json      # one GPU, Ray installed
    python benchmarks/bench_depth_build.py --quick --device cpu               # smoke run (< 2 min)

bench_annotators.py times the depth stage in a pipeline of its own; this runs the same model as
``onegen shards depth`` runs it: a folder of JPEG photos -> Ray read tasks (decode, CPU) -> the
depth annotator as a GPU actor (``build.annotator_pools``, one whole shard per call) -> build-and-
write tasks (16-bit PNG depth, the conditioning image, tar). DA-V2-Large with seeded random
weights is saved to disk first, since the actor loads it by path as a user's checkpoint would.

Printed: the build's steady img/s (images of every shard after the first / time between the first
and the last shard landing: Ray start-up and the model load stay outside) and GPU busy (NVML) over
that window, against the same architecture's bare batched forward in this process afterwards, for
as long as the window lasted (bench_annotators' ``bare_forward``); their ratio is the issue's
e2e / bare. Random weights: speed only, the depth maps mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_annotators import bare_forward, depth_anything_config, depth_stage, synthetic_blobs  # noqa: E402
from benchmarks.bench_caption_build import (  # noqa: E402
    ShardClock, check_ray_gpu, photo_build_params, release_ray_gpu)
from benchmarks.gpu_busy import GpuBusy  # noqa: E402
from onegen.config import parse_params  # noqa: E402


def save_model(folder: Path, quick: bool) -> int:
    """Random DA-V2 weights in a model folder; returns the network's input size."""
    from transformers import DepthAnythingForDepthEstimation

    config, size, _ = depth_anything_config(quick)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return size


def write_photos(folder: Path, n: int, side: int) -> None:
    """``n`` JPEGs (64 distinct seeded images, repeated under new names)."""
    folder.mkdir(parents=True)
    blobs = synthetic_blobs(min(n, 64), (side, side), "jpeg")
    for i in range(n):
        (folder / f"{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and images (a CPU smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, help="photos in the folder (default 8 shards' worth; quick 3)")
    ap.add_argument("--batch", type=int, help="annotator batch (default 32, as bench_annotators; quick 4)")
    ap.add_argument("--shard", type=int, help="photos per shard (default 256; quick 8)")
    ap.add_argument("--image-size", type=int, help="photo side (default 512, as bench_annotators; quick 64)")
    ap.add_argument("--cpu-workers", type=int, default=max(2, (os.cpu_count() or 4) // 2))
    ap.add_argument("--object-store-mb", type=int, default=8192)
    ap.add_argument("--json", type=Path, default=Path("runs/bench_depth_build.json"))
    args = ap.parse_args()
    q, device = args.quick, torch.device(args.device)
    args.batch = args.batch or (4 if q else 32)
    args.shard = args.shard or (8 if q else 256)
    args.images = args.images or (3 if q else 8) * args.shard
    args.image_size = args.image_size or (64 if q else 512)
    if q:
        args.object_store_mb, args.cpu_workers = 256, 2

    from pipelines import shards

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        input_size = save_model(root / "depth", q)
        write_photos(root / "photos", args.images, args.image_size)
        depth = {"path": str(root / "depth"), "batch_size": args.batch, "input_size": input_size}
        params = parse_params(photo_build_params(root, "depth", "depth", depth, args, device, 0.0))
        check_ray_gpu(params, device)
        with GpuBusy(device) as busy, ShardClock(root / "reports" / "logs" / "shards_depth.jsonl") as clock:
            start = time.perf_counter()
            stats = shards.run(params, "depth")
            total_s = time.perf_counter() - start
        landed = clock.shards()
        if len(landed) < 2:
            raise SystemExit(f"only {len(landed)} shard(s) landed: raise --images for a steady window")
        if stats["failed"]:
            raise SystemExit(f"{stats['failed']} photos failed: see the shards' errors.jsonl")
        first, last = landed[0][0], landed[-1][0]
        steady = sum(n for _, n in landed[1:]) / (last - first)
        build = dict(name="ray shard build", images=args.images, shards=len(landed), batch=args.batch,
                     steady_img_per_s=round(steady, 2), steady_gpu_busy=busy.fraction_between(first, last),
                     total_img_per_s=round(args.images / total_s, 2), total_s=round(total_s, 1))
        print(build, flush=True)
        release_ray_gpu(device)

        stage = depth_stage(q, device, args.batch, (args.image_size, args.image_size), root)
        with GpuBusy(device) as bare_busy:
            bare = bare_forward(stage, device, iters=2 if q else 20, min_seconds=0 if q else last - first)
    ratio = build["steady_img_per_s"] / bare
    print(f"\ndepth ({stage.model}) in `onegen shards depth` on Ray: steady {steady:.1f} img/s, GPU busy "
          f"{build['steady_gpu_busy'] if build['steady_gpu_busy'] is not None else '-'}; bare forward {bare:.1f} img/s "
          f"(busy {bare_busy.fraction if bare_busy.fraction is not None else '-'}); ratio {ratio:.2f} (target 0.9)"
          + ("  [QUICK: tiny model, not a measurement]" if q else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "quick": q, "model": stage.model,
        "rows": [build, dict(name="bare forward", img_per_s=round(bare, 2), gpu_busy=bare_busy.fraction)],
        "ratio": round(ratio, 3), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
