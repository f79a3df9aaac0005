"""An FP8 KV cache for the captioner's decode steps, and the attention that reads it.

Why: at batch 96 an anyres 672² image keeps ~3,200 tokens of keys and values (0.39 GB in bf16), and each of its
150 decode steps reads all of them. Those reads are ~84% of a decode step's bytes (the FP8 weights, 7.2 GB per
step, are shared by the batch), and the decode was a third of an image's GPU time (H200 profile, 2026-11-24).
Stored as float8 e4m3 with one float32 scale per token and head, they take 0.20 GB: half the bytes per step, and
half the memory, which leaves room for the batch on an 80 GB H100.

* Writing: each new key or value vector (one token, one KV head) is scaled by its own absolute maximum / 448,
  so no calibration is needed and one outlier token costs only its own precision. A row's quantisation never
  depends on the other rows, so batching still changes no result.
* Prefill (the whole prompt at once, from an empty cache) attends in the model's dtype to the keys and values it
  just made, and only stores them in FP8; the decode steps read the FP8 cache.
* Decode attention: a Triton split-KV kernel (flash-decoding) on CUDA. One program per (row, KV head, split)
  loads the query heads of that KV head once (GQA packed, as ``_sdpa_packed_gqa`` does) and streams its share of
  the cache in blocks, folding the per-token scales into the scores (``s_k (q·k)``) and into the softmax weights
  (``p s_v``) rather than dequantising the cache. Elsewhere (CPU tests) a plain PyTorch reference does the same
  arithmetic; the kernel is tested against it on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from transformers.cache_utils import StaticCache, StaticLayer

from onegen.annotators.fp8 import FP8, quantize_rows

# The kernel's launch: keys per inner step, warps, pipeline stages. `bench_decode_attention.py --sweep` on an H100
# (session 17, batch 128, 3,300 keys, eager): 468-491 µs at 128/4/2 against 525-529 at the former 64/4/3; under
# torch.compile, as the decode step runs it, the two were within 1% (481 against 483-489 µs).
BLOCK_N, NUM_WARPS, NUM_STAGES = 128, 4, 2
# The dots' operand type: float16, which float8 e4m3 converts to in one instruction per pair where bfloat16 goes
# through another type (sm_90 PTX), or else the query's (bf16 in the captioner). bench_decode_attention.py times
# both: on H100s, 1.04x-1.20x faster (eager, batch 96 and 128, 3,300 keys; session 17), the same largest difference.
DOT_F16 = True
MIN_KEYS_PER_SPLIT = 256


def kernel_version() -> str:
    """What shapes the kernel's rounding (operand type, block and stages: the order of its accumulation), for the
    captioner's version string."""
    return f"{'f16' if DOT_F16 else 'q'}-b{BLOCK_N}s{NUM_STAGES}"


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D) in any float dtype -> (float8 e4m3 values, float32 scales of shape (...)): x ≈ values * scales.
    The FP8 linears' per-row quantisation, with the scales stored one per vector."""
    values, scales = quantize_rows(x)
    return values, scales.squeeze(-1)


