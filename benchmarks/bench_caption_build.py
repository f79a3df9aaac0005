"""The captioner inside the One-Gen shard build (issue 6): does the Ray build keep the GPU busy?

    python benchmarks/bench_caption_build.py --json $OUT/caption_build.json      # one GPU, Ray installed
    python benchmarks/bench_caption_build.py --quick --device cpu                 # smoke run (< 2 min)

The job is bench_captioner.py's (LLaVA-NeXT-7B, seeded random weights, 672² photos, 150 new tokens
each, greedy), now run as ``onegen shards text2image`` runs it: an image folder of JPEGs ->
Ray read tasks (decode, CPU) -> the captioner as a GPU actor pool (``build.annotator_pools``) ->
build-and-write tasks. The model is saved to disk first, since an actor loads it by path as a user's
checkpoint would, with its EOS logit zeroed so every image gets its 150 tokens (the naive loop
forces them instead). Random weights never pass the caption validation, so every item ends in the
shard's ``errors.jsonl`` (``max_failure_fraction: 1``): the GPU work is the real job, the shards
are empty, and an item that fails for any other reason (out of memory, say) stops the benchmark. Printed beside the naive ``generate`` loop (batch 8) on the same images, in this
process after the build has given the GPU back:

* steady img/s: images of every shard after the first / time between the first and the last shard
  landing (Ray start-up and the actor's model load stay outside), and the GPU-busy fraction (NVML)
  over that window; total img/s over the whole stage for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as bench_captioner

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_captioner import (  # noqa: E402
    llava_next_config, llava_next_processor, naive_generate, naive_prompt)
from benchmarks.gpu_busy import GpuBusy  # noqa: E402
from onegen.config import CaptionerConfig, load_profile, parse_params  # noqa: E402


def save_model(folder: Path, quick: bool, dtype: torch.dtype) -> None:
    from transformers import LlavaNextForConditionalGeneration

    config = llava_next_config(quick)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu"):
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=dtype)
    with torch.no_grad():  # EOS logit 0: random weights never stop early, so every image gets all its new tokens
        model.lm_head.weight[config.text_config.eos_token_id].zero_()
    model.save_pretrained(folder)
    llava_next_processor(config, quick).save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the actor loads its own copy: leave it the whole GPU


def write_photos(folder: Path, n: int, size: int) -> list[np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.jpg", quality=90)
    return images


class ShardClock:
    """When each shard row lands in the stage's JSONL log (polled): the build's own progress."""

    def __init__(self, log: Path):
        self.log, self.rows, self.stop = log, [], threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.1):
            self._read()

    def _read(self) -> None:
        text = self.log.read_text() if self.log.is_file() else ""
        complete = text[: text.rfind("\n") + 1].splitlines()  # a row still being written waits for the next poll
        for line in complete[len(self.rows):]:
            self.rows.append((time.perf_counter(), json.loads(line)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._read()

    def shards(self) -> list[tuple[float, int]]:
        return [(t, row["count"] + row.get("failed", 0)) for t, row in self.rows if "shard" in row]


def check_ray_gpu(params, device: torch.device) -> None:
    """Ray must see the GPU, or the captioner actor (num_gpus=1) waits forever for a place."""
    import ray

    from pipelines.ray_build import ensure_ray

    ensure_ray(params.build)
    if device.type == "cuda" and ray.cluster_resources().get("GPU", 0) < 1:
        raise SystemExit(f"Ray sees no GPU ({ray.cluster_resources()}): the captioner actor could never start")


def check_errors(shards_dir: Path) -> None:
    """Every item should fail as random weights do (a rejected caption); anything else (out of memory,
    a compile error, retried item by item) would make the figure meaningless."""
    for path in sorted(shards_dir.glob("shard-*.errors.jsonl")):
        for line in path.read_text().splitlines():
            reason = json.loads(line).get("reason", "")
            if "VLM answer rejected" not in reason:
                raise SystemExit(f"{path.name}: an item failed for another reason than random weights: {reason}")


def release_ray_gpu(device: torch.device) -> None:
    """Shut Ray down and wait until its actor's memory is back, before the baseline loads a model."""
    import ray

    ray.shutdown()
    if device.type != "cuda":
        return
    deadline = time.time() + 120
    while time.time() < deadline:
        free, total = torch.cuda.mem_get_info()
        if free > 0.8 * total:
            return
        time.sleep(1)
    raise SystemExit(f"the Ray actor's GPU memory did not come back ({free / 2**30:.1f} GiB free)")


