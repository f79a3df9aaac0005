"""cuDNN soft-capped attention: what runs without a GPU. Its kernels and their numbers (output and dq, dk, dv
against the float32 reference) are checked on the device by ``benchmarks/bench_attention.py --only cudnn``;
here, the graphs as cuDNN's frontend describes and validates them, the score modifier they carry evaluated
node by node, the ops' registration, layouts and gradients with the planned kernel replaced by float64 math on
the CPU, which kernel "auto" picks, and the input checks."""

from __future__ import annotations

import cudnn
import pytest
import torch

from model import cudnn_attention
from model.cudnn_attention import (
    _empty_out,
    _empty_stats,
    describe_backward,
    describe_forward,
    new_graph,
    softcapped_attention_cudnn,
)
from model.nextdit import _math_attention, attention_kernel, softcapped_attention

CAP = 30.0


def heads_view(b, n, heads, d, device="cpu", dtype=torch.bfloat16):
    """[B, H, N, d] as the model's attention makes it: a transpose of the projections' [B, N, H, d]."""
    return torch.randn(b, n, heads, d, device=device, dtype=dtype).transpose(1, 2)


def test_both_graphs_validate_and_write_the_layouts_they_are_given():
    q, k, v = (heads_view(2, 64, h, 24) for h in (6, 2, 2))
    out, stats = _empty_out(q, v).transpose(1, 2), _empty_stats(q)
    fwd = new_graph(torch.bfloat16)
    t = describe_forward(fwd, q, k, v, out)
    fwd.validate()
    fwd.build_operation_graph()
    assert (t["out"].get_dim(), t["out"].get_stride()) == ([2, 6, 64, 24], [9216, 24, 144, 1])
    # dk laid out contiguously while k is a transposed view: the graph writes dk's layout, not k's
    dq, dk, dv = torch.empty_like(q), torch.empty(2, 2, 64, 24, dtype=torch.bfloat16), torch.empty_like(v)
    bwd = new_graph(torch.bfloat16)
    t = describe_backward(bwd, q, k, v, out, out, stats, dq, dk, dv)
    bwd.validate()
    bwd.build_operation_graph()
    assert t["dk"].get_stride() == [3072, 1536, 24, 1] and t["dq"].get_stride() == list(q.stride())


def evaluate(graph, values: dict) -> dict:
    """The pointwise nodes a score modifier adds, evaluated in float64 (tanh_backward: loss·(1 - tanh²(input)))."""
    ops = {"mul": lambda a, b: a * b, "tanh": torch.tanh, "tanh_backward": lambda dy, x: dy * (1 - torch.tanh(x) ** 2)}
    for node in graph.inspect()["nodes"]:
        args = [values[node["inputs"][f"IN_{i}"]] for i in range(len(node["inputs"]))]
        values[node["outputs"]["OUT_0"]] = ops[node["params"]["mode"]](*args)
    return values


@pytest.mark.parametrize("describe", ["forward", "backward"])
def test_the_score_modifier_is_the_soft_cap_and_its_derivative(describe):
    q, k = (heads_view(1, 16, h, 8) for h in (2, 1))
    out, stats = _empty_out(q, k).transpose(1, 2), _empty_stats(q)
    graph = new_graph(torch.bfloat16)
    if describe == "forward":
        describe_forward(graph, q, k, k, out)
    else:
        describe_backward(graph, q, k, k, out, out, stats, q, k, k)
    params = graph.inspect()["nodes"][0]["params"]
    sub = new_graph(torch.bfloat16)
    score = sub.tensor(name="score", dim=[1, 2, 16, 16], stride=[512, 256, 16, 1], data_type=cudnn.data_type.FLOAT)
    capped = params["score_mod"](sub, score)
    # the backward's: fed the score's own values as the incoming gradient
    grad = params["score_mod_bprop"](sub, score) if describe == "backward" else None
    s = torch.linspace(-200, 200, 512, dtype=torch.float64).view(1, 2, 16, 16).requires_grad_()
    values = evaluate(sub, {"score": s.detach(), "cap": CAP, "inv_cap": 1 / CAP})
    torch.testing.assert_close(values[capped.get_name()], CAP * torch.tanh(s.detach() / CAP))
    if grad is not None:
        expected, = torch.autograd.grad(CAP * torch.tanh(s / CAP), s, s.detach())
        torch.testing.assert_close(values[grad.get_name()], expected)


def capped_attention_grads(q, k, v, grad_out, cap):
    """dq, dk, dv of soft-capped GQA attention, by hand: custom ops run below autograd, so no autograd here."""
    rep = q.shape[1] // k.shape[1]
    k2, v2 = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = q.shape[-1] ** -0.5
    th = torch.tanh(q @ k2.transpose(-1, -2) * scale / cap)
    p = (cap * th).softmax(-1)
    dp = grad_out @ v2.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * (1 - th**2) * scale
    per_kv_head = lambda x: x.unflatten(1, (k.shape[1], rep)).sum(2)  # noqa: E731
    return ds @ k2, per_kv_head(ds.transpose(-1, -2) @ q), per_kv_head(p.transpose(-1, -2) @ grad_out)


