"""Next-DiT: the multi-view flow-matching transformer of OneDiffusion.

Read top to bottom:

1. ``NextDiTConfig`` and the named ``CONFIGS``;
2. small pieces: RMSNorm, sinusoidal timestep embedding, 3D RoPE, soft-capped attention;
3. one transformer block (self-attention + per-block text cross-attention, SwiGLU FFN,
   sandwich RMSNorms, adaLN scale/gate);
4. ``NextDiT`` itself (patchify -> blocks -> final layer -> unpatchify);
5. checkpoint helpers: ``expected_state_dict_shapes`` (the released parameter table, written
   out by hand), ``count_parameters`` and ``load_released``.

Layout and conventions (binding for every caller)
-------------------------------------------------
* ``latents``: ``[B, F, C, H, W]``: F views (images, condition maps, ray maps) of VAE latents.
  All views' patches form one token sequence with full self-attention; tokens are ordered
  (view, row, col), row-major, exactly as the released model orders them.
* ``timesteps`` are **σ·1000**, the number the released pipeline hands its transformer
  (``FlowMatchEulerDiscreteScheduler.timesteps``): 1000 = pure noise, 0 = clean, with
  x_σ = (1-σ)·x + σ·ε.  They go, unscaled and un-flipped, into a 256-wide sinusoidal
  embedding (max period 10000).  A trainer that samples σ ∈ [0, 1] therefore passes
  ``sigma * 1000`` (``NextDiT.TIMESTEP_SCALE``).
* the output is the flow-matching velocity in the latents' layout, ``v ≈ ε - x`` (sign
  consistent with σ increasing towards noise), so an Euler step is ``x += (σ_next - σ) · v``.
* ``text``: ``[B, L, caption_channels]`` raw encoder features (T5 for the released model),
  ``text_mask``: ``[B, L]`` bool, True for real tokens.  Padding tokens have no effect.

Compatibility with the released checkpoint
------------------------------------------
Parameter names and shapes follow the released ``NextDiT`` so that its ``transformer``
safetensors load with ``strict=True``.  Behavioural details kept on purpose:

* QK-norm is a LayerNorm (with weight and bias) over the whole projected width, not per head;
  caption keys get their own LayerNorm (eps 1e-6); caption values are not normalised;
* the cross-attention queries are the self-attention queries *after* RoPE;
* GQA head sharing differs between the two attentions: in self-attention query head h reads
  K/V head ``h // (H/Hkv)`` (interleaved), in cross-attention it reads ``h % Hkv`` (tiled);
* the timestep and pooled-caption embeddings live in ``min(hidden, 1024)`` dimensions;
* self-attention logits are soft-capped, ``30·tanh(s/30)`` (the released bf16/fp16 path via
  flash-attn ``softcap``; its fp32 SDPA fallback has no cap, we always apply it);
  cross-attention logits are not capped.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model import cudnn_attention
from onegen.hub_cache import resolve_model_path

__all__ = [
    "NextDiTConfig",
    "CONFIGS",
    "NextDiT",
    "expected_state_dict_shapes",
    "count_parameters",
    "config_from_released_json",
    "load_released",
    "is_architecture_of",
    "softcapped_attention",
]


# --------------------------------------------------------------------------------------------
# 1. Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NextDiTConfig:
    """Everything the architecture needs.  Defaults are the released OneDiffusion model."""

    hidden_size: int = 3840
    depth: int = 16
    num_heads: int = 32
    num_kv_heads: int = 8
    # (view, row, col) patch; views are never merged in practice (pT = 1)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 16
    out_channels: int = 16
    caption_channels: int = 2048
    # FFN width = round_up(int(mult * int(2 * 4 * hidden / 3)), multiple_of)  (LLaMA rule)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    qk_norm: bool = True
    # 3D RoPE: head_dim split equally over (view, row, col); positions 0..max-1 per axis
    rope_theta: float = 10000.0
    rope_max_positions: int = 128
    attn_softcap: float | None = 30.0
    # width of the timestep / pooled-caption conditioning vector is min(hidden, this)
    cond_max_dim: int = 1024
    frequency_embedding_size: int = 256

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3:
            raise ValueError(f"NextDiTConfig.patch_size must have 3 entries (view,row,col), got {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"NextDiTConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"NextDiTConfig: num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 6:
            raise ValueError(f"NextDiTConfig: head_dim {self.head_dim} must be divisible by 6 for 3D RoPE "
                             "(an even number of channels per axis)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rope_axes_dims(self) -> tuple[int, int, int]:
        d = self.head_dim // 3
        return (d, d, d)

    @property
    def cond_dim(self) -> int:
        return min(self.hidden_size, self.cond_max_dim)

    @property
    def ffn_dim(self) -> int:
        width = int(2 * (4 * self.hidden_size) / 3)
        if self.ffn_dim_multiplier is not None:
            width = int(self.ffn_dim_multiplier * width)
        return self.multiple_of * math.ceil(width / self.multiple_of)

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)


def is_architecture_of(model_config: dict, size: str) -> bool:
    """Whether a checkpoint's recorded config (``meta.json``'s ``model_config``, tuples as lists) is ``size``'s."""
    return model_config == json.loads(json.dumps(CONFIGS[size].to_dict()))


