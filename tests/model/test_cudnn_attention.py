"""cuDNN soft-capped attention: what runs without a GPU. Its kernels and their numbers (output and dq, dk, dv
against the float32 reference) are checked on the device by ``benchmarks/bench_attention.py --only cudnn``;
here, the ops' shapes and layouts through autograd on meta tensors, and the input checks."""

from __future__ import annotations

import pytest
import torch

from model.cudnn_attention import softcapped_attention_cudnn
from model.nextdit import softcapped_attention


def heads_view(b, n, heads, d, device="meta", dtype=torch.bfloat16):
    """[B, H, N, d] as the model's attention makes it: a transpose of the projections' [B, N, H, d]."""
    return torch.empty(b, n, heads, d, device=device, dtype=dtype).transpose(1, 2).requires_grad_()


def test_output_is_token_major_and_gradients_keep_the_inputs_layout():
    q, k, v = heads_view(2, 10, 6, 24), heads_view(2, 10, 2, 24), heads_view(2, 10, 2, 24)
    out, stats = torch.ops.onegen.softcapped_attention_cudnn(q, k, v, 30.0)
    assert out.shape == (2, 6, 10, 24) and stats.shape == (2, 6, 10, 1) and stats.dtype == torch.float32
    # [B, N, H, d] in memory: the block's transpose(1, 2).reshape back to tokens is a view
    assert out.transpose(1, 2).is_contiguous()
    out.float().sum().backward()
    for t in (q, k, v):
        assert t.grad.shape == t.shape and t.grad.stride() == t.stride() and t.grad.dtype == t.dtype


def test_bad_inputs_name_the_problem():
    cpu = torch.zeros(1, 4, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        softcapped_attention_cudnn(cpu, cpu, cpu, 30.0)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        softcapped_attention(cpu, cpu, cpu, 30.0, backend="cudnn")
    with pytest.raises(ValueError, match="unknown attention backend 'cuda'.*cudnn"):
        softcapped_attention(cpu, cpu, cpu, 30.0, backend="cuda")
    with pytest.raises(ValueError, match="head dim 20 must be a multiple of 8"):
        softcapped_attention_cudnn(*(torch.zeros(1, 4, 8, 20, dtype=torch.bfloat16),) * 3, 30.0)
    with pytest.raises(ValueError, match="4 query heads are no multiple of 3 KV heads"):
        kv = torch.zeros(1, 3, 8, 16, dtype=torch.bfloat16)
        softcapped_attention_cudnn(cpu, kv, kv, 30.0)
    with pytest.raises(ValueError, match="share a dtype, bfloat16 or float16"):
        softcapped_attention_cudnn(cpu, cpu.float(), cpu, 30.0)
    with pytest.raises(ValueError, match="share a dtype, bfloat16 or float16"):
        softcapped_attention_cudnn(*(cpu.float(),) * 3, 30.0)
