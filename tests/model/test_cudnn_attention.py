"""cuDNN soft-capped attention: what runs without a GPU. Its kernels and their numbers (output and dq, dk, dv
against the float32 reference) are checked on the device by ``benchmarks/bench_attention.py --only cudnn``;
here, the graphs as cuDNN's frontend describes and validates them, the score modifier they carry evaluated
node by node, the ops' shapes and layouts through autograd on meta tensors, and the input checks."""

from __future__ import annotations

import cudnn
import pytest
import torch

from model.cudnn_attention import (
    _empty_out,
    _empty_stats,
    describe_backward,
    describe_forward,
    new_graph,
    softcapped_attention_cudnn,
)
from model import cudnn_attention
from model.nextdit import attention_kernel, softcapped_attention


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


def test_both_graphs_validate_with_outputs_laid_out_as_their_inputs():
    q, k, v = (heads_view(2, 64, h, 24, device="cpu").detach() for h in (6, 2, 2))
    out, stats = _empty_out(q, v), _empty_stats(q)
    fwd = new_graph(torch.bfloat16)
    t = describe_forward(fwd, q, k, v, out)
    fwd.validate()
    fwd.build_operation_graph()
    assert (t["out"].get_dim(), t["out"].get_stride()) == (list(out.shape), list(out.stride()))
    bwd = new_graph(torch.bfloat16)
    t = describe_backward(bwd, q, k, v, out, out, stats)
    bwd.validate()
    bwd.build_operation_graph()
    for name, like in (("dq", q), ("dk", k), ("dv", v)):
        assert (t[name].get_dim(), t[name].get_stride()) == (list(like.shape), list(like.stride()))


def evaluate(graph, values: dict) -> dict:
    """The pointwise nodes a score modifier adds, evaluated in float64 (tanh_backward: loss·(1 - tanh²(input)))."""
    ops = {"mul": lambda a, b: a * b, "tanh": torch.tanh, "tanh_backward": lambda dy, x: dy * (1 - torch.tanh(x) ** 2)}
    for node in graph.inspect()["nodes"]:
        args = [values[node["inputs"][f"IN_{i}"]] for i in range(len(node["inputs"]))]
        values[node["outputs"]["OUT_0"]] = ops[node["params"]["mode"]](*args)
    return values


@pytest.mark.parametrize("describe", ["forward", "backward"])
def test_the_score_modifier_is_the_soft_cap_and_its_derivative(describe):
    q, k = (heads_view(1, 16, h, 8, device="cpu").detach() for h in (2, 1))
    out, stats = _empty_out(q, k), _empty_stats(q)
    graph = new_graph(torch.bfloat16)
    if describe == "forward":
        describe_forward(graph, q, k, k, out)
    else:
        describe_backward(graph, q, k, k, out, out, stats)
    params = graph.inspect()["nodes"][0]["params"]
    sub = new_graph(torch.bfloat16)
    score = sub.tensor(name="score", dim=[1, 2, 16, 16], stride=[512, 256, 16, 1], data_type=cudnn.data_type.FLOAT)
    capped = params["score_mod"](sub, score)
    # the backward's: fed the score's own values as the incoming gradient
    grad = params["score_mod_bprop"](sub, score) if describe == "backward" else None
    cap, s = 30.0, torch.linspace(-200, 200, 512, dtype=torch.float64).view(1, 2, 16, 16).requires_grad_()
    values = evaluate(sub, {"score": s.detach(), "cap": cap, "inv_cap": 1 / cap})
    torch.testing.assert_close(values[capped.get_name()], cap * torch.tanh(s.detach() / cap))
    if grad is not None:
        expected, = torch.autograd.grad(cap * torch.tanh(s / cap), s, s.detach())
        torch.testing.assert_close(values[grad.get_name()], expected)


def test_auto_is_cudnn_on_cuda_where_installed_and_the_head_dim_fits(monkeypatch):
    assert cudnn_attention.AVAILABLE  # the Makefile installs the frontend; this machine's torch brings cuDNN 9.24
    assert attention_kernel("auto", True, 96) == "cudnn" and attention_kernel("auto", True, 120) == "cudnn"
    assert attention_kernel("auto", True, 100) == "flex" and attention_kernel("auto", True, 256) == "flex"
    assert attention_kernel("auto", False, 96) == "math" and attention_kernel("flex", True, 96) == "flex"
    monkeypatch.setattr(cudnn_attention, "AVAILABLE", False)
    assert attention_kernel("auto", True, 96) == "flex"