class Fp8StaticLayer(StaticLayer):
    """A ``StaticLayer`` whose keys and values are float8 with a float32 scale per (row, head, token).

    ``update`` returns the full-precision states it was given for a prefill (more than one token: the prompt, into
    an empty cache) and the FP8 cache for a decode step; ``decode_attention`` reads the latter with ``key_scales``
    and ``value_scales``. ``keys`` and ``values`` hold the bytes as uint8 (``index_copy_`` has no float8 kernel
    everywhere), viewed as float8 only inside a step: a graph whose inputs included both dtypes of one buffer, one
    of them mutated, is one AOTAutograd refuses to compile."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size, self.num_heads = key_states.shape[:2]
        self.k_head_dim, self.v_head_dim = key_states.shape[-1], value_states.shape[-1]
        shape = (self.batch_size, self.num_heads, self.max_cache_len)
        self.keys = torch.zeros((*shape, self.k_head_dim), dtype=torch.uint8, device=self.device)
        self.values = torch.zeros((*shape, self.v_head_dim), dtype=torch.uint8, device=self.device)
        self.key_scales = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.value_scales = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.cumulative_length = self.cumulative_length.to(self.device)
        if not torch.compiler.is_compiling():  # static addresses, so the decode step's CUDA graph replays on them
            for t in (self.keys, self.values, self.key_scales, self.value_scales, self.cumulative_length):
                torch._dynamo.mark_static_address(t)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        positions = torch.arange(n, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(n)
        for states, data, scales in ((key_states, self.keys, self.key_scales),
                                     (value_states, self.values, self.value_scales)):
            q, s = quantize_per_token(states)
            data.index_copy_(2, positions, q.view(torch.uint8))
            scales.index_copy_(2, positions, s)
        if n > 1:
            return key_states, value_states
        return self.keys.view(FP8), self.values.view(FP8)

    def reset(self) -> None:
        super().reset()
        if self.is_initialized:
            self.key_scales.zero_()
            self.value_scales.zero_()


def fp8_static_cache(config, max_cache_len: int) -> StaticCache:
    """A transformers ``StaticCache`` (so ``generate`` compiles its decode step) whose layers are ``Fp8StaticLayer``.
    Refuses sliding-window and other non-full layers, whose caches this does not implement."""
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds != {"StaticLayer"}:
        raise ValueError(f"an FP8 KV cache needs full-attention layers only, this model's cache has {sorted(kinds)}")
    cache.layers = [Fp8StaticLayer(max_cache_len=max_cache_len) for _ in cache.layers]
    return cache


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, layer: Fp8StaticLayer,
                     keep: torch.Tensor, scale: float) -> torch.Tensor:
    """One decode step's attention: query (B, H, 1, D) against the FP8 ``keys`` and ``values`` that ``layer.update``
    returned, with the layer's scales and filled length; ``keep`` the (B, L) boolean key mask (padding False).
    Returns (B, 1, H, D) in the query's dtype, as transformers' attention functions do."""
    b, h, _, d = query.shape
    groups = h // layer.num_heads
    q = query.reshape(b, layer.num_heads, groups, d)
    args = (q, keys, values, layer.key_scales, layer.value_scales, keep, layer.cumulative_length)
    if query.is_cuda:
        out = torch.ops.onegen.fp8_kv_decode(*args, scale)
    else:
        out = reference_decode_attention(*args, scale)
    return out.reshape(b, 1, h, d)


def reference_decode_attention(q, keys, values, key_scales, value_scales, keep, length, scale: float) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch: q (B, Hkv, G, D) against the first ``length`` cache positions (masked,
    not sliced: no host sync, so it traces whole under torch.compile)."""
    k = keys.float() * key_scales[..., None]
    v = values.float() * value_scales[..., None]
    scores = torch.einsum("bhgd,bhnd->bhgn", q.float(), k) * scale
    filled = torch.arange(keys.shape[2], device=keys.device) < length
    scores = scores.masked_fill(~(keep & filled)[:, None, None, :], -torch.inf)
    return torch.einsum("bhgn,bhnd->bhgd", scores.softmax(-1), v).to(q.dtype)