@pytest.fixture
def math_kernel(monkeypatch):
    """The planned cuDNN kernel replaced by float64 math on the CPU that writes each output through the layout its
    graph was planned with, as the kernel does: the ops' own plumbing (registration, fakes, layouts, autograd)
    runs as on the GPU."""
    def planned(describe, **tensors):
        return {name: (t.shape, t.stride()) for name, t in tensors.items()}

    def write(target, layout, value):
        torch.as_strided(target, *layout, target.storage_offset()).copy_(value)

    def run(layouts, softcap, device, **t):
        q, k, v = (t[n].double() for n in "qkv")
        if "dq" not in t:
            write(t["out"], layouts["out"], _math_attention(q, k, v, softcap))
            logits = q @ k.repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2) * q.shape[-1] ** -0.5
            return t["stats"].copy_((softcap * torch.tanh(logits / softcap)).logsumexp(-1, keepdim=True))
        grads = capped_attention_grads(q, k, v, t["grad_out"].double(), softcap)
        for name, grad in zip(("dq", "dk", "dv"), grads):
            write(t[name], layouts[name], grad)

    monkeypatch.setattr(cudnn_attention, "_planned", planned)
    monkeypatch.setattr(cudnn_attention, "_run", run)


def test_the_ops_pass_torchs_custom_op_checks(math_kernel):
    q, k, v = (heads_view(2, 10, h, 8, dtype=torch.float32).requires_grad_() for h in (4, 2, 2))
    torch.library.opcheck(torch.ops.onegen.softcapped_attention_cudnn, (q, k, v, CAP),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_gradients_of_views_into_a_fused_projection(math_kernel):
    # q, k, v sliced from one [B, N, 3, H, d] projection: not densely packed, so their gradients are laid out
    # otherwise than they are, and the backward graph must write the gradients' layouts
    qkv = torch.randn(2, 12, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out, stats = torch.ops.onegen.softcapped_attention_cudnn(q, k, v, CAP)
    assert out.shape == (2, 12, 4, 8) and out.is_contiguous() and not stats.requires_grad
    grad_out = torch.randn_like(out).transpose(1, 2).contiguous().transpose(1, 2)  # another layout than out's
    got, = torch.autograd.grad(out, qkv, grad_out)
    exact, = torch.autograd.grad(_math_attention(q, k, v, CAP).transpose(1, 2), qkv, grad_out)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)  # the reference works in float32
    out.add_(1)  # a plain tensor, not a view: the block may edit it in place


def test_auto_is_cudnn_on_cuda_in_half_precision_where_installed_and_the_head_dim_fits(monkeypatch):
    assert cudnn_attention.AVAILABLE  # the Makefile installs the frontend; this machine's torch brings cuDNN 9.24
    bf16 = torch.bfloat16
    assert attention_kernel("auto", True, 96, bf16) == "cudnn" == attention_kernel("auto", True, 120, torch.float16)
    assert attention_kernel("auto", True, 100, bf16) == "flex" == attention_kernel("auto", True, 256, bf16)
    assert attention_kernel("auto", True, 96, torch.float32) == "flex"  # fp32 training / evals.precision fp32
    assert attention_kernel("auto", False, 96, bf16) == "math" and attention_kernel("flex", True, 96, bf16) == "flex"
    monkeypatch.setattr(cudnn_attention, "AVAILABLE", False)
    assert attention_kernel("auto", True, 96, bf16) == "flex"


def test_bad_inputs_name_the_problem():
    cpu = torch.zeros(1, 4, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        softcapped_attention_cudnn(cpu, cpu, cpu, CAP)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        softcapped_attention(cpu, cpu, cpu, CAP, backend="cudnn")
    with pytest.raises(ValueError, match="unknown attention backend 'cuda'.*cudnn"):
        softcapped_attention(cpu, cpu, cpu, CAP, backend="cuda")
    with pytest.raises(ValueError, match="head dim 20 must be a multiple of 8"):
        softcapped_attention_cudnn(*(torch.zeros(1, 4, 8, 20, dtype=torch.bfloat16),) * 3, CAP)
    with pytest.raises(ValueError, match="4 query heads are no multiple of 3 KV heads"):
        kv = torch.zeros(1, 3, 8, 16, dtype=torch.bfloat16)
        softcapped_attention_cudnn(cpu, kv, kv, CAP)
    with pytest.raises(ValueError, match="share a dtype, bfloat16 or float16"):
        softcapped_attention_cudnn(cpu, cpu.float(), cpu, CAP)
    with pytest.raises(ValueError, match="share a dtype, bfloat16 or float16"):
        softcapped_attention_cudnn(*(cpu.float(),) * 3, CAP)
