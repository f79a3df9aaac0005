"""Soft-capped self-attention, forward + backward, at the train step's shape: flex variants against SDPA.

    python benchmarks/bench_attention.py            # Lumina2 2.6B shape: batch 4, 1024 tokens, 24/8 heads, d 96
    python benchmarks/bench_attention.py --quick    # a CPU smoke run at toy sizes (forward only: flex has no CPU backward)
    python benchmarks/bench_attention.py --shape learn_t2i   # `small` on the learning run's 128² text2image batches

The train step's profile (H200, eager) spent 6.6 ms per image in flex attention with the logit
soft-cap, the backward 3x the forward. Inductor picks flex's tile sizes from a table keyed by head
dim, which has no row for our 96, so this times the candidates side by side in one process:
SDPA without the cap (cuDNN / flash: the speed the cap costs us against), flex without the cap,
flex with it under Inductor's defaults, under explicit ``kernel_options``, and under max-autotune, and
cuDNN's fused kernel with the cap as its score modifier (``model/cudnn_attention.py``, the model's backend
"cudnn"; needs ``nvidia-cudnn-frontend``). Prints ms per call, TFLOP/s (FlashAttention's count: forward
4·B·H·N²·d, backward 2.5x that), each output's largest difference from the float32 reference
(``softcapped_attention(..., "math")``) and, for the capped kernels, the largest difference of dq, dk, dv
from the reference's, relative to the largest reference gradient.

Measured (H200, torch 2.11, 2026-12-04, each variant compiled just before its timing): SDPA 0.419 ms,
flex without the cap 0.721, with the cap as tanh 1.095, as 2σ(2x)−1 (the model's) 0.805; explicit
tiles 0.801-1.847, max-autotune 0.800, the FLASH backend 1.203 and 1.650 with d padded to 128. The
model keeps Inductor's defaults.

``--shape learn_t2i`` (batch 256, 64 tokens, 8/4 heads, d 72) is where Inductor's AUTO choice took its
flex-decoding kernel (under 128 queries, static shapes): the model asks for BACKEND "TRITON", its general
kernel, at every length; the AUTO row times what it had before.

Then the block's other attention, the caption cross-attention with its padding mask (256 caption tokens):
SDPA as the model calls it against its efficient and cuDNN kernels forced, and flex with a block mask.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.nextdit import FLEX_KERNEL_OPTIONS, _softcap_score_mod, softcapped_attention  # noqa: E402

# Forward tiles (BLOCK_M, BLOCK_N, warps, stages) as Inductor's H100 table has them for d 64/128, the
# backward's (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2) of its sm90 rule, to try on d 96; and another kernel.
SHAPES = {"train": (4, 24, 8, 1024, 96),  # batch, heads, KV heads, tokens, head dim
          "learn_t2i": (256, 8, 4, 64, 72),
          "learn_mixed": (64, 8, 4, 512, 72)}  # `small` on the learning run's 8-view 128² batches
CANDIDATES = {
    "fwd 128x64 w8 s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "fwd 128x128 w8 s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "fwd 128x64 w4 s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "fwd 128x64 + bwd 64x128 w8": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3,
                                   "BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64},
    # FlashAttention-4's CuTe kernels with the score_mod compiled in; needs the flash-attn-4 package
    "FLASH backend (flash-attn-4)": {"BACKEND": "FLASH"},
}


def padded_head_dim(attend, to: int):
    """``attend(q, k, v, scale)`` on q, k, v zero-padded to head dim ``to``: the zeros add nothing to any q·k,
    the scale stays 1/sqrt(d) of the real dim, and the output's padded columns are sliced off."""
    def call(q, k, v):
        d = q.shape[-1]
        return attend(*(F.pad(t, (0, to - d)) for t in (q, k, v)), d**-0.5)[..., :d]

    return call


def time_call(fn, q, k, v, iters: int) -> float:
    """Seconds per forward + backward (forward alone on the CPU), mean over ``iters`` after three warm-up calls."""
    grad = torch.randn_like(q)

    def call():
        out = fn(q, k, v)
        if q.requires_grad:
            out.backward(grad)

    for _ in range(3):
        call()
    if q.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    if q.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def reference_grads(attend, q, k, v) -> tuple[torch.Tensor, ...]:
    """dq, dk, dv of ``attend`` (the float32 reference) for the fixed output gradient ``grad_probe`` gives."""
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    attend(*leaves).backward(grad_probe(q))
    return tuple(t.grad for t in leaves)


def grad_probe(q: torch.Tensor) -> torch.Tensor:
    return torch.randn(q.shape, device=q.device, dtype=q.dtype, generator=torch.Generator(q.device).manual_seed(7))


