"""Soft-capped self-attention on cuDNN's fused flash-attention kernels (``nvidia-cudnn-frontend``).

Why a second kernel: SDPA's kernels have no logit soft-cap, and flex attention's Triton kernels multiply at
the head dim rounded up to a power of two (96 as 128, 72 as 128). cuDNN's SDPA graph takes the head dim as it
is and a score modifier in both passes: ``cap·tanh(s/cap)`` forward, ``dS·(1 - tanh²(s/cap))`` backward,
applied after the 1/sqrt(d) scale as FlashAttention's ``softcap`` is. GQA is native (query head h reads K/V
head h // (H / Hkv), as ``softcapped_attention``). Measured on an H100, forward + backward
(benchmarks/bench_attention.py, 2026-12-06): 0.755 ms against flex's 0.810 at the Lumina2 2.6B shape, 0.883
against 1.102 at the learning run's 8-view batches, and under CUDA graphs 0.411 against 0.463 at its 64-token
text2image batches; the compiled train step at the Lumina2 shape (bench_train_step.py) 25.10 img/s against
diffusers' 20.33 in the same job, 1.23x, where flex made it 1.18x.

Graphs are described here, planned once per (shapes, strides, dtype, device) and cached; the cap is passed at
launch. Both passes are ``torch.library`` custom ops, so ``torch.compile`` and CUDA graphs see one opaque call
each. The output is laid out [B, N, H, d] in memory, so the block's ``transpose(1, 2).reshape`` back to tokens
costs no copy. One cuDNN handle per device serves every stream (each launch sets the caller's): launch from one
thread per device.
"""

from __future__ import annotations

import functools

import torch

try:  # installed without its dependencies (Makefile): the graph API needs only the cuDNN library torch brings
    import cudnn

    # score modifiers in SDPA graphs need cuDNN 9.6 (the frontend's own tests skip below it)
    AVAILABLE = cudnn.backend_version() >= 90600
except Exception:  # absent, or its library would not load: the model's "auto" falls back to flex
    cudnn, AVAILABLE = None, False
DTYPES = (torch.bfloat16, torch.float16)

_PLANNED: dict[tuple, tuple] = {}


def _cudnn():
    if cudnn is None:
        raise RuntimeError("attention backend 'cudnn' needs the nvidia-cudnn-frontend package "
                           "(pip install --no-deps nvidia-cudnn-frontend)")
    return cudnn


@functools.lru_cache(maxsize=None)
def _handle(device_index: int):
    with torch.cuda.device(device_index):  # a handle belongs to the device current at its creation
        return _cudnn().create_handle()


def _data_type(dtype: torch.dtype):
    types = _cudnn().data_type
    return {torch.bfloat16: types.BFLOAT16, torch.float16: types.HALF}.get(dtype, types.FLOAT)


def new_graph(dtype: torch.dtype, handle=None):
    float32 = _cudnn().data_type.FLOAT
    return _cudnn().pygraph(io_data_type=_data_type(dtype), intermediate_data_type=float32,
                            compute_data_type=float32, handle=handle)


def _inputs(graph, **tensors: torch.Tensor) -> dict:
    return {name: graph.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=_data_type(t.dtype))
            for name, t in tensors.items()}


def _caps(graph) -> dict:
    """The cap and its reciprocal, floats the kernel receives by value at launch."""
    float32 = _cudnn().data_type.FLOAT
    return {name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], is_pass_by_value=True,
                               data_type=float32) for name in ("cap", "inv_cap")}


def describe_forward(graph, q, k, v, out) -> dict:
    """The forward graph: soft-capped SDPA writing ``out``'s layout and the softmax stats. Name -> graph tensor."""
    t = _inputs(graph, q=q, k=k, v=v) | _caps(graph)

    def score_mod(sub, score):
        return sub.mul(a=sub.tanh(input=sub.mul(a=score, b=t["inv_cap"])), b=t["cap"])

    t["out"], t["stats"] = graph.sdpa(name="softcapped_sdpa", q=t["q"], k=t["k"], v=t["v"], generate_stats=True,
                                      attn_scale=q.shape[-1] ** -0.5, score_mod=score_mod)
    t["out"].set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride()))
    t["stats"].set_output(True).set_data_type(_cudnn().data_type.FLOAT)
    return t


def describe_backward(graph, q, k, v, out, grad_out, stats, dq, dk, dv) -> dict:
    """The backward graph, writing ``dq``, ``dk``, ``dv``'s layouts. Name -> graph tensor."""
    t = _inputs(graph, q=q, k=k, v=v, out=out, grad_out=grad_out, stats=stats) | _caps(graph)
    scaled = {}

    def score_mod(sub, score):  # the forward, recomputed: keeps s/cap for the derivative
        scaled["x"] = sub.mul(a=score, b=t["inv_cap"])
        return sub.mul(a=sub.tanh(input=scaled["x"]), b=t["cap"])

    def score_mod_bprop(sub, grad):  # d(cap·tanh(s/cap))/ds = 1 - tanh²(s/cap)
        return sub.tanh_backward(loss=grad, input=scaled["x"])

    t["dq"], t["dk"], t["dv"] = graph.sdpa_backward(
        name="softcapped_sdpa_backward", q=t["q"], k=t["k"], v=t["v"], o=t["out"], dO=t["grad_out"],
        stats=t["stats"], attn_scale=q.shape[-1] ** -0.5, score_mod=score_mod, score_mod_bprop=score_mod_bprop)
    for name, like in (("dq", dq), ("dk", dk), ("dv", dv)):
        t[name].set_output(True).set_dim(list(like.shape)).set_stride(list(like.stride()))
    return t


