"""One decode step's attention at the captioner's shape (issue 6): the FP8 KV cache's Triton kernel against the
packed-GQA SDPA over a bf16 cache that the captioner runs otherwise, side by side in one process.

    python benchmarks/bench_decode_attention.py                  # batch 128, 3,300 keys (anyres 672² + 150 new)
    python benchmarks/bench_decode_attention.py --batch 96 --keys 3300 --json $OUT/decode_attention.json

Shape: Mistral-7B's attention (32 query heads, 8 KV heads, head dim 128), one query token per row, left padding of up
to 5% of the keys per row. Prints µs per call (one layer), the cache bytes each reads and the bandwidth they reach,
their ratio (both compiled, as in the decode step), and the largest difference of their outputs (FP8's rounding; the
kernel against its own PyTorch reference is tested in tests/onegen/annotators/test_kv_fp8.py). Beside them, the
kernel eagerly through its custom op (``kv_fp8.DOT_F16``'s dots), with float16 and with bf16 dot operands (float16:
one conversion instruction per pair of FP8 values, where bf16 goes through another type), and over the bf16 cache
with unit scales: a diagnostic of what bounds it (twice the bytes in about the same time: not the bytes). CUDA only.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from onegen.annotators.kv_fp8 import quantize_per_token, triton_decode_attention


def timed_us(fn, repeats: int) -> float:
    """Median over ``repeats`` of CUDA-event time per call, after a warm-up (compile, autotune)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128, help="the captioner's with the FP8 KV cache")
    ap.add_argument("--keys", type=int, default=3300)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--sweep", action="store_true",
                    help="also time the kernel eagerly at other splits, blocks, warps and stages (kv_fp8's launch constants)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("this measures GPU kernels: it needs CUDA")
    torch.manual_seed(0)
    dev, b, n, hkv, groups, d = "cuda", args.batch, args.keys, 8, 4, 128
    q = torch.randn(b, hkv * groups, 1, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16)
    keep = torch.ones(b, n, dtype=torch.bool, device=dev)
    pads = torch.randint(0, n // 20, (b,), device=dev)
    keep &= torch.arange(n, device=dev)[None] >= pads[:, None]
    (k8, ks), (v8, vs) = quantize_per_token(k), quantize_per_token(v)
    length = torch.tensor(n, device=dev)
    packed = q.reshape(b, hkv, groups, d)
    scale = d**-0.5

    def sdpa():  # the captioner's packed-GQA decode over a bf16 cache (_sdpa_packed_gqa)
        return F.scaled_dot_product_attention(packed, k, v, attn_mask=keep[:, None, None], scale=scale)

    def fp8():
        return torch.ops.onegen.fp8_kv_decode(packed, k8, v8, ks, vs, keep, length, scale)

    def fp8_dots(f16: bool):  # the kernel with float16 or the query's (bf16) dot operands, eager
        return lambda: triton_decode_attention(packed, k8, v8, ks, vs, keep, length, scale, dot_f16=f16)

    ones = torch.ones_like(ks)

    def same_kernel_bf16():  # a diagnostic: if it takes as long as over FP8, bytes are not what bounds the kernel
        return triton_decode_attention(packed, k, v, ones, ones, keep, length, scale)

    rows = {}
    fp8_bytes = k8.nbytes + v8.nbytes + ks.nbytes + vs.nbytes
    # compiled as in the decode step: the kernel inside an Inductor graph is where launch arguments get their types
    for name, fn, nbytes in (("sdpa bf16 (compiled)", torch.compile(sdpa), 2 * k.nbytes),
                             ("fp8 kernel", fp8, fp8_bytes), ("fp8 kernel (compiled)", torch.compile(fp8), fp8_bytes),
                             ("fp8 kernel, f16 dots", fp8_dots(True), fp8_bytes),
                             ("fp8 kernel, bf16 dots", fp8_dots(False), fp8_bytes),
                             ("kernel over bf16", same_kernel_bf16, 2 * k.nbytes)):
        us = timed_us(fn, args.repeats)
        rows[name] = {"us": round(us, 1), "cache_mb": round(nbytes / 1e6, 1), "gb_per_s": round(nbytes / us / 1e3, 1)}
        print(f"{name:22s} {us:9.1f} µs  {nbytes / 1e6:8.1f} MB  {nbytes / us / 1e3:7.1f} GB/s", flush=True)
    if args.sweep:
        for splits, block, warps, stages in itertools.product((1, 2, 4, 8), (64, 128), (4, 8), (2, 3)):
            def launch(splits=splits, block=block, warps=warps, stages=stages):
                return triton_decode_attention(packed, k8, v8, ks, vs, keep, length, scale, splits=splits,
                                               block=block, warps=warps, stages=stages)
            try:
                us = timed_us(launch, args.repeats)
            except Exception as e:  # a launch that does not fit (shared memory) is a row, not the end of the sweep
                print(f"splits {splits} block {block} warps {warps} stages {stages}: {type(e).__name__}", flush=True)
                continue
            name = f"fp8 splits {splits} block {block} warps {warps} stages {stages}"
            rows[name] = {"us": round(us, 1)}
            print(f"{name} {us:9.1f} µs", flush=True)
    reference = sdpa().float()
    diff = (fp8().float() - reference).abs().max().item()
    diffs = {f16: (fp8_dots(f16)().float() - reference).abs().max().item() for f16 in (True, False)}
    print(f"float16 dots: {rows['fp8 kernel, bf16 dots']['us'] / rows['fp8 kernel, f16 dots']['us']:.2f}x the bf16 "
          f"dots (eager); largest output difference {diffs[True]:.4f} (bf16 dots {diffs[False]:.4f})")
    ratio = rows["sdpa bf16 (compiled)"]["us"] / rows["fp8 kernel (compiled)"]["us"]
    print(f"speed-up fp8 / sdpa, both compiled: {ratio:.2f}x; largest output difference {diff:.4f} "
          f"(outputs up to {reference.abs().max().item():.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"batch": b, "keys": n, "rows": rows, "ratio": round(ratio, 3),
                                         "max_abs_diff": diff, "max_abs_diff_f16_dots": diffs[True],
                                         "max_abs_diff_bf16_dots": diffs[False],
                                         "device": torch.cuda.get_device_name()}, indent=1))


if __name__ == "__main__":
    main()