def time_variant(name: str, make, q, k, v, iters: int, exact: torch.Tensor, flops: float,
                 exact_grads: tuple | None = None) -> dict | None:
    """Build one variant, time it and check its output (and, given ``exact_grads``, its dq, dk, dv) against the
    float32 reference; None, with a line saying why, where it fails (a tile that does not fit shared memory, a
    backend this build or device lacks): the others still count."""
    try:
        fn = make()
        sec = time_call(fn, q, k, v, iters)
        with torch.no_grad():
            err = (fn(q, k, v).float() - exact).abs().max().item()
        grad_err = None
        if exact_grads is not None and q.requires_grad:
            for t in (q, k, v):
                t.grad = None
            fn(q, k, v).backward(grad_probe(q))
            grad_err = max(((t.grad.float() - g).abs().max() / g.abs().max()).item()
                           for t, g in zip((q, k, v), exact_grads))
    except Exception as e:
        print(f"{name:42s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return None
    return {"name": name, "ms": sec * 1e3, "tflops": flops / sec / 1e12, "max_abs_err": err,
            "max_rel_grad_err": grad_err}


def print_row(row: dict) -> None:
    vs = f"speed vs SDPA {row['vs_sdpa']:.2f}" if row.get("vs_sdpa") else ""
    grads = f"  grads max|err|/max {row['max_rel_grad_err']:.1e}" if row.get("max_rel_grad_err") is not None else ""
    print(f"{row['name']:42s} {row['ms']:8.3f} ms {row['tflops']:7.1f} TFLOP/s  {vs}  max|err| {row['max_abs_err']:.1e}"
          f"{grads}", flush=True)


def cross_attention_rows(b: int, h: int, hkv: int, n: int, d: int, text_len: int, iters: int, device, dtype) -> list:
    """The block's caption cross-attention, as the model calls it (queries against the caption's keys tiled to
    every head, a padding mask, no cap), against kernels that could take it: which one SDPA picks for a boolean
    mask is not visible from the model, and captions are ~40% padding at T5's 300 tokens."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    gen = torch.Generator(device).manual_seed(1)
    grad = device.type == "cuda"
    q = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=gen).requires_grad_(grad)
    k, v = (torch.randn(b, hkv, text_len, d, device=device, dtype=dtype, generator=gen).repeat(1, h // hkv, 1, 1)
            .requires_grad_(grad) for _ in range(2))
    valid = torch.randint(text_len // 3, text_len + 1, (b,), device=device, generator=gen)
    keep = torch.arange(text_len, device=device)[None] < valid[:, None]  # [B, L]
    mask = keep[:, None, None, :]
    with torch.no_grad():
        logits = (q.float() @ k.float().transpose(-1, -2)) * d**-0.5
        exact = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v.float()

    def sdpa(backend=None):
        def call(q, k, v):
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return call

    def flex():
        torch.compiler.reset()
        compiled = torch.compile(flex_attention)
        block_mask = create_block_mask(lambda b_, h_, q_idx, kv_idx: keep[b_, kv_idx], b, None, n, text_len,
                                       device=device.type)
        return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)

    variants = {"cross, SDPA with the mask (the model's)": sdpa}
    if device.type == "cuda":
        variants |= {"cross, SDPA efficient kernel": functools.partial(sdpa, SDPBackend.EFFICIENT_ATTENTION),
                     "cross, SDPA cuDNN kernel": functools.partial(sdpa, SDPBackend.CUDNN_ATTENTION)}
    variants["cross, flex with a padding block mask"] = flex
    flops = (3.5 if grad else 1.0) * 4 * b * h * n * text_len * d
    print(f"cross-attention {'fwd+bwd' if grad else 'fwd'}: batch {b}, {n} queries, {text_len} caption tokens "
          f"({valid.tolist()} valid), {h} heads, d {d}")
    rows = []
    for name, make in variants.items():
        if (row := time_variant(name, make, q, k, v, iters, exact, flops)) is not None:
            print_row(row)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="toy sizes, for a CPU smoke run")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="train",
                    help="train: the Lumina2 2.6B train step's; learn_t2i: `small` on 64-token text2image batches; "
                         "learn_mixed: `small` on the learning run's 8-view batches (512 tokens)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--softcap", type=float, default=30.0)
    ap.add_argument("--only", help="comma list: time only the self-attention variants whose names contain one of "
                                   "these (SDPA, the reference, always runs), and no cross-attention rows")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import flex_attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, h, hkv, n, d = (2, 4, 2, 64, 16) if args.quick else SHAPES[args.shape]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    grad = device.type == "cuda"
    q, k, v = (torch.randn(b, heads, n, d, device=device, dtype=dtype, generator=gen).requires_grad_(grad)
               for heads in (h, hkv, hkv))
    cap = _softcap_score_mod(args.softcap)
    flops = (3.5 if grad else 1.0) * 4 * b * h * n * n * d

    def flex(mode: str | None = None, score_mod=cap, options: dict | None = FLEX_KERNEL_OPTIONS,
             pad_to: int | None = None):
        """Called just before its variant is timed: each compiles afresh, against no other's cache entries.
        ``pad_to``: zero-pad the head dim (scores and scale unchanged, the pad sliced off the output)."""
        torch.compiler.reset()
        compiled = torch.compile(flex_attention, mode=mode)

        def attend(q, k, v, scale=None):
            return compiled(q, k, v, score_mod=score_mod, enable_gqa=True, kernel_options=options, scale=scale)

        return padded_head_dim(attend, pad_to) if pad_to else attend

    def tanh_cap(score, batch, head, q_idx, kv_idx):  # the model's cap before it was written with a sigmoid
        return args.softcap * torch.tanh(score / args.softcap)

    def sdpa():
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    variants = {"sdpa, no cap (reference)": sdpa,
                "flex, no cap": lambda: flex(score_mod=None),
                "flex, cap as tanh": lambda: flex(score_mod=tanh_cap),
                "flex, cap (ours: 2 sigmoid(2x) - 1)": flex,
                "flex, cap, BACKEND AUTO (ours until 2026-12-05)": functools.partial(flex, options={"BACKEND": "AUTO"})}
    variants |= {f"flex, cap, {name}": functools.partial(flex, options={**FLEX_KERNEL_OPTIONS, **opts})
                 for name, opts in CANDIDATES.items()}
    # FlashAttention-4's Hopper backward was reported to need head dim >= 128 (ecmwf/anemoi-core#959, 2026-03);
    # Triton flex pads 96 to 128 inside anyway, so padding ourselves costs no more
    if d < 128:
        variants["flex, cap, FLASH backend, d padded to 128"] = functools.partial(
            flex, options={"BACKEND": "FLASH"}, pad_to=128)
    if device.type == "cuda":
        variants["flex, cap, max-autotune"] = functools.partial(flex, mode="max-autotune-no-cudagraphs")
        # cuDNN's fused kernel, the cap as its score modifier in both passes (nvidia-cudnn-frontend), as the model
        # calls it eagerly, compiled (one opaque custom op either way) and, as the trainer's compile_mode
        # reduce-overhead runs it, captured inside CUDA graphs
        cudnn = functools.partial(softcapped_attention, softcap=args.softcap, backend="cudnn")
        variants["cudnn, cap (score modifier)"] = lambda: cudnn
        variants["cudnn, cap, compiled"] = lambda: torch.compile(cudnn)
        variants["cudnn, cap, CUDA graphs"] = lambda: torch.compile(cudnn, mode="reduce-overhead")
    if args.only:
        wanted = args.only.split(",")
        variants = {name: make for name, make in variants.items()
                    if make is sdpa or any(w in name for w in wanted)}
    print(f"attention {'fwd+bwd' if grad else 'fwd'}: batch {b}, {n} tokens, {h} heads / {hkv} KV heads, d {d}, {dtype}, {device}")
    rows, ref = [], None
    # A fast kernel that computes something else is no candidate: each output against the float32 reference
    with torch.no_grad():
        exact = {cap: softcapped_attention(q, k, v, args.softcap, "math").float(),
                 None: softcapped_attention(q, k, v, None, "math").float()}
    # the gradients too, for the capped kernels: cuDNN's backward takes the cap's derivative as written here
    exact_grads = reference_grads(functools.partial(softcapped_attention, softcap=args.softcap, backend="math"),
                                  q, k, v) if grad else None
    for name, make in variants.items():
        capped = "no cap" not in name
        row = time_variant(name, make, q, k, v, args.iters, exact[cap if capped else None], flops,
                           exact_grads if capped else None)
        if row is None:
            continue
        if make is sdpa:
            ref = row["ms"]
        row["vs_sdpa"] = ref / row["ms"] if ref else None
        print_row(row)
        rows.append(row)
    try:
        if not args.only:
            rows += cross_attention_rows(b, h, hkv, n, d, 16 if args.quick else 256, args.iters, device, dtype)
    except Exception as e:  # the self-attention rows above still get written
        print(f"cross-attention rows failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
