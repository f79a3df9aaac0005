"""Training-step throughput: our Next-DiT against diffusers' Lumina2 on the same job, same process.

    python benchmarks/bench_train_step.py                 # the issue's job: 512², batch 4, bf16
    python benchmarks/bench_train_step.py --quick         # a CPU smoke run at toy sizes
    python benchmarks/bench_train_step.py --modes compile --rows 8view,2.8b   # chosen rows only (each compiles ~2 min)

For each model, eager and ``torch.compile``: one training step = forward, MSE loss, backward,
fused AdamW step, under bf16 autocast with fp32 master weights. Prints img/s, TFLOP/s (FLOPs
counted once per model with ``torch.utils.flop_counter.FlopCounterMode`` on a real step, not
by formula), MFU against the GPU's dense bf16 peak, peak memory, and the ratio of ours to
compiled diffusers. Extra rows: our model without the logit soft-cap (what flex attention costs
against SDPA), with the cap on flex attention (the model's other kernel; the main rows run the model's "auto",
cuDNN's fused kernel where nvidia-cudnn-frontend is installed), on a 2-view 256² batch, an 8-view multiview 256²
batch, the ``onediffusion-2.8b`` config, and ours with bf16 linear weights and their fp32 masters in the optimizer
(``train.master_weights``, model/master_adamw.py: autocast's arithmetic without its per-step weight and gradient
casts), and that row with what ``onegen train`` adds to its step on a GPU (gradient clipping before the update,
the fp32 EMA of the masters after it, which the other rows leave out as diffusers has neither): what those two cost
a step. Its optimizer stays the master row's (one group, decay 0.01), where the trainer's ``make_optimizer``
splits the undecayed parameters off, so that the ratio of the two rows is the clipping and the EMA alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_profile import op_profile, print_profile  # noqa: E402
from model.master_adamw import MasterWeightAdamW  # noqa: E402
from model.nextdit import CONFIGS, NextDiT, attention_kernel, linear_parameters  # noqa: E402
from model.train import EMA, clip_gradients  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def ours_step_fn(model, views: int, latent: int, batch: int, text_len: int, device):
    x = torch.randn(batch, views, 16, latent, latent, device=device)
    t = torch.rand(batch, views, device=device) * 1000
    text = torch.randn(batch, text_len, model.config.caption_channels, device=device)
    mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
    target = torch.randn_like(x)
    return lambda m: F.mse_loss(m(x, t, text, mask).float(), target)


def lumina_step_fn(model, latent: int, batch: int, text_len: int, device):
    x = torch.randn(batch, 16, latent, latent, device=device)
    t = torch.rand(batch, device=device)
    text = torch.randn(batch, text_len, model.config.cap_feat_dim, device=device)
    mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
    target = torch.randn_like(x)
    return lambda m: F.mse_loss(m(x, t, text, mask, return_dict=False)[0].float(), target)


def reference_model_class(path: str) -> type:
    """``NextDiT`` from another version of model/nextdit.py (``git show REV:model/nextdit.py > FILE``), to time a
    change against the code before it in the same process; it shares this checkout's other modules."""
    spec = importlib.util.spec_from_file_location("reference_nextdit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.NextDiT


def count_flops(model, loss_fn, autocast) -> int:
    """FLOPs of one forward+backward, counted on the eager model. Our flex-attention kernel is a
    higher-order op the counter cannot see, so the count uses the exact math attention path,
    which performs the same matrix products."""
    backend = getattr(model, "attn_backend", None)
    if backend is not None:
        model.attn_backend = "math"
    counter = FlopCounterMode(display=False)
    with counter, autocast:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    if backend is not None:
        model.attn_backend = backend
    return counter.get_total_flops()


def measure(name: str, model, loss_fn, images_per_step: int, compile_: str | None, steps: int, warmup: int,
            device, profile: bool = False, master_weights: bool = False, clip_and_ema: bool = False) -> dict:
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    # Counted before the optimizer's masters and the EMA exist, and its eager activations handed back: counted after
    # them, the trainer row's 2.6B model ran an H100 out of memory here (session 32), and the allocator's cached
    # blocks stay in the timed steps' reserved figure (77.8 GiB reserved for 43.6 allocated in the master row)
    flops = count_flops(model, loss_fn, autocast)
    if cuda:
        torch.cuda.empty_cache()
    if master_weights:  # the linear layers turn bf16 here (the CPU, without autocast, fp32), their masters fp32
        opt = MasterWeightAdamW(model.parameters(), lowered=linear_parameters(model), lr=1e-4, weight_decay=0.01,
                                dtype=torch.bfloat16 if cuda else torch.float32, compiled=cuda)  # AdamW's decay
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    # what model/train.py's step adds: the gradients clipped to norm 1, the EMA of the (master) weights updated
    ema = EMA(opt.named_masters(model) if master_weights else model.named_parameters(), 0.999) if clip_and_ema else None
    run_model = torch.compile(model, mode=None if compile_ == "default" else compile_) if compile_ else model

    def step():
        if compile_ == "reduce-overhead":  # a new step: the CUDA graphs may reuse the last step's buffers
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = loss_fn(run_model)
        loss.backward()
        if ema is not None:
            clip_gradients(model, opt, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(10**4)  # past the decay's warm-up (0.999 from step ~9000), as most of a run's steps

    # Peak memory of the timed steps; under CUDA graphs from the warm-up on: replays allocate nothing, their
    # activations live in the pool allocated while the graphs were recorded (counting the replays only, session 27
    # reported 26.7 GiB for ours under graphs against 43.6 compiled)
    graphs = compile_ == "reduce-overhead"
    if cuda and graphs:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        if not graphs:
            torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = peak_flops()
    row = {"name": name, "compiled": compile_, "img_s": images_per_step / dt, "tflops": flops / dt / 1e12,
           "mfu": flops / dt / peak if peak else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           # what the allocator held, its cache and the graphs' pool included: where the peak of live tensors
           # understates what the GPU must hold (under CUDA graphs)
           "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}
    mfu = f"{row['mfu']:.3f}" if row["mfu"] is not None else "n/a"
    mem = (f"{row['peak_mem_gib']:.1f} GiB (reserved {row['peak_reserved_gib']:.1f})"
           if row["peak_mem_gib"] is not None else "n/a")
    print(f"{name:42s} compile={str(compile_):7s} {row['img_s']:8.2f} img/s {row['tflops']:7.1f} TFLOP/s "
          f"MFU {mfu}  peak {mem}", flush=True)
    if profile:  # GEMMs, attention, elementwise or the optimizer: which one keeps the MFU down
        def two_steps() -> int:
            step()
            step()
            return 2 * images_per_step

        row["profile"] = op_profile(two_steps, device, top=30)
        print_profile(f"{name}, compile={compile_}", row["profile"])
    return row


EXTRA_ROWS = ("uncapped", "flex", "2view", "8view", "2.8b", "master", "trainer")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="toy sizes, for a CPU smoke run")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="eager,compile",
                    help="comma list of eager, compile (torch.compile's default mode), cudagraphs (its "
                         "reduce-overhead: forward and backward replayed as CUDA graphs, the optimizer eager) and "
                         "max-autotune (its max-autotune-no-cudagraphs: tuned GEMM and fusion choices, minutes more "
                         "to compile), each for both models")
    ap.add_argument("--rows", default="lumina,ours",
                    help=f"comma list of lumina, ours (the issue's job) and {', '.join(EXTRA_ROWS)}: ours without the "
                         "soft-cap, with the cap on flex attention, on 2 views 256², on 8 views 256² (batch 1), "
                         "the onediffusion-2.8b config, with master weights (bf16 linear layers, fp32 masters in "
                         "the optimizer), and with the trainer's gradient clipping and EMA as well")
    ap.add_argument("--extra", action="store_true", help=f"also every extra row ({', '.join(EXTRA_ROWS)})")
    ap.add_argument("--profile", action="store_true", help="also the top GPU kernels of two steps of each main row")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure diffusers, ours and the reference this many times (the reference first every other "
                         "round) and print the median ratio with each round's; the extra rows run in the first")
    ap.add_argument("--coordinate-descent", action="store_true",
                    help="compiled rows (both models) with Inductor's coordinate_descent_tuning: each elementwise and "
                         "reduction kernel's block sizes searched on the GPU (longer compiles)")
    ap.add_argument("--reference", metavar="FILE",
                    help="also time the NextDiT of FILE (another version of model/nextdit.py) beside ours at the "
                         "issue's job, and print ours over it")
    args = ap.parse_args()
    rows_wanted = set(args.rows.split(",")) | (set(EXTRA_ROWS) if args.extra else set())
    if unknown := rows_wanted - {"lumina", "ours", *EXTRA_ROWS}:
        ap.error(f"unknown rows {sorted(unknown)}")
    compile_modes = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead",
                     "max-autotune": "max-autotune-no-cudagraphs"}
    if unknown := set(args.modes.split(",")) - set(compile_modes):
        ap.error(f"unknown modes {sorted(unknown)}")
    modes = [compile_modes[m] for m in args.modes.split(",")]
    # loaded now, not when its row comes: a device call that syncs the working tree mid-job may have dropped the file
    reference_class = reference_model_class(args.reference) if args.reference else None
    if args.profile and not torch.cuda.is_available():
        ap.error("--profile measures GPU kernel time: it needs CUDA")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
        print("Inductor coordinate_descent_tuning on")
    if args.quick:
        cfg, latent, batch, text_len, warmup = CONFIGS["tiny"], 8, 2, 16, 1
        lumina_kw = dict(hidden_size=96, num_layers=2, num_refiner_layers=2, num_attention_heads=4, num_kv_heads=2,
                         multiple_of=32, axes_dim_rope=(8, 8, 8), cap_feat_dim=32)
    else:
        cfg, latent, batch, text_len, warmup = CONFIGS["lumina2-2.6b"], 64, 4, 256, 3
        lumina_kw = dict(hidden_size=2304, num_layers=26, num_attention_heads=24, num_kv_heads=8, cap_feat_dim=2304)
    from diffusers import Lumina2Transformer2DModel

    def free():
        # the compiled code goes too: CUDA graphs keep their memory pool until then (the first model's 22 GiB
        # ran the second out of memory on an H100)
        torch.compiler.reset()
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None

    def ours_rows(model_cfg, rows, compile_, attn_backend: str = "auto", model_class=NextDiT, profile: bool = True,
                  master_weights: bool = False, clip_and_ema: bool = False):
        """Rows of one model built once: (name, views, latent side, batch) each."""
        torch.manual_seed(0)
        model = model_class(model_cfg).to(device)
        model.attn_backend = attn_backend
        out = {name: measure(name, model, ours_step_fn(model, views, lat, b, text_len, device), b, compile_,
                             args.steps, warmup, device, args.profile and profile and name.endswith("(1 view)"),
                             master_weights, clip_and_ema)
               for name, views, lat, b in rows}
        del model
        free()
        return out

    kernel = attention_kernel("auto", device.type == "cuda", cfg.head_dim, torch.bfloat16)
    print(f"our soft-capped attention (auto) runs on {kernel}")
    results: dict[tuple[str, str | None], list[dict]] = {}
    for compile_, round_ in ((c, r) for c in modes for r in range(args.rounds)):
        if "lumina" in rows_wanted:
            torch.manual_seed(0)
            lumina = Lumina2Transformer2DModel(**lumina_kw).to(device)
            results.setdefault(("lumina", compile_), []).append(
                measure("diffusers Lumina2 (1 view)", lumina, lumina_step_fn(lumina, latent, batch, text_len, device),
                        batch, compile_, args.steps, warmup, device, args.profile and not round_))
            del lumina
            free()
        # 8 views at batch 4 (32k tokens a step) ran an H200 out of memory in eager mode: batch 1 is 8k tokens
        rows = [("ours, Lumina2 shape (1 view)", 1, latent, batch)] if "ours" in rows_wanted else []
        side = latent // 2 * 8  # pixels
        rows += ([(f"ours, Lumina2 shape (2 views {side}²)", 2, latent // 2, batch)]
                 if "2view" in rows_wanted and not round_ else [])
        rows += ([(f"ours, Lumina2 shape (8 views {side}²)", 8, latent // 2, max(1, batch // 4))]
                 if "8view" in rows_wanted and not round_ else [])

        def ours_main():
            if rows:
                measured = ours_rows(cfg, rows, compile_, profile=not round_)
                if "ours, Lumina2 shape (1 view)" in measured:
                    results.setdefault(("ours", compile_), []).append(measured["ours, Lumina2 shape (1 view)"])

        def master(key: str = "master", name: str = "ours, master weights (1 view)", clip_and_ema: bool = False):
            if key in rows_wanted:
                results.setdefault((key, compile_), []).append(
                    ours_rows(cfg, [(name, 1, latent, batch)], compile_, profile=not round_, master_weights=True,
                              clip_and_ema=clip_and_ema)[name])

        def trainer():
            master("trainer", "ours, master weights + clip + EMA (1 view)", clip_and_ema=True)

        def reference():
            if args.reference:
                name = f"ours, reference {Path(args.reference).name} (1 view)"
                results.setdefault(("reference", compile_), []).append(
                    ours_rows(cfg, [(name, 1, latent, batch)], compile_, profile=not round_,
                              model_class=reference_class)[name])

        # every other round the reference goes first: a drift along the job (clocks, allocator) then cancels
        for run in ((ours_main, master, trainer, reference) if round_ % 2 == 0
                    else (reference, trainer, master, ours_main)):
            run()
        if round_:
            continue
        if "uncapped" in rows_wanted:  # what the logit soft-cap costs: without it attention is SDPA (flash), not flex
            ours_rows(dataclasses.replace(cfg, attn_softcap=None),
                      [("ours, no soft-cap (SDPA attention)", 1, latent, batch)], compile_)
        if "flex" in rows_wanted and device.type == "cuda":  # the cap on flex attention, the kernel auto falls back to
            ours_rows(cfg, [("ours, flex soft-capped attention (1 view)", 1, latent, batch)], compile_, "flex")
    if "2.8b" in rows_wanted and args.quick:
        print("onediffusion-2.8b row skipped under --quick: with AdamW it needs ~45 GB")
    elif "2.8b" in rows_wanted:
        ours_rows(CONFIGS["onediffusion-2.8b"],
                  [(f"ours, onediffusion-2.8b (2 views {latent // 2 * 8}²)", 2, latent // 2, batch)], modes[-1])
    label = {"lumina": "diffusers", "master": "ours with master weights",
             "trainer": "ours with master weights, clip and EMA"}
    for c in modes:
        for mine, other in (("ours", "lumina"), ("ours", "reference"), ("master", "lumina"), ("master", "ours"),
                            ("trainer", "master"), ("trainer", "lumina")):
            if (mine, c) in results and (other, c) in results:
                per_round = [a["img_s"] / b["img_s"] for a, b in zip(results[mine, c], results[other, c])]
                spread = f" (rounds: {', '.join(f'{r:.3f}' for r in per_round)})" if len(per_round) > 1 else ""
                print(f"ratio {label.get(mine, mine)}/{label.get(other, other)} img/s (compile={c}): "
                      f"{statistics.median(per_round):.3f}{spread}")


if __name__ == "__main__":
    main()