CONFIGS: dict[str, NextDiTConfig] = {
    # CPU unit tests: head_dim 24 (4 RoPE frequencies per axis), ~0.2 M parameters.
    "tiny": NextDiTConfig(hidden_size=96, depth=2, num_heads=4, num_kv_heads=2,
                          caption_channels=32, multiple_of=32),
    # One-GPU learning runs: head_dim 72 (12 frequencies per axis), ~62 M parameters; caption
    # width 768 = a T5-base-sized encoder (flan-t5-base / t5-v1_1-base d_model).
    "small": NextDiTConfig(hidden_size=576, depth=12, num_heads=8, num_kv_heads=4,
                           caption_channels=768),
    # The released OneDiffusion checkpoint (paper: 2.8 B): head_dim 120, T5 features 2048 wide.
    "onediffusion-2.8b": NextDiTConfig(),
    # Lumina-Image-2.0-sized trunk for speed comparisons: 2304 wide, 26 layers, 24/8 heads,
    # head_dim 96 (=32+32+32 RoPE dims, as Lumina 2), FFN 9216 wide (mult 1.5 -> 4x hidden as
    # Lumina 2), 2304-wide (Gemma-2-2B) caption features.
    "lumina2-2.6b": NextDiTConfig(hidden_size=2304, depth=26, num_heads=24, num_kv_heads=8,
                                  caption_channels=2304, ffn_dim_multiplier=1.5),
}


# --------------------------------------------------------------------------------------------
# 2. Small pieces
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, learnable per-channel gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[..., ] float timesteps -> [..., dim] as (cos(t·f_k), sin(t·f_k)), f_k = max_period^(-k/half)."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)
    angles = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid of σ·1000 followed by a two-layer SiLU MLP."""

    def __init__(self, out_dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


@functools.lru_cache(maxsize=None)
def rope_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    # computed in float64 on the host, copied once per device: a copy per forward was the training
    # step's one stream synchronisation (found with torch.cuda.set_sync_debug_mode on an H200)
    n = head_dim // 6
    return (1.0 / (theta ** (torch.arange(n, dtype=torch.float64) * 6 / head_dim))).float().to(device)


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float, device) -> torch.Tensor:
    """Rotation angles [N, head_dim/2] for the tokens of a (views, rows, cols) grid.

    Each axis owns head_dim/6 complex channels with frequencies theta^(-6k/head_dim); the
    channel blocks are laid out (view | row | col) and a token at (f, i, j) uses positions
    f, i and j on them.
    """
    n = head_dim // 6
    inv_freq = rope_frequencies(head_dim, theta, torch.device(device))
    per_axis = [torch.arange(size, device=device, dtype=torch.float32)[:, None] * inv_freq for size in grid]
    f, h, w = grid
    view = per_axis[0][:, None, None, :].expand(f, h, w, n)
    row = per_axis[1][None, :, None, :].expand(f, h, w, n)
    col = per_axis[2][None, None, :, :].expand(f, h, w, n)
    return torch.cat([view, row, col], dim=-1).reshape(f * h * w, 3 * n)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2k, 2k+1) of x [B, N, heads, head_dim] by the angles.

    ``cos``/``sin`` are [N, head_dim/2].  Computed in float32, returned in x's dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack([real * c - imag * s, real * s + imag * c], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


@functools.lru_cache(maxsize=None)
def _softcap_score_mod(cap: float):
    # cap·tanh(s/cap) written as cap·(2σ(2s/cap) - 1): the same function, whose Triton lowering (exp and a
    # reciprocal instead of libdevice tanh) made flex's forward + backward 26% faster at the train step's shape
    # (H200, benchmarks/bench_attention.py, 0.805 against 1.095 ms); sigmoid's backward is stable at any score.
    def score_mod(score, batch, head, q_idx, kv_idx):
        return cap * (2 * torch.sigmoid(score * (2 / cap)) - 1)

    return score_mod


FLEX_KERNEL_OPTIONS = {"BACKEND": "TRITON"}  # flex_attention's general kernel at every sequence length


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    # Default (auto-)dynamic compile: the first new sequence length recompiles once with
    # dynamic shapes.  ``dynamic=True`` is avoided: it turns the captured cap into a CPU tensor
    # that the flex lowering rejects.  Seen on an H100 (torch 2.11): the first training step
    # compiles for minutes (cached on disk afterwards); every (dtype, head_dim, grad) variant
    # is one more of dynamo's 8 cache entries, past which it silently falls back to eager flex.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _math_attention(q, k, v, softcap, query_chunk: int = 1024):
    """Exact reference: float32 logits, optional soft cap, softmax; chunked over queries."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1).float()
    v = v.repeat_interleave(rep, dim=1).float()
    scale = q.shape[-1] ** -0.5
    outs = []
    for start in range(0, q.shape[2], query_chunk):
        logits = (q[:, :, start:start + query_chunk].float() @ k.transpose(-1, -2)) * scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        outs.append(logits.softmax(dim=-1) @ v)
    return torch.cat(outs, dim=2).to(q.dtype)