@triton.jit
def _decode_partials(Q, K, V, KS, VS, KEEP, LEN, ACC, M, L,
                     sq_b, sq_h, sq_g, sk_b, sk_h, sk_n, ss_b, ss_h, sm_b, so_bh, so_s,
                     n_kv_heads, SCALE_LOG2: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                     BLOCK: tl.constexpr, SPLITS: tl.constexpr, DOT_F16: tl.constexpr):
    """Online softmax over one split of one (row, KV head)'s keys; writes the split's unnormalised output, running
    max (base 2) and sum for the combine."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // n_kv_heads
    h = bh % n_kv_heads
    n = tl.load(LEN).to(tl.int32)
    per = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK) * BLOCK
    lo = split * per
    hi = tl.minimum(lo + per, n)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h * sq_h + g[:, None] * sq_g + d[None, :], mask=g[:, None] < G, other=0.0)
    if DOT_F16:
        q = q.to(tl.float16)
    m = tl.full([GP], -float("inf"), tl.float32)
    s_sum = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for start in range(lo, hi, BLOCK):
        j = start + tl.arange(0, BLOCK)
        inside = j < hi
        keep = tl.load(KEEP + b * sm_b + j, mask=inside, other=0) != 0
        kv_at = b * sk_b + h * sk_h + j[:, None] * sk_n + d[None, :]
        k = tl.load(K + kv_at, mask=inside[:, None], other=0.0).to(q.dtype)
        ks = tl.load(KS + b * ss_b + h * ss_h + j, mask=inside, other=0.0)
        s = tl.dot(q, tl.trans(k)) * (ks * SCALE_LOG2)[None, :]
        s = tl.where(keep[None, :], s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a block of pads only: no NaN from -inf - -inf
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        s_sum = s_sum * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_at, mask=inside[:, None], other=0.0).to(q.dtype)
        vs = tl.load(VS + b * ss_b + h * ss_h + j, mask=inside, other=0.0)
        if DOT_F16:  # the weights over the block's largest value scale: in [0, 1], where float16 holds them well
            top = tl.maximum(tl.max(vs, 0), 1e-30)
            acc = acc * alpha[:, None] + tl.dot((p * (vs / top)[None, :]).to(q.dtype), v) * top
        else:
            acc = acc * alpha[:, None] + tl.dot((p * vs[None, :]).to(q.dtype), v)
        m = m_new
    out = bh * so_bh + split * so_s + g
    tl.store(ACC + out[:, None] * D + d[None, :], acc, mask=g[:, None] < G)
    tl.store(M + out, m, mask=g < G)
    tl.store(L + out, s_sum, mask=g < G)


def splits_for(programs: int, max_keys: int, device: torch.device) -> int:
    """Splits of each (row, KV head)'s keys so that the grid has about two programs per SM."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    want = -(-2 * sms // programs)
    return max(1, min(want, max_keys // MIN_KEYS_PER_SPLIT, 16))


def triton_decode_attention(q, keys, values, key_scales, value_scales, keep, length, scale: float,
                            launch=None, splits: int | None = None, block: int | None = None,
                            warps: int | None = None, stages: int | None = None,
                            dot_f16: bool | None = None) -> torch.Tensor:
    """The kernel's launch and the combine of its splits; ``launch`` wraps the kernel (``wrap_triton`` inside the
    custom op, the plain kernel under the interpreter); ``block``, ``warps``, ``stages`` and ``dot_f16`` replace
    the module's."""
    b, hkv, groups, d = q.shape
    splits = splits or splits_for(b * hkv, keys.shape[2], q.device)
    acc = q.new_empty((b * hkv, splits, groups, d), dtype=torch.float32)
    m = q.new_empty((b * hkv, splits, groups), dtype=torch.float32)
    s_sum = torch.empty_like(m)
    # a cast, not a bool->uint8 view: Inductor cannot lower a view between those dtypes (torch.iinfo(bool) fails)
    keep_bytes = keep.to(torch.uint8)
    kernel = (launch or (lambda k: k))(_decode_partials)
    kernel[(b * hkv, splits)](
        q, keys, values, key_scales, value_scales, keep_bytes, length, acc, m, s_sum,
        q.stride(0), q.stride(1), q.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        key_scales.stride(0), key_scales.stride(1), keep_bytes.stride(0), splits * groups, groups,
        hkv, SCALE_LOG2=scale * 1.4426950408889634,
        G=groups, GP=max(16, triton.next_power_of_2(groups)), D=d, BLOCK=block or BLOCK_N, SPLITS=splits,
        DOT_F16=DOT_F16 if dot_f16 is None else dot_f16, num_warps=warps or NUM_WARPS, num_stages=stages or NUM_STAGES)
    top = m.amax(1, keepdim=True)
    w = torch.exp2(m - top)  # an empty split has m = -inf and weight 0
    out = (acc * w[..., None]).sum(1) / (s_sum * w).sum(1)[..., None]
    return out.reshape(b, hkv, groups, d).to(q.dtype)


@torch.library.triton_op("onegen::fp8_kv_decode", mutates_args=())
def _fp8_kv_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_scales: torch.Tensor,
                   value_scales: torch.Tensor, keep: torch.Tensor, length: torch.Tensor, scale: float) -> torch.Tensor:
    from torch.library import wrap_triton

    return triton_decode_attention(q, keys, values, key_scales, value_scales, keep, length, scale, launch=wrap_triton)