def photo_build_params(root: Path, family: str, annotator: str, annotator_cfg: dict, args, device: torch.device,
                       max_failure_fraction: float) -> dict:
    """Params of a one-family build from ``root/photos`` on Ray, ``annotator`` as one GPU actor."""
    d = load_profile("default").model_dump(mode="json")
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(enabled=False, resolution=args.image_size)  # photos are cropped and resized to this
    d["sources"] = {"photos": {"kind": "image_folder", "path": str(root / "photos")}}
    d["shards"]["max_samples_per_shard"] = args.shard
    d["shards"]["families"] = {f: {"enabled": f == family, "sources": ["photos"] if f == family else [],
                                   "max_samples": None} for f in d["shards"]["families"]}
    d["annotators"]["device"] = device.type
    d["annotators"][annotator] = annotator_cfg
    gpu = 1.0 if device.type == "cuda" else 0.0
    d["build"].update(executor="ray", cpu_workers=args.cpu_workers, num_cpus=args.cpu_workers + 2,
                      object_store_mb=args.object_store_mb, max_failure_fraction=max_failure_fraction,
                      annotator_pools={annotator: {"concurrency": 1, "num_gpus": gpu, "num_cpus": 1}})
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and images (a CPU smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, help="photos in the folder (default 6 shards' worth; quick 12)")
    ap.add_argument("--batch", type=int, help="captioner batch (default CaptionerConfig's for the settings below; quick 4)")
    ap.add_argument("--quantize", choices=["none", "fp8"], default="none", help="as bench_captioner.py (CUDA)")
    ap.add_argument("--kv-cache", choices=["model", "fp8"], default="model", help="as bench_captioner.py (CUDA)")
    ap.add_argument("--shard", type=int, help="items per shard (default 2 batches)")
    ap.add_argument("--new-tokens", type=int, default=150)
    ap.add_argument("--baseline-images", type=int, help="images of the naive loop (default 16; quick 8)")
    ap.add_argument("--cpu-workers", type=int, default=max(2, (os.cpu_count() or 4) // 2))
    ap.add_argument("--object-store-mb", type=int, default=8192)
    ap.add_argument("--json", type=Path, default=Path("runs/bench_caption_build.json"))
    args = ap.parse_args()
    q, device = args.quick, torch.device(args.device)
    captioner = {"retries": 0, "max_new_tokens": args.new_tokens, "quantize": args.quantize, "kv_cache": args.kv_cache}
    args.batch = args.batch or (4 if q else CaptionerConfig(**captioner).batch_size)
    args.shard = args.shard or 2 * args.batch
    args.images = args.images or (3 * args.shard if q else 6 * args.shard)
    args.baseline_images = args.baseline_images or (8 if q else 16)
    size = args.image_size = 64 if q else 672
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if q:
        args.object_store_mb, args.cpu_workers = 256, 2

    from pipelines import shards

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        save_model(root / "vlm", q, dtype)
        images = write_photos(root / "photos", args.images, size)
        print(f"model and {args.images} photos on disk in {time.perf_counter() - t0:.0f} s", flush=True)
        captioner = {**captioner, "path": str(root / "vlm"), "batch_size": args.batch}
        # every item fails caption validation, as random weights must: max_failure_fraction 1
        params = parse_params(photo_build_params(root, "text2image", "captioner", captioner, args, device, 1.0))
        check_ray_gpu(params, device)
        log = root / "reports" / "logs" / "shards_text2image.jsonl"
        with GpuBusy(device) as busy, ShardClock(log) as clock:
            start = time.perf_counter()
            stats = shards.run(params, "text2image")
            total_s = time.perf_counter() - start
        landed = clock.shards()
        if len(landed) < 2:
            raise SystemExit(f"only {len(landed)} shard(s) landed: raise --images for a steady window")
        first, last = landed[0][0], landed[-1][0]
        steady_images = sum(n for _, n in landed[1:])
        build = dict(name="ray shard build", images=args.images, shards=len(landed), batch=args.batch,
                     quantize=args.quantize, kv_cache=args.kv_cache,
                     steady_img_per_s=round(steady_images / (last - first), 3),
                     steady_gpu_busy=busy.fraction_between(first, last),
                     total_img_per_s=round(args.images / total_s, 3), total_s=round(total_s, 1),
                     failed=stats["failed"])
        print(build, flush=True)
        check_errors(root / "data" / "shards" / "text2image")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": [build], "partial": True}, indent=1) + "\n")  # if the baseline dies
        release_ray_gpu(device)

        from transformers import AutoProcessor, LlavaNextForConditionalGeneration

        model = LlavaNextForConditionalGeneration.from_pretrained(root / "vlm", dtype=dtype, local_files_only=True).to(device).eval()
        processor = AutoProcessor.from_pretrained(root / "vlm", local_files_only=True)
        prompt = naive_prompt(processor)
        naive_generate(model, processor, prompt, images[:8], 8, args.new_tokens)  # warm-up
        with GpuBusy(device) as naive_busy:
            t0 = time.perf_counter()
            naive_generate(model, processor, prompt, images[: args.baseline_images], 8, args.new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            naive_s = time.perf_counter() - t0
        naive = dict(name="naive generate", images=args.baseline_images, batch=8,
                     img_per_s=round(args.baseline_images / naive_s, 3), gpu_busy=naive_busy.fraction)
        print(naive, flush=True)

    ratio = build["steady_img_per_s"] / naive["img_per_s"]
    print(f"\nray build (steady) {build['steady_img_per_s']:.2f} img/s, GPU busy "
          f"{build['steady_gpu_busy'] if build['steady_gpu_busy'] is not None else '-'}; naive generate "
          f"{naive['img_per_s']:.2f} img/s; ratio {ratio:.2f}x" + ("  [QUICK: tiny model, not a measurement]" if q else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "quick": q,
        "job": {"image_size": size, "new_tokens": args.new_tokens, "model": "llava-next-7b random" if not q else "tiny"},
        "rows": [build, naive], "ratio": round(ratio, 2),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