def attention_kernel(backend: str, cuda: bool, head_dim: int, dtype: torch.dtype) -> str:
    """What ``backend`` runs on q of this ``head_dim`` and (autocast) ``dtype``: "auto" is cudnn on CUDA in bf16 or
    fp16 where installed and the head dim fits it, else flex; math off CUDA."""
    if backend != "auto":
        return backend
    if not cuda:
        return "math"
    usable = cudnn_attention.AVAILABLE and cudnn_attention.fits(head_dim) and dtype in cudnn_attention.DTYPES
    return "cudnn" if usable else "flex"


def softcapped_attention(q, k, v, softcap: float | None, backend: str = "auto") -> torch.Tensor:
    """Full (unmasked) self-attention with soft-capped logits, GQA by interleaved heads.

    q: [B, H, N, d]; k, v: [B, Hkv, N, d]; query head h reads K/V head h // (H / Hkv).
    backend: "cudnn" (cuDNN's fused kernel with the cap as a score modifier, ``model/cudnn_attention.py``; CUDA,
    needs ``nvidia-cudnn-frontend``), "flex" (compiled ``flex_attention``; CUDA), "flex_eager" (uncompiled flex,
    any device; slow, for checks), "math" (exact float32 reference) or "auto" (``attention_kernel``: on CUDA
    cudnn in bf16 / fp16 where installed and the head dim fits it, else flex; math elsewhere).  Without a cap,
    SDPA is used for every backend but the reference "math" (which ``torch.utils.flop_counter`` can count: it
    rejects SDPA's GQA shapes).
    """
    gqa = q.shape[1] != k.shape[1]
    if softcap is None and backend != "math":
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    # Under autocast, q/k come out of the fp32 QK-norm while v is bf16, and flex's own autocast path fails (torch
    # 2.11): the CUDA kernels run on autocast's dtype, explicitly, with autocast off.
    dtype = torch.get_autocast_dtype("cuda") if q.is_cuda and torch.is_autocast_enabled("cuda") else q.dtype
    backend = attention_kernel(backend, q.is_cuda, q.shape[-1], dtype)
    if backend == "math":
        return _math_attention(q, k, v, softcap)
    if backend in ("flex", "cudnn"):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        with torch.autocast(q.device.type, enabled=False):
            if backend == "cudnn":
                return cudnn_attention.softcapped_attention_cudnn(q, k, v, float(softcap))
            # Inductor's own tiles: on an H200 at d 96 no explicit tile, max-autotune or the FLASH backend
            # (flash-attn-4) beat them (benchmarks/bench_attention.py, 2026-12-04). Its Triton kernels multiply at
            # the head dim rounded up to a power of two (QK_HEAD_DIM_ROUNDED in torch 2.14's flex templates): 96 as
            # 128, a third more tensor-core work than SDPA's kernels, which take 96 as it is. BACKEND "TRITON": under
            # 128 queries with static shapes, Inductor otherwise picks its flex-decoding kernel, made for a few
            # queries against a long cache; at the learning run's 64-token text2image batches that forward took
            # 1.18 ms a layer, 6.5x its own backward (H100 profile, 2026-12-05).
            return _compiled_flex_attention()(q, k, v, score_mod=_softcap_score_mod(float(softcap)), enable_gqa=gqa,
                                              kernel_options=FLEX_KERNEL_OPTIONS)
    if backend == "flex_eager":
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, score_mod=_softcap_score_mod(float(softcap)), enable_gqa=gqa)
    raise ValueError(f"unknown attention backend {backend!r} (auto|flex|cudnn|flex_eager|math)")


