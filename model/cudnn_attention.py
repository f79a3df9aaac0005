"""Soft-capped self-attention on cuDNN's fused flash-attention kernels (``nvidia-cudnn-frontend``).

Why a second kernel: SDPA's kernels have no logit soft-cap, and flex attention's Triton kernels multiply at
the head dim rounded up to a power of two (96 as 128). cuDNN's SDPA graph takes the head dim as it is and a
score modifier in both passes: ``cap·tanh(s/cap)`` forward, ``dS·(1 - tanh²(s/cap))`` backward, applied
after the 1/sqrt(d) scale as FlashAttention's ``softcap`` is. GQA is native (query head h reads K/V head
h // (H / Hkv), as ``softcapped_attention``).

Graphs are built once per (shapes, strides, dtype, cap, device) and cached. Both passes are
``torch.library`` custom ops, so ``torch.compile`` and CUDA graphs see one opaque call each. The output is
laid out [B, N, H, d] in memory (a [B, H, N, d] view), so the block's ``transpose(1, 2).reshape`` back to
tokens costs no copy.
"""

from __future__ import annotations

import functools

import torch

_GRAPHS: dict[tuple, tuple] = {}


@functools.lru_cache(maxsize=1)
def _cudnn():
    try:
        import cudnn
    except ImportError as e:
        raise RuntimeError("attention backend 'cudnn' needs the nvidia-cudnn-frontend package "
                           "(pip install nvidia-cudnn-frontend)") from e
    return cudnn


@functools.lru_cache(maxsize=None)
def _handle(device_index: int):
    return _cudnn().create_handle()


def _io_type(dtype: torch.dtype):
    cudnn = _cudnn()
    return {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[dtype]


def _scalar(graph, name: str):
    """A float the kernel receives by value at launch (the cap and its reciprocal)."""
    cudnn = _cudnn()
    return graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], is_pass_by_value=True,
                        data_type=cudnn.data_type.FLOAT)


def _tensor(graph, name: str, t: torch.Tensor, data_type=None):
    return graph.tensor(name=name, dim=list(t.shape), stride=list(t.stride()),
                        data_type=data_type if data_type is not None else _io_type(t.dtype))


def _new_graph(dtype: torch.dtype, device_index: int):
    cudnn = _cudnn()
    return cudnn.pygraph(io_data_type=_io_type(dtype), intermediate_data_type=cudnn.data_type.FLOAT,
                         compute_data_type=cudnn.data_type.FLOAT, handle=_handle(device_index))


def _finish(graph):
    cudnn = _cudnn()
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph.get_workspace_size()


def _key(kind: str, softcap: float, *tensors: torch.Tensor) -> tuple:
    return (kind, softcap, tensors[0].dtype, tensors[0].device.index,
            *((tuple(t.shape), tuple(t.stride())) for t in tensors))


def _forward_graph(q, k, v, out, softcap: float):
    key = _key("fwd", softcap, q, k, v, out)
    if key not in _GRAPHS:
        g = _new_graph(q.dtype, q.device.index)
        tq, tk, tv = _tensor(g, "q", q), _tensor(g, "k", k), _tensor(g, "v", v)
        cap, inv_cap = _scalar(g, "softcap"), _scalar(g, "inv_softcap")

        def score_mod(sub, score):
            return sub.mul(a=sub.tanh(input=sub.mul(a=score, b=inv_cap)), b=cap)

        to, tstats = g.sdpa(name="softcapped_sdpa", q=tq, k=tk, v=tv, generate_stats=True,
                            attn_scale=q.shape[-1] ** -0.5, score_mod=score_mod)
        to.set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride()))
        tstats.set_output(True).set_data_type(_cudnn().data_type.FLOAT)
        _GRAPHS[key] = (g, _finish(g), (tq, tk, tv, to, tstats, cap, inv_cap))
    return _GRAPHS[key]


