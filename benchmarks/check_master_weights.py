"""Does training with master weights (``train.master_weights``) follow autocast training? Three runs side by side.

    python benchmarks/check_master_weights.py --json master.json    # GPU: `small`, 300 steps of batch 32, ~2 min
    python benchmarks/check_master_weights.py --quick               # CPU smoke run: `tiny`, a few steps

Master weights keep the linear layers in bf16 and their fp32 masters in the optimizer (model/master_adamw.py),
which is autocast's arithmetic without its per-step casts: the CPU tests show it bit for bit on one step, but a
GPU runs other kernels (the fused projections stand aside with bf16 weights) and a compiled update. So this trains
the same model from the same weights on the same batches, σ and noise three ways, through the trainer's own pieces
(``wrap_model``, ``make_optimizer``, ``clip_gradients``, ``lr_at``, ``flow_matching_loss``):

* ``fp32``: float32 weights and arithmetic, TF32 off (the yardstick);
* ``autocast``: the trainer's default, fp32 weights under bf16 autocast, fused AdamW;
* ``master``: master weights under the same autocast.

It prints the first step's gradients against fp32 (cosine, relative L2 over all parameters), the loss curves in
windows, and where the weights end (distance between runs over the distance the autocast run travelled). Master
weights pass when they stay within ``--tolerance`` times autocast's distance from fp32. Any difference at all
(another rounding order, another GEMM kernel) grows over training to about bf16's own noise, so the two distances
come out alike (a last-bit change to the update: 1.07x in the loss, 0.76x in the weights; `--quick` sizes, 200 CPU
steps); errors in the update land far beyond the default 3x (a lost clip 48x the loss gap, no bias correction 460x,
weights never written back >10x), while one too small to move a short run (weight decay 0.01 at lr 1e-3 dropped)
passes unseen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.loss import flow_matching_loss, sample_sigmas  # noqa: E402
from model.master_adamw import MasterWeightAdamW  # noqa: E402
from model.nextdit import CONFIGS, NextDiT  # noqa: E402
from model.train import Dist, clip_gradients, lr_at, make_optimizer, wrap_model  # noqa: E402
from onegen.config import TrainConfig  # noqa: E402

RUNS = ("fp32", "autocast", "master")


def make_pool(n: int, batch: int, latent: int, text_len: int, text_dim: int, seed: int) -> list[tuple]:
    """``n`` batches to cycle through: smooth 16-channel latents (a model can fit them, so the loss falls) and
    caption features of varying valid length."""
    g = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(n):
        coarse = torch.randn(batch * 16, 1, 4, 4, generator=g)
        latents = F.interpolate(coarse, size=(latent, latent), mode="bilinear", align_corners=False)
        latents = latents.reshape(batch, 1, 16, latent, latent)
        text = torch.randn(batch, text_len, text_dim, generator=g)
        lengths = torch.randint(4, text_len + 1, (batch,), generator=g)
        mask = torch.arange(text_len) < lengths[:, None]
        pool.append((latents, text * mask[..., None], mask))
    return pool


def train_run(kind: str, init: dict, pool: list, args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = kind != "fp32"  # as the trainer sets it for bf16
    torch.backends.cudnn.allow_tf32 = kind != "fp32"
    cfg = TrainConfig(lr=args.lr, warmup_steps=args.warmup, grad_clip=args.grad_clip, weight_decay=args.weight_decay,
                      parallel="none", compile=args.compile, master_weights=kind == "master")
    raw = NextDiT(CONFIGS[args.size])
    raw.load_state_dict(init)
    raw.to(device).train()
    # in the trainer's order: master weights lower the linear layers before the model is wrapped
    optimizer = make_optimizer(raw, cfg, cuda, torch.bfloat16 if kind == "master" else torch.float32)
    model = wrap_model(raw, cfg, Dist(device=device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=kind != "fp32")
    losses, first_grads = [], None
    t0 = time.perf_counter()
    for step in tqdm(range(args.steps), desc=kind, unit="step", leave=False):
        latents, text, mask = (t.to(device) for t in pool[step % len(pool)])
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        sigmas = sample_sigmas(latents.shape[:2], g, shift=3.0).to(device)
        noise = torch.randn(latents.shape, generator=g).to(device)
        with autocast:
            loss, _ = flow_matching_loss(model, latents, text, mask, sigmas, noise)
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.detach().float().cpu() for n, p in raw.named_parameters()}
        clip_gradients(model, optimizer, cfg.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses = torch.stack(losses).float().cpu().tolist()
    seconds = time.perf_counter() - t0
    named = optimizer.named_masters(raw) if isinstance(optimizer, MasterWeightAdamW) else raw.named_parameters()
    weights = {n: w.detach().float().cpu() for n, w in named}
    return {"losses": losses, "first_grads": first_grads, "weights": weights, "seconds": seconds}


def flat(tensors: dict) -> torch.Tensor:
    return torch.cat([t.flatten().double() for _, t in sorted(tensors.items())])


def gradient_agreement(grads: dict, reference: dict) -> dict:
    a, b = flat(grads), flat(reference)
    return {"cosine": F.cosine_similarity(a, b, dim=0).item(), "rel_l2": ((a - b).norm() / b.norm()).item()}


def windows(losses: list[float], size: int) -> list[float]:
    return [sum(losses[i:i + size]) / len(losses[i:i + size]) for i in range(0, len(losses), size)]


def compare(runs: dict, init: dict, window: int) -> dict:
    """Distances between the runs: of the first gradients, the windowed loss curves and the final weights."""
    weights = {k: flat(r["weights"]) for k, r in runs.items()}  # once each: `small` is ~0.5 GB a copy in float64
    travelled = (weights["autocast"] - flat(init)).norm().item()
    curves = {k: windows(r["losses"], window) for k, r in runs.items()}

    def pair(a: str, b: str) -> dict:
        gaps = [abs(x - y) / abs(y) for x, y in zip(curves[a], curves[b])]
        weight_gap = (weights[a] - weights[b]).norm().item()
        return {"loss_rel_gap_max": max(gaps), "loss_rel_gap_mean": sum(gaps) / len(gaps),
                "weight_gap_over_travel": weight_gap / travelled}

    return {"first_grads_vs_fp32": {k: gradient_agreement(runs[k]["first_grads"], runs["fp32"]["first_grads"])
                                    for k in ("autocast", "master")},
            "master_vs_autocast": pair("master", "autocast"), "autocast_vs_fp32": pair("autocast", "fp32"),
            "curves": curves, "travelled": travelled}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--latent", type=int, default=32, help="latent side (256 px through the 8x VAE)")
    ap.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--window", type=int, default=25, help="steps a loss window averages")
    ap.add_argument("--compile", action="store_true", help="compile the blocks as the trainer's train.compile")
    ap.add_argument("--tolerance", type=float, default=3.0,
                    help="master passes within this many times autocast's distance from fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: `tiny`, 12 steps of batch 4")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.batch, args.latent, args.pool, args.window = "tiny", 12, 4, 8, 3, 4
    return args


def check(args: argparse.Namespace, device: torch.device) -> dict:
    """The three runs and their distances; ``passed`` when master weights stay within ``args.tolerance`` times
    autocast's distance from fp32, in both the loss windows and the final weights."""
    torch.manual_seed(args.seed)
    init = {k: v.clone() for k, v in NextDiT(CONFIGS[args.size]).state_dict().items()}
    pool = make_pool(args.pool, args.batch, args.latent, 64, CONFIGS[args.size].caption_channels, args.seed)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        runs = {kind: train_run(kind, init, pool, args, device) for kind in RUNS}
    finally:  # each run sets them as the trainer would; the caller's come back
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    result = compare(runs, {n: p for n, p in init.items() if n in runs["fp32"]["weights"]}, args.window)
    ma, af = result["master_vs_autocast"], result["autocast_vs_fp32"]
    result["ratios"] = {"loss": ma["loss_rel_gap_max"] / af["loss_rel_gap_max"],
                        "weights": ma["weight_gap_over_travel"] / af["weight_gap_over_travel"]}
    result["passed"] = max(result["ratios"].values()) <= args.tolerance
    result["seconds"] = {k: r["seconds"] for k, r in runs.items()}
    result["losses"] = {k: r["losses"] for k, r in runs.items()}
    return result


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    result = check(args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{args.size}, {args.steps} steps of batch {args.batch} at latent {args.latent}², lr {args.lr}, "
          f"on {name}{', blocks compiled' if args.compile else ''}")
    for kind in RUNS:
        curve = " ".join(f"{x:.4f}" for x in result["curves"][kind])
        print(f"  {kind:8s} {result['seconds'][kind]:6.1f} s  loss by {args.window}-step windows: {curve}")
    for kind, agreement in result["first_grads_vs_fp32"].items():
        print(f"  first gradients, {kind} against fp32: cosine {agreement['cosine']:.6f}, "
              f"relative L2 {agreement['rel_l2']:.2e}")
    for label, gap in (("master against autocast", result["master_vs_autocast"]),
                       ("autocast against fp32", result["autocast_vs_fp32"])):
        print(f"  {label}: loss windows' relative gap max {gap['loss_rel_gap_max']:.2e} "
              f"(mean {gap['loss_rel_gap_mean']:.2e}), final weights apart {gap['weight_gap_over_travel']:.3f} "
              "of autocast's travel")
    ratios = result["ratios"]
    print(f"master weights {'PASS' if result['passed'] else 'FAIL'}: {ratios['loss']:.2f}x autocast's distance from "
          f"fp32 in the loss, {ratios['weights']:.2f}x in the weights (tolerance {args.tolerance}x)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "args": {k: str(v) for k, v in vars(args).items()},
                                         **result}, indent=1))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