def modulate(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, D] * (1 + scale), scale [B, G, D] shared by G equal contiguous token groups."""
    groups = scale.shape[1]
    return (x.unflatten(1, (groups, -1)) * (1 + scale.unsqueeze(2))).flatten(1, 2)


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x [B, N, D] * tanh(gate), gate [B, G, D] shared by G equal contiguous token groups."""
    groups = gate.shape[1]
    return (x.unflatten(1, (groups, -1)) * torch.tanh(gate).unsqueeze(2)).flatten(1, 2)


# devices where the fusion below runs. Not the CPU: it was never timed there, and Inductor's CPU flex-attention
# template ignores a view's storage offset, which the fused v slice has (torch 2.14). A test adds "cpu" to trace it.
FUSING_DEVICES = ("cuda",)


def linear_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters autocast runs in its low dtype: those of ``nn.Linear`` layers (weights and biases)."""
    return [p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]


def fused_projections(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several bias-free projections of one input: compiled under autocast on a GPU, one matrix product split back.

    There Inductor folds the weights' concatenation into the cast to the compute dtype that autocast makes
    anyway, and the product fills the GPU where alone the narrow K and V projections do not (a 4096x768 output
    is 84 tiles for 132 SMs on an H100). Eager (the predictor), or with the weights already in the compute
    dtype (FSDP2's bf16 parameters), the concatenation would copy the weights every call: there one product
    each. The parameters stay separate either way (the released names).
    """
    device = x.device.type
    fusable = (device in FUSING_DEVICES and torch.compiler.is_compiling() and torch.is_autocast_enabled(device)
               and all(type(layer) is nn.Linear and layer.bias is None for layer in layers))
    if not fusable or layers[0].weight.dtype == torch.get_autocast_dtype(device):
        return tuple(layer(x) for layer in layers)
    product = F.linear(x, torch.cat([layer.weight for layer in layers]))
    return product.split([layer.out_features for layer in layers], dim=-1)


