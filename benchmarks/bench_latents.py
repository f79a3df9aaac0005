"""What precomputed latents save: the trainer's input cost per sample, encoded live vs read back.

    python benchmarks/bench_latents.py [--resolution 256] [--scenes 8] [--device cuda]

Builds a small depth family from the procedural world, then times, in the same process:

* live:    reader -> tensors -> VAE encode (what every training step does without latents);
* latents: reader -> precomputed ``latent`` views (``onegen latents``; encoding paid once).

The VAE is SD3's architecture (16 channels, 128-256-512-512 blocks, 2 layers per block) with
seeded random weights: speed only, its latents are not a result. Prints samples/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.vae import LatentCodec  # noqa: E402
from model.views import batch_to_latents  # noqa: E402
from onegen.config import Params, load_profile  # noqa: E402
from onegen.shards.reader import bucket_batches, sample_stream, shard_urls  # noqa: E402
from onegen.shards.reader import ReadReport  # noqa: E402
from pipelines import latents, shards, world  # noqa: E402

SD3_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
               scaling_factor=1.5305, shift_factor=0.0609)


def timed_pass(directory: Path, codec: LatentCodec, batch: int) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for b in bucket_batches(sample_stream(shard_urls(directory), ReadReport()), batch):
        z = batch_to_latents(b, codec)
        n += z.shape[0]
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        AutoencoderKL(**SD3_VAE).save_pretrained(root / "vae")
        d = load_profile("default").model_dump(mode="json")
        d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
        d["world"].update(scenes=args.scenes, id_groups=0, resolution=args.resolution)
        d["model"]["vae"] = str(root / "vae")
        d["latents"]["batch_size"] = args.batch
        params = Params.model_validate(d)
        world.run(params)
        shards.run(params, "depth")
        t0 = time.perf_counter()
        latents.run(params, "depth")
        precompute = time.perf_counter() - t0
        codec = LatentCodec.load(params.model.vae, device=args.device)
        timed_pass(shards.family_dir(params, "depth"), codec, args.batch)  # warm-up (allocator, kernels)
        n_live, t_live = timed_pass(shards.family_dir(params, "depth"), codec, args.batch)
        n_lat, t_lat = timed_pass(latents.latents_dir(params, "depth"), codec, args.batch)
    print(f"depth family, {args.resolution}^2, {n_live} samples (2 views each), device {args.device}")
    print(f"{'input path':<28}{'samples/s':>12}")
    print(f"{'live VAE encode':<28}{n_live / t_live:>12.1f}")
    print(f"{'precomputed latents':<28}{n_lat / t_lat:>12.1f}")
    print(f"ratio (latents / live): {(n_lat / t_lat) / (n_live / t_live):.1f}x; "
          f"one-off precompute took {precompute:.1f} s")


if __name__ == "__main__":
    main()