def _planned(describe, **tensors: torch.Tensor) -> tuple:
    """(graph, workspace bytes, name -> graph tensor), built on first use of these layouts (the cap comes at
    launch: one plan serves any)."""
    first = next(iter(tensors.values()))
    key = (describe.__name__, first.dtype, first.device.index,
           *((name, tuple(t.shape), tuple(t.stride())) for name, t in tensors.items()))
    if key not in _PLANNED:
        cudnn = _cudnn()
        graph = new_graph(first.dtype, _handle(first.device.index))
        names = describe(graph, **tensors)
        try:
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            graph.check_support()
            graph.build_plans()
        except Exception as e:
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
            raise RuntimeError(f"cuDNN {cudnn.backend_version_string()} cannot run soft-capped attention "
                               f"({describe.__name__}, {shapes}): {e}; use the flex attention backend "
                               "(train.attention: flex)") from e
        _PLANNED[key] = (graph, graph.get_workspace_size(), names)
    return _PLANNED[key]


def _run(planned: tuple, softcap: float, device: torch.device, **tensors: torch.Tensor) -> None:
    graph, workspace_size, names = planned
    handle = _handle(device.index)
    _cudnn().set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    pack = {names[name]: t for name, t in tensors.items()}
    pack[names["cap"]] = torch.full((1, 1, 1, 1), softcap, dtype=torch.float32)
    pack[names["inv_cap"]] = torch.full((1, 1, 1, 1), 1.0 / softcap, dtype=torch.float32)
    graph.execute(pack, torch.empty(max(workspace_size, 1), dtype=torch.uint8, device=device), handle=handle)


def _empty_out(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output as the op returns it: [B, N, H, d], the block's token-major layout."""
    b, h, n, _ = q.shape
    return q.new_empty(b, n, h, v.shape[-1])


def _empty_stats(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty(*q.shape[:3], 1, dtype=torch.float32)


# The ops take and give [B, H, N, d] views for q, k, v, and [B, N, H, d] for the output: an output that is itself a
# view would be one autograd forbids editing in place.
@torch.library.custom_op("onegen::softcapped_attention_cudnn", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, stats = _empty_out(q, v), _empty_stats(q)
    heads_view = out.transpose(1, 2)
    planned = _planned(describe_forward, q=q, k=k, v=v, out=heads_view)
    _run(planned, softcap, q.device, q=q, k=k, v=v, out=heads_view, stats=stats)
    return out, stats


@_attention.register_fake
def _(q, k, v, softcap):
    return _empty_out(q, v), _empty_stats(q)


@torch.library.custom_op("onegen::softcapped_attention_cudnn_backward", mutates_args=())
def _attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        out: torch.Tensor, stats: torch.Tensor,
                        softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out = grad_out.contiguous()  # one layout per plan: dO as the output is laid out
    # empty_like keeps a densely packed input's strides, and lays out any other (a slice of a fused projection)
    # contiguously: the graph writes the layouts it is given
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    heads = {"out": out.transpose(1, 2), "grad_out": grad_out.transpose(1, 2)}
    planned = _planned(describe_backward, q=q, k=k, v=v, **heads, stats=stats, dq=dq, dk=dk, dv=dv)
    _run(planned, softcap, q.device, q=q, k=k, v=v, **heads, stats=stats, dq=dq, dk=dk, dv=dv)
    return dq, dk, dv


@_attention_backward.register_fake
def _(grad_out, q, k, v, out, stats, softcap):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, softcap = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, out, stats)
    ctx.mark_non_differentiable(stats)
    ctx.softcap = softcap


def _backward(ctx, grad_out, grad_stats):
    q, k, v, out, stats = ctx.saved_tensors
    return (*_attention_backward(grad_out, q, k, v, out, stats, ctx.softcap), None)


_attention.register_autograd(_backward, setup_context=_setup_context)


def fits(head_dim: int) -> bool:
    """cuDNN's fused kernels take head dims that are multiples of 8 up to 128."""
    return head_dim % 8 == 0 and head_dim <= 128


def softcapped_attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float) -> torch.Tensor:
    """``cap·tanh``-capped softmax attention, no mask. q: [B, H, N, d]; k, v: [B, Hkv, N, d] (CUDA, bf16 or fp16,
    d a multiple of 8 up to 128). Returns [B, H, N, d], a view of a [B, N, H, d] tensor."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        raise ValueError(f"cuDNN attention: q, k, v must share a dtype, bfloat16 or float16, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if not fits(q.shape[-1]):
        raise ValueError(f"cuDNN attention: head dim {q.shape[-1]} must be a multiple of 8 up to 128")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"cuDNN attention: {q.shape[1]} query heads are no multiple of {k.shape[1]} KV heads")
    if not q.is_cuda:
        raise ValueError("cuDNN attention runs on CUDA tensors only")
    # the kernels read the head dim contiguous, and each row of their own (no broadcast strides)
    q, k, v = (t if t.stride(-1) == 1 and 0 not in t.stride() else t.contiguous() for t in (q, k, v))
    return _attention(q, k, v, float(softcap))[0].transpose(1, 2)