# --------------------------------------------------------------------------------------------
# 3. Transformer block
# --------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Soft-capped GQA self-attention with RoPE, plus gated cross-attention to the caption."""

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.softcap = cfg.attn_softcap
        kv_width = cfg.num_kv_heads * hd

        self.wq = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.wk = nn.Linear(d, kv_width, bias=False)
        self.wv = nn.Linear(d, kv_width, bias=False)
        # caption keys / values, one zero-initialised tanh gate per head
        self.wk_y = nn.Linear(cfg.caption_channels, kv_width, bias=False)
        self.wv_y = nn.Linear(cfg.caption_channels, kv_width, bias=False)
        self.gate = nn.Parameter(torch.zeros(cfg.num_heads))
        self.wo = nn.Linear(cfg.num_heads * hd, d, bias=False)

        if cfg.qk_norm:
            self.q_norm = nn.LayerNorm(cfg.num_heads * hd)
            self.k_norm = nn.LayerNorm(kv_width)
            self.ky_norm = nn.LayerNorm(kv_width, eps=1e-6)
        else:
            self.q_norm = self.k_norm = self.ky_norm = nn.Identity()

    def forward(self, x, rope_cos, rope_sin, text, text_mask, backend: str = "auto"):
        b, n, _ = x.shape
        heads, kv_heads, hd = self.n_heads, self.n_kv_heads, self.head_dim

        q, k, v = fused_projections(x, self.wq, self.wk, self.wv)
        q = self.q_norm(q).view(b, n, heads, hd)
        k = self.k_norm(k).view(b, n, kv_heads, hd)
        v = v.view(b, n, kv_heads, hd)
        q = apply_rope(q, rope_cos, rope_sin).transpose(1, 2)  # [B, H, N, d]
        k = apply_rope(k, rope_cos, rope_sin).transpose(1, 2)
        out = softcapped_attention(q, k, v.transpose(1, 2), self.softcap, backend)

        # cross-attention: the same (rotated) queries against the caption, heads tiled
        length = text.shape[1]
        tk, tv = fused_projections(text, self.wk_y, self.wv_y)
        tk = self.ky_norm(tk).view(b, length, kv_heads, hd).transpose(1, 2)
        tv = tv.view(b, length, kv_heads, hd).transpose(1, 2)
        tk = tk.repeat(1, heads // kv_heads, 1, 1)
        tv = tv.repeat(1, heads // kv_heads, 1, 1)
        has_text = text_mask.any(dim=-1)
        # a caption with no valid token attends to nothing: give SDPA a harmless mask, zero it
        safe_mask = (text_mask | ~has_text[:, None])[:, None, None, :]
        out_text = F.scaled_dot_product_attention(q, tk, tv, attn_mask=safe_mask)
        out_text = out_text * (torch.tanh(self.gate).view(1, heads, 1, 1) * has_text.view(b, 1, 1, 1))
        out = out + out_text.to(out.dtype)

        return self.wo(out.transpose(1, 2).reshape(b, n, heads * hd))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        gate, up = fused_projections(x, self.w1, self.w3)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """x += tanh(g1)·N2(Attn(N1(x)·(1+s1)));  x += tanh(g2)·N4(FFN(N3(x)·(1+s2)))."""

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.norm_eps
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(d, cfg.ffn_dim)
        self.attention_norm1 = RMSNorm(d, eps)
        self.attention_norm2 = RMSNorm(d, eps)
        self.ffn_norm1 = RMSNorm(d, eps)
        self.ffn_norm2 = RMSNorm(d, eps)
        self.attention_y_norm = RMSNorm(cfg.caption_channels, eps)
        # conditioning -> (scale_attn, gate_attn, scale_ffn, gate_ffn); no shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 4 * d))

    def forward(self, x, cond, rope_cos, rope_sin, text, text_mask, backend: str = "auto"):
        scale_attn, gate_attn, scale_ffn, gate_ffn = self.adaLN_modulation(cond).chunk(4, dim=-1)
        h = self.attention(modulate(self.attention_norm1(x), scale_attn), rope_cos, rope_sin,
                           self.attention_y_norm(text), text_mask, backend)
        x = x + gated(self.attention_norm2(h), gate_attn)
        h = self.feed_forward(modulate(self.ffn_norm1(x), scale_ffn))
        return x + gated(self.ffn_norm2(h), gate_ffn)


class FinalLayer(nn.Module):
    """Affine-free LayerNorm, adaLN scale, linear projection back to patch pixels."""

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(d, cfg.patch_volume * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, d))

    def forward(self, x, cond):
        return self.linear(modulate(self.norm_final(x), self.adaLN_modulation(cond)))


# --------------------------------------------------------------------------------------------
# 4. The model
# --------------------------------------------------------------------------------------------


class NextDiT(nn.Module):
    """Multi-view flow-matching Next-DiT (see the module docstring for all conventions).

    Attributes a caller may switch:
      ``gradient_checkpointing`` (bool): recompute each block in backward while training
        (re-entrant ``torch.utils.checkpoint``: use ``loss.backward()``, not ``autograd.grad``).
      ``attn_backend`` (str): "auto" | "flex" | "cudnn" | "flex_eager" | "math" (``softcapped_attention``).
    """

    TIMESTEP_SCALE = 1000.0  # forward takes sigma * TIMESTEP_SCALE

    def __init__(self, cfg: NextDiTConfig | str = "onediffusion-2.8b"):
        super().__init__()
        if isinstance(cfg, str):
            cfg = CONFIGS[cfg]
        self.config = cfg
        self.gradient_checkpointing = False
        self.attn_backend = "auto"

        self.x_embedder = nn.Linear(cfg.patch_volume * cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.cond_dim, cfg.frequency_embedding_size)
        self.y_embedder = nn.Sequential(nn.LayerNorm(cfg.caption_channels, eps=1e-6),
                                        nn.Linear(cfg.caption_channels, cfg.cond_dim))
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.reset_parameters()

    # -- initialisation (training from scratch; loading a checkpoint overwrites all of it) --
    def reset_parameters(self):
        """Xavier linears, N(0, 0.02) timestep MLP, adaLN-zero: every block starts as identity,
        cross-attention gates at 0, and the output projection at 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)) and getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.layers:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
            nn.init.zeros_(block.attention.gate)
        for linear in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    # -- tokens <-> latents --
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, C, H, W] -> [B, N, pT*pH*pW*C], tokens (view, row, col), features (pT, pH, pW, C)."""
        b, f, c, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, f // pt, pt, c, h // ph, ph, w // pw, pw)
        x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # b, f', h', w', pt, ph, pw, c
        return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Inverse of ``patchify`` with ``out_channels``."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_channels
        x = tokens.reshape(tokens.shape[0], f, h, w, pt, ph, pw, c)
        x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # b, f', pt, c, h', ph, w', pw
        return x.reshape(tokens.shape[0], f * pt, c, h * ph, w * pw)

    def _timestep_groups(self, timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Timesteps -> [B, G]: one value per equal contiguous group of tokens.

        scalar or [B] -> G = 1 (all tokens); [B, F] -> G = F/pT (one per view); shaped like the
        latents -> G = N (each token gets the mean over its patch, as the released model does).
        """
        b, f = latents.shape[:2]
        pt = self.config.patch_size[0]
        t = torch.as_tensor(timesteps, device=latents.device).float()
        if t.ndim == 0:
            return t.expand(b, 1)
        if t.ndim == 1:
            return t.expand(b).unsqueeze(1) if t.numel() in (1, b) else self._bad_timesteps(t, latents)
        if t.ndim == 2:
            if t.shape != (b, f):
                self._bad_timesteps(t, latents)
            return t.reshape(b, f // pt, pt).double().mean(dim=-1).float()
        if t.ndim == 5:
            try:
                t = t.expand(latents.shape)
            except RuntimeError:
                self._bad_timesteps(t, latents)
            # float64 sum: a patch of equal values averages to exactly that value
            return self.patchify(t.double()).mean(dim=-1).float()
        self._bad_timesteps(t, latents)

    @staticmethod
    def _bad_timesteps(t, latents):
        raise ValueError(f"NextDiT: timesteps of shape {tuple(t.shape)} fit neither [B], [B, F] nor "
                         f"the latents' shape {tuple(latents.shape)}")

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        """Predict the flow-matching velocity.

        Args:
          latents:   [B, F, C, H, W] noisy latents of all views (H, W divisible by the patch).
          timesteps: σ·1000 per view, [B, F] (or [B] / scalar for one value for all views), or a
                     tensor shaped like ``latents`` for per-element noise levels (averaged per
                     patch, so every token is modulated by its own value).  1000 = pure noise,
                     0 = clean.  Clean condition views: 0 (paper, SPEC), or the schedule's
                     smallest timestep to reproduce the released pipeline exactly.
          text:      [B, L, caption_channels] caption encoder features.
          text_mask: [B, L] bool, True = real token.
        Returns:
          [B, F, out_channels, H, W] velocity ε - x, in ``latents.dtype``.
        """
        cfg = self.config
        if latents.ndim != 5:
            raise ValueError(f"NextDiT: latents must be [B, F, C, H, W], got shape {tuple(latents.shape)}")
        b, f, c, h, w = latents.shape
        pt, ph, pw = cfg.patch_size
        if c != cfg.in_channels or f % pt or h % ph or w % pw:
            raise ValueError(f"NextDiT: latents {tuple(latents.shape)} need C={cfg.in_channels} and F, H, W "
                             f"divisible by the patch {cfg.patch_size}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.caption_channels:
            raise ValueError(f"NextDiT: text must be [B={b}, L, {cfg.caption_channels}], got {tuple(text.shape)}")
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"NextDiT: text_mask {tuple(text_mask.shape)} must be {tuple(text.shape[:2])}")
        grid = (f // pt, h // ph, w // pw)
        if max(grid) > cfg.rope_max_positions:
            raise ValueError(f"NextDiT: token grid {grid} exceeds rope_max_positions={cfg.rope_max_positions}")

        # the dtype the model was loaded in, read off a norm: master weights (model/master_adamw.py) turn the linear
        # layers to bf16 under autocast and leave the norms, and with them the inputs, in fp32
        dtype = self.y_embedder[0].weight.dtype
        text_mask = text_mask.bool()
        text = text.to(dtype)

        # conditioning: timestep embedding (per group) + masked mean of the caption
        t_groups = self._timestep_groups(timesteps, latents)  # [B, G]
        weights = text_mask.unsqueeze(-1).float()
        pooled = ((text.float() * weights).sum(dim=1) / (weights.sum(dim=1) + 1e-8)).to(dtype)
        cond = self.t_embedder(t_groups) + self.y_embedder(pooled).unsqueeze(1)  # [B, G, cond_dim]

        angles = rope_angles(grid, cfg.head_dim, cfg.rope_theta, latents.device)
        rope_cos, rope_sin = angles.cos(), angles.sin()

        x = self.x_embedder(self.patchify(latents.to(dtype)))
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        if use_checkpoint and not x.requires_grad:
            # re-entrant checkpointing needs a grad-requiring input; nothing upstream trains
            x = x.detach().requires_grad_(True)
        for block in self.layers:
            args = (x, cond, rope_cos, rope_sin, text, text_mask, self.attn_backend)
            if use_checkpoint:
                # re-entrant: the forward runs under no_grad, so no saved-tensor hooks are active
                # around the compiled flex_attention (non-reentrant hooks break its compilation)
                x = checkpoint(block, *args, use_reentrant=True)
            else:
                x = block(*args)
        x = self.final_layer(x, cond)
        return self.unpatchify(x, grid).to(latents.dtype)


# --------------------------------------------------------------------------------------------
# 5. Checkpoint helpers
# --------------------------------------------------------------------------------------------


def expected_state_dict_shapes(cfg: NextDiTConfig) -> dict[str, tuple[int, ...]]:
    """The released ``NextDiT`` state dict, name -> shape, written out from its source code.

    Deliberately independent of the modules above, so a test can check them against it.
    """
    d = cfg.hidden_size
    heads, kv = cfg.num_heads, cfg.num_kv_heads
    hd = d // heads
    cap = cfg.caption_channels
    cond = min(d, 1024)  # released: min(hidden_size, 1024)
    patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    # released LLaMA feed-forward width: hidden_dim = 4*dim -> int(2*hidden_dim/3)
    # -> int(multiplier * .) -> rounded up to a multiple of multiple_of
    ffn = int(2 * (4 * d) / 3)
    if cfg.ffn_dim_multiplier is not None:
        ffn = int(cfg.ffn_dim_multiplier * ffn)
    ffn = cfg.multiple_of * ((ffn + cfg.multiple_of - 1) // cfg.multiple_of)

    table: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (d, patch * cfg.in_channels),
        "x_embedder.bias": (d,),
        "t_embedder.mlp.0.weight": (cond, 256),
        "t_embedder.mlp.0.bias": (cond,),
        "t_embedder.mlp.2.weight": (cond, cond),
        "t_embedder.mlp.2.bias": (cond,),
        "y_embedder.0.weight": (cap,),
        "y_embedder.0.bias": (cap,),
        "y_embedder.1.weight": (cond, cap),
        "y_embedder.1.bias": (cond,),
        "final_layer.linear.weight": (patch * cfg.out_channels, d),
        "final_layer.linear.bias": (patch * cfg.out_channels,),
        "final_layer.adaLN_modulation.1.weight": (d, cond),
        "final_layer.adaLN_modulation.1.bias": (d,),
    }
    for i in range(cfg.depth):
        p = f"layers.{i}."
        table.update({
            p + "attention.wq.weight": (heads * hd, d),
            p + "attention.wk.weight": (kv * hd, d),
            p + "attention.wv.weight": (kv * hd, d),
            p + "attention.wk_y.weight": (kv * hd, cap),
            p + "attention.wv_y.weight": (kv * hd, cap),
            p + "attention.gate": (heads,),
            p + "attention.wo.weight": (d, heads * hd),
            p + "feed_forward.w1.weight": (ffn, d),
            p + "feed_forward.w2.weight": (d, ffn),
            p + "feed_forward.w3.weight": (ffn, d),
            p + "attention_norm1.weight": (d,),
            p + "attention_norm2.weight": (d,),
            p + "ffn_norm1.weight": (d,),
            p + "ffn_norm2.weight": (d,),
            p + "attention_y_norm.weight": (cap,),
            p + "adaLN_modulation.1.weight": (4 * d, cond),
            p + "adaLN_modulation.1.bias": (4 * d,),
        })
        if cfg.qk_norm:
            for name, width in (("q_norm", heads * hd), ("k_norm", kv * hd), ("ky_norm", kv * hd)):
                table[p + f"attention.{name}.weight"] = (width,)
                table[p + f"attention.{name}.bias"] = (width,)
    return table


def count_parameters(cfg: NextDiTConfig) -> int:
    """Exact parameter count of a config (from the released table)."""
    return sum(math.prod(shape) for shape in expected_state_dict_shapes(cfg).values())


# released diffusers ``config.json`` key -> our field
_RELEASED_KEYS = {
    "hidden_size": "hidden_size", "depth": "depth", "num_heads": "num_heads",
    "num_kv_heads": "num_kv_heads", "multiple_of": "multiple_of",
    "ffn_dim_multiplier": "ffn_dim_multiplier", "norm_eps": "norm_eps",
    "caption_channels": "caption_channels", "qk_norm": "qk_norm", "patch_size": "patch_size",
    "in_channels": "in_channels", "rotary_max_length": "rope_max_positions",
}


def config_from_released_json(path: str | Path) -> NextDiTConfig:
    """Build a config from the released transformer's diffusers ``config.json``."""
    raw = json.loads(Path(path).read_text())
    values = {ours: raw[theirs] for theirs, ours in _RELEASED_KEYS.items() if theirs in raw}
    if values.get("num_kv_heads") is None:
        values["num_kv_heads"] = values.get("num_heads", NextDiTConfig.num_heads)
    if "ffn_dim_multiplier" not in values:
        values["ffn_dim_multiplier"] = None
    in_ch = values.get("in_channels", NextDiTConfig.in_channels)
    values["out_channels"] = 2 * in_ch if raw.get("pred_sigma") else in_ch
    return replace(NextDiTConfig(), **values)


def _safetensor_files(folder: Path) -> list[Path]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    return sorted(folder.glob("diffusion_pytorch_model*.safetensors"))


def load_released(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  config: NextDiTConfig | None = None, key: str = "model.checkpoint") -> NextDiT:
    """Load the released OneDiffusion ``transformer`` folder (strict key/shape match).

    The folder holds ``diffusion_pytorch_model*.safetensors`` (single file or sharded with its
    ``.index.json``) and usually the diffusers ``config.json``; the architecture comes from
    ``config`` if given, else from that ``config.json``, else ``CONFIGS["onediffusion-2.8b"]``.
    ``dtype`` casts the floating tensors (default: as stored).  Never downloads anything; errors
    name ``key``, where the path came from.
    """
    from safetensors.torch import load_file

    folder = Path(resolve_model_path(path, key))
    files = _safetensor_files(folder) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{key}: no released transformer (diffusion_pytorch_model*.safetensors) "
                                f"at {folder}; point it at the local 'transformer' folder")
    missing_shards = [str(f) for f in files if not f.is_file()]
    if missing_shards:
        raise FileNotFoundError(f"{key}: shard(s) missing under {folder}: {', '.join(missing_shards)}")
    if config is None:
        cfg_json = folder / "config.json"
        config = config_from_released_json(cfg_json) if cfg_json.is_file() else CONFIGS["onediffusion-2.8b"]

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device=str(device)))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    with torch.device("meta"):
        model = NextDiT(config)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(wanted.keys() - got.keys())
    unexpected = sorted(got.keys() - wanted.keys())
    wrong = sorted(k for k in wanted.keys() & got.keys() if wanted[k] != got[k])
    if missing or unexpected or wrong:
        def head(keys):
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise RuntimeError(f"{key}: {folder} does not match the NextDiT config "
                           f"(missing {len(missing)}: {head(missing)}; unexpected {len(unexpected)}: "
                           f"{head(unexpected)}; wrong shape {len(wrong)}: "
                           f"{head([f'{k} {got[k]} vs {wanted[k]}' for k in wrong])})")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