def _backward_graph(q, k, v, out, grad_out, stats, softcap: float):
    key = _key("bwd", softcap, q, k, v, out, grad_out)
    if key not in _GRAPHS:
        g = _new_graph(q.dtype, q.device.index)
        tq, tk, tv = _tensor(g, "q", q), _tensor(g, "k", k), _tensor(g, "v", v)
        to, tdo = _tensor(g, "o", out), _tensor(g, "dO", grad_out)
        tstats = _tensor(g, "stats", stats, _cudnn().data_type.FLOAT)
        cap, inv_cap = _scalar(g, "softcap"), _scalar(g, "inv_softcap")
        scaled = {}

        def score_mod(sub, score):  # the forward, recomputed: keeps s/cap for the derivative
            scaled["x"] = sub.mul(a=score, b=inv_cap)
            return sub.mul(a=sub.tanh(input=scaled["x"]), b=cap)

        def score_mod_bprop(sub, grad):  # d(cap·tanh(s/cap))/ds = 1 - tanh²(s/cap)
            return sub.tanh_backward(loss=grad, input=scaled["x"])

        tdq, tdk, tdv = g.sdpa_backward(name="softcapped_sdpa_backward", q=tq, k=tk, v=tv, o=to, dO=tdo,
                                        stats=tstats, attn_scale=q.shape[-1] ** -0.5, score_mod=score_mod,
                                        score_mod_bprop=score_mod_bprop)
        for tgrad, like in ((tdq, q), (tdk, k), (tdv, v)):
            tgrad.set_output(True).set_dim(list(like.shape)).set_stride(list(like.stride()))
        _GRAPHS[key] = (g, _finish(g), (tq, tk, tv, to, tdo, tstats, tdq, tdk, tdv, cap, inv_cap))
    return _GRAPHS[key]


def _run(graph, workspace_size: int, pack: dict, device: torch.device) -> None:
    handle = _handle(device.index)
    _cudnn().set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    workspace = torch.empty(max(workspace_size, 1), dtype=torch.uint8, device=device)
    graph.execute(pack, workspace, handle=handle)


def _caps(softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, 1, 1, 1), softcap), torch.full((1, 1, 1, 1), 1.0 / softcap)


def _empty_out(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, h, n, _ = q.shape
    return q.new_empty(b, n, h, v.shape[-1]).transpose(1, 2)


@torch.library.custom_op("onegen::softcapped_attention_cudnn", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = _empty_out(q, v)
    stats = q.new_empty(*q.shape[:3], 1, dtype=torch.float32)
    graph, workspace, (tq, tk, tv, to, tstats, cap, inv_cap) = _forward_graph(q, k, v, out, softcap)
    cap_value, inv_value = _caps(softcap)
    _run(graph, workspace, {tq: q, tk: k, tv: v, to: out, tstats: stats, cap: cap_value, inv_cap: inv_value},
         q.device)
    return out, stats


@_attention.register_fake
def _(q, k, v, softcap):
    return _empty_out(q, v), q.new_empty(*q.shape[:3], 1, dtype=torch.float32)


@torch.library.custom_op("onegen::softcapped_attention_cudnn_backward", mutates_args=())
def _attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        out: torch.Tensor, stats: torch.Tensor,
                        softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if grad_out.stride() != out.stride():  # one layout per cached graph: dO as the output is laid out
        grad_out = torch.empty_like(out).copy_(grad_out)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    graph, workspace, tensors = _backward_graph(q, k, v, out, grad_out, stats, softcap)
    tq, tk, tv, to, tdo, tstats, tdq, tdk, tdv, cap, inv_cap = tensors
    cap_value, inv_value = _caps(softcap)
    _run(graph, workspace, {tq: q, tk: k, tv: v, to: out, tdo: grad_out, tstats: stats, tdq: dq, tdk: dk, tdv: dv,
                            cap: cap_value, inv_cap: inv_value}, q.device)
    return dq, dk, dv


@_attention_backward.register_fake
def _(grad_out, q, k, v, out, stats, softcap):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, softcap = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, out, stats)
    ctx.softcap = softcap


def _backward(ctx, grad_out, grad_stats):
    q, k, v, out, stats = ctx.saved_tensors
    return (*_attention_backward(grad_out, q, k, v, out, stats, ctx.softcap), None)


_attention.register_autograd(_backward, setup_context=_setup_context)


def softcapped_attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float) -> torch.Tensor:
    """``cap·tanh``-capped softmax attention, no mask. q: [B, H, N, d]; k, v: [B, Hkv, N, d] (CUDA, bf16 or fp16,
    d a multiple of 8 up to 128); any strides with the head dim innermost. Returns [B, H, N, d]."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"cuDNN attention: q, k, v must share a dtype, bfloat16 or float16, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        raise ValueError(f"cuDNN attention: head dim {q.shape[-1]} must be a multiple of 8 up to 128")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"cuDNN attention: {q.shape[1]} query heads are no multiple of {k.shape[1]} KV heads")
    if not q.is_cuda:
        raise ValueError("cuDNN attention runs on CUDA tensors only")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _attention(q, k, v, float(softcap))[0]
