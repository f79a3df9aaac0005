"""The learning run's text2image step, where the host is the limit: Inductor's ways to launch it, side by side.

    python benchmarks/bench_step_overhead.py            # `small`, batch 256, 16x16 latents (128² renders, /8 VAE)
    python benchmarks/bench_step_overhead.py --quick    # a CPU smoke run of the default variant at toy sizes

Session 18's profile of `learn_procedural.py` (H100) had that step at 112.7 ms wall over 45.4 ms of GPU kernels:
~1500 kernel launches a step from 12 separately compiled blocks, each launched by Inductor's Python wrapper.
The step here is the trainer's (``model/train.py``): blocks compiled one by one as ``wrap_model`` does, bf16
autocast, ``flow_matching_loss``, gradient clipping, fused AdamW, the EMA. Variants, each on a fresh model of
the same seed, compiled afresh:

* flex BACKEND AUTO: the model's self-attention as it was until 2026-12-05 (under 128 queries Inductor then
  took its flex-decoding kernel);
* default: the trainer as it is;
* C++ wrapper: Inductor's ``cpp_wrapper``, the launches from compiled C++ instead of Python;
* CUDA graphs: ``mode="reduce-overhead"``, each block's kernels replayed as one graph.

Prints wall ms a step (steps queued back to back, one sync at the end), the GPU kernel time of a profiled
window and the loss after the timed steps (a variant that computes something else shows there). Random
weights and data: a timing, not a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_profile import StepProfile  # noqa: E402
from model import nextdit  # noqa: E402
from model.loss import flow_matching_loss  # noqa: E402
from model.nextdit import CONFIGS, NextDiT  # noqa: E402
from model.train import EMA  # noqa: E402

DEFAULT_FLEX = nextdit.FLEX_KERNEL_OPTIONS
VARIANTS = {
    "flex BACKEND AUTO (until 2026-12-05)": {"flex": {"BACKEND": "AUTO"}},
    "default (the trainer's)": {},
    "C++ wrapper": {"options": {"cpp_wrapper": True}},
    "CUDA graphs (reduce-overhead)": {"mode": "reduce-overhead"},
}


def run_variant(name: str, how: dict, size: str, batch: int, latent: int, text_len: int, steps: int,
                device: torch.device) -> dict:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    skips_before = counters["inductor"]["cudagraph_skips"]
    nextdit.FLEX_KERNEL_OPTIONS = how.get("flex", DEFAULT_FLEX)
    torch.manual_seed(0)
    model = NextDiT(CONFIGS[size]).to(device).train()
    for block in model.layers:  # as wrap_model compiles them
        block.forward = torch.compile(block.forward, mode=how.get("mode"), options=how.get("options"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ema = EMA(model.named_parameters(), 0.999)
    gen = torch.Generator(device).manual_seed(1)
    shape = (batch, 1, 16, latent, latent)
    latents, noise = (torch.randn(shape, device=device, generator=gen) for _ in range(2))
    text = torch.randn(batch, text_len, CONFIGS[size].caption_channels, device=device, generator=gen)
    mask = torch.arange(text_len, device=device)[None] < torch.randint(8, text_len + 1, (batch, 1), device=device,
                                                                       generator=gen)
    sigmas = torch.rand(batch, 1, device=device, generator=gen)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    graphs = how.get("mode") == "reduce-overhead"

    def step(i: int) -> torch.Tensor:
        if graphs:  # a new iteration: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss, _ = flow_matching_loss(model, latents, text, mask, sigmas, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(i)
        return loss.detach().clone()

    t0 = time.perf_counter()
    for i in range(5):  # compiles, then warm
        step(i)
    sync(device)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(5 + i)
    sync(device)
    wall = (time.perf_counter() - t0) / steps
    row = {"name": name, "ms_per_step": round(wall * 1e3, 2), "samples_per_s": round(batch / wall, 1),
           "loss": round(float(loss), 5), "warmup_s": round(compile_s, 1), "gpu_ms_per_step": None,
           # graphs Inductor declined to capture run as plain compiled code: a CUDA-graphs row must show 0 here
           "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips_before}
    try:  # the timing above stands even where the profiled window fails
        prof = StepProfile(device, 0, 5, top=6)
        for i in range(6):
            prof.at(i)
            if i < 5:
                step(5 + steps + i)
        row["gpu_ms_per_step"] = prof.result["gpu_ms_per_step"]
    except Exception as e:  # noqa: BLE001
        print(f"{name}: profiled window failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
    gpu = "-" if row["gpu_ms_per_step"] is None else f"{row['gpu_ms_per_step']:.2f}"
    print(f"{name:40s} {row['ms_per_step']:8.2f} ms a step ({row['samples_per_s']:.0f} samples/s), GPU kernels "
          f"{gpu} ms, loss {row['loss']:.5f}, warm-up {row['warmup_s']:.0f} s, cudagraph skips "
          f"{row['cudagraph_skips']}", flush=True)
    return row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny, batch 4, the default variant: a CPU smoke run")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        # the profiler's CUDA side must be up before any graph is captured, or a profiled window over graph
        # replays can lose their kernels or fail (pytorch/pytorch#100441)
        with torch.profiler.profile():
            pass
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}")
    if args.quick:
        size, batch, latent, text_len, names = "tiny", 4, 8, 16, ["default (the trainer's)"]
    else:
        size, batch, latent, text_len = "small", 256, 16, 64  # the trainer pads captions to a multiple of 64
    print(f"`{size}`, batch {batch}, {latent}x{latent} latents ({(latent // 2) ** 2} tokens), {text_len} caption "
          f"tokens, {device}", flush=True)
    rows = []
    for name in names:
        try:
            rows.append(run_variant(name, VARIANTS[name], size, batch, latent, text_len, args.steps, device))
        except Exception as e:  # one variant this build cannot run leaves the others standing
            print(f"{name:40s} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
    nextdit.FLEX_KERNEL_OPTIONS = DEFAULT_FLEX
    base = next((r for r in rows if r["name"] == "default (the trainer's)"), None)
    for r in rows:
        if base and r is not base:
            print(f"{r['name']:40s} {base['ms_per_step'] / r['ms_per_step']:.2f}x the default's steps a second")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
