"""FP8 W8A8 linears for a VLM's language model: the captioner's ``quantize: fp8`` option.

Each ``nn.Linear`` of the decoder layers becomes an :class:`Fp8Linear`: weights stored in float8
e4m3 with one scale per output row, activations quantised to e4m3 at run time with one scale per
token row, and the product taken by ``torch._scaled_mm`` (Hopper's FP8 tensor cores: twice the
bf16 FLOP rate for the prefill, half the weight bytes for each decode step). This is the dynamic
per-token / per-channel scheme serving engines ship for 7B-class models.

Per-row activation scales keep a row's result independent of every other row of its batch, so
quantising never makes a caption depend on its batch. It does change the numbers against bf16:
captions from an FP8 run are not byte-equal to a bf16 run's, and the option is off by default.
The embeddings, the LM head, the vision tower and the projector stay in their own dtype.

This is the transformers backend's scheme; the vLLM and SGLang backends get ``quantization="fp8"``,
their own online FP8 (per-tensor activation scales), which these guarantees do not cover.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] -> (float8 values, float32 scales [..., 1]) with ``values * scales ≈ x`` per row."""
    # float32 throughout, so the division and the GEMM use the same scale. Compiled, it is the same
    # function up to float rounding (bit-equal on CPU, tested; on CUDA Inductor multiplies by
    # 1/448 and divides approximately: an ulp at most). Every row goes through the same code either
    # way, so a row's result never depends on its batch.
    scale = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


@functools.cache
def _fused_quantize_rows():
    return torch.compile(quantize_rows, dynamic=True)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` as one fused kernel on CUDA, even where the captioner runs eager (the
    prefill): eager, its ~8 passes over the activations cost what FP8 saves in the GEMMs (H100:
    prefill 105 ms/image in bf16 and in eager FP8). Inside a compiled region (the decode step) it
    is traced inline."""
    if torch.compiler.is_compiling() or not x.is_cuda:
        return quantize_rows(x)
    return _fused_quantize_rows()(x)


class Fp8Linear(nn.Module):
    """``y = x Wᵀ + b`` with W in float8 (per output row scales) and x quantised per token row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"fp8: {self.in_features}x{self.out_features} linear is not a multiple of 16")
        w8, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", w8)  # [N, K] row-major: .t() is the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x8, x_scale = quantize_activations(x.reshape(-1, self.in_features).contiguous())  # row-major for the GEMM
        y = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_fp8_device(device: torch.device, dtype: torch.dtype) -> None:
    """FP8 GEMMs need compute capability 8.9 (Ada, Hopper) on CUDA, and bf16 around them: row-wise
    scaled GEMMs output bf16 only there, and an fp16 scale underflows to 0 for quiet rows (0/0 = NaN).
    CPU runs them (slowly) for tests, in bf16 or float32."""
    if dtype == torch.float16 or (device.type == "cuda" and dtype != torch.bfloat16):
        raise RuntimeError(f"fp8 needs the model in bfloat16 (dtype: bfloat16 or auto), not {dtype}")
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"fp8 runs on CUDA (compute capability >= 8.9) or, for tests, the CPU; not {device.type}")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise RuntimeError(f"fp8 needs a GPU of compute capability >= 8.9 (Ada, Hopper); {name} is "
                           f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` by an :class:`Fp8Linear`, in place; returns how many."""
    targets = [(name, child) for name, child in module.named_modules() if isinstance(child, nn.Linear)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, Fp8Linear(linear))
    return len(targets)
