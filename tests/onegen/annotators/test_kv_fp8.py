"""The FP8 KV cache: per-token quantisation, the cache layer, the decode attention's reference against exact
attention, the Triton kernel against the reference (on the CPU through Triton's interpreter), and the captioner
decoding from it on a tiny random LLaVA-NeXT."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onegen.annotators.base import AnnotatorError
from onegen.annotators.captioner import Captioner
from onegen.annotators.kv_fp8 import (
    FP8, Fp8StaticLayer, decode_attention, fp8_static_cache, quantize_per_token, reference_decode_attention,
    triton_decode_attention)
from onegen.config import CaptionerConfig
from tests.tiny_annotators import build_tiny_llava_next

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_per_token_quantisation_keeps_each_vector_within_fp8_precision():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 64) * torch.logspace(-3, 3, 5)[None, None, :, None]  # token scales 1e-3 .. 1e3
    x[0, 0, 0] = 0
    q, s = quantize_per_token(x)
    assert q.dtype == FP8 and s.shape == (2, 3, 5) and s.dtype == torch.float32
    back = q.float() * s[..., None]
    err = (back - x).abs() / x.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    assert err.max() <= 2**-4  # e4m3: 3 mantissa bits, relative to the vector's own maximum
    assert torch.equal(back[0, 0, 0], torch.zeros(64)) and torch.isfinite(back).all()
    assert (q.float().abs().amax(-1)[x.abs().amax(-1) > 0] == torch.finfo(FP8).max).all()  # the full range is used


def test_layer_stores_fp8_returns_the_prompt_states_then_its_cache_and_resets():
    torch.manual_seed(0)
    layer = Fp8StaticLayer(max_cache_len=16)
    k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    keys, values = layer.update(k, v)
    assert keys is k and values is v  # the prefill attends in full precision
    assert int(layer.cumulative_length) == 5 and layer.keys.shape == (2, 2, 16, 8) and layer.keys.dtype == torch.uint8
    k1, v1 = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    keys, values = layer.update(k1, v1)
    assert keys.dtype == values.dtype == FP8 and int(layer.cumulative_length) == 6
    assert keys.data_ptr() == layer.keys.data_ptr() and values.data_ptr() == layer.values.data_ptr()
    stored = keys.float() * layer.key_scales[..., None]
    assert torch.allclose(stored[:, :, :5], k, atol=0.07 * k.abs().max()) and torch.allclose(
        values[:, :, 5:6].float() * layer.value_scales[:, :, 5:6, None], v1, atol=0.07 * v1.abs().max())
    assert not layer.keys[:, :, 6:].any()
    layer.reset()
    assert int(layer.cumulative_length) == 0 and not layer.keys.any() and not layer.key_scales.any()


def test_layer_update_and_decode_attention_trace_whole():
    """What the compiled prefill layers and decode step trace (on CUDA the kernel's op; here its reference):
    no graph break, so no host sync in either."""
    torch.manual_seed(0)
    layer = Fp8StaticLayer(max_cache_len=16)
    layer.lazy_initialization(torch.zeros(2, 2, 0, 8), torch.zeros(2, 2, 0, 8))
    keep = torch.ones(2, 16, dtype=torch.bool)

    def step(q, k, v):
        keys, values = layer.update(k, v)
        if k.shape[-2] > 1:
            return keys
        return decode_attention(q, keys, values, layer, keep, 8**-0.5)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=True)
    compiled(None, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8))
    q, k1, v1 = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    out = compiled(q, k1, v1)
    assert out.shape == (2, 1, 4, 8) and int(layer.cumulative_length) == 6
    eager = reference_decode_attention(q.reshape(2, 2, 2, 8), layer.keys.view(FP8), layer.values.view(FP8),
                                       layer.key_scales,
                                       layer.value_scales, keep, layer.cumulative_length, 8**-0.5)
    assert torch.allclose(out, eager.reshape(2, 1, 4, 8))


def _decode_case(b=3, hkv=2, groups=4, d=128, length=650, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv, groups, d, generator=g)
    k = torch.randn(b, hkv, length + 50, d, generator=g) * 3
    v = torch.randn(b, hkv, length + 50, d, generator=g)
    keep = torch.ones(b, length + 50, dtype=torch.bool)
    keep[1, :37] = False  # left padding of different lengths
    keep[2, :300] = False
    return q, k, v, keep, torch.tensor(length)


def test_reference_decode_attention_is_exact_attention_over_the_dequantised_cache():
    q, k, v, keep, length = _decode_case()
    (k8, ks), (v8, vs) = quantize_per_token(k), quantize_per_token(v)
    out = reference_decode_attention(q, k8, v8, ks, vs, keep, length, 128**-0.5)
    n = int(length)
    exact = F.scaled_dot_product_attention(q, (k8.float() * ks[..., None])[:, :, :n],
                                           (v8.float() * vs[..., None])[:, :, :n], attn_mask=keep[:, None, None, :n])
    assert torch.allclose(out, exact, atol=1e-5)
    full_precision = F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], attn_mask=keep[:, None, None, :n])
    assert (out - full_precision).abs().max() < 0.05 * full_precision.abs().max()  # FP8's cost: small, not zero
    assert not torch.equal(out, full_precision)


def test_triton_kernel_matches_the_reference_under_the_interpreter(tmp_path):
    """The kernel itself, split or not, with left pads and a cache longer than its filled length; Triton's
    interpreter runs it on CPU tensors (it must be on before the kernel is defined: a fresh process). In float32:
    the interpreter (Triton 3.8) multiplies bfloat16 operands of ``tl.dot`` as raw bits, so the GPU's bf16 dots
    are covered by benchmarks/bench_decode_attention.py, which prints the kernel's difference from bf16 SDPA."""
    q, k, v, keep, length = _decode_case()
    (k8, ks), (v8, vs) = quantize_per_token(k), quantize_per_token(v)
    torch.save((q, k8, v8, ks, vs, keep, length), tmp_path / "case.pt")
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        from onegen.annotators.kv_fp8 import triton_decode_attention
        case = torch.load(sys.argv[1] + "/case.pt")
        outs = {s: triton_decode_attention(*case, 128 ** -0.5, splits=s, dot_f16=False) for s in (1, 3)}
        q, k8, v8, ks, vs, keep, length = case
        for tiny in (1.0, 1e-4):  # float16 dots, also over values small enough to underflow float16 products
            outs[("f16", tiny)] = triton_decode_attention(q, k8, v8, ks, vs * tiny, keep, length, 128 ** -0.5,
                                                          splits=3, dot_f16=True)
        torch.save(outs, sys.argv[1] + "/outs.pt")
    """))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    reference = reference_decode_attention(q, k8, v8, ks, vs, keep, length, 128**-0.5)
    outs = torch.load(tmp_path / "outs.pt")
    assert set(outs) == {1, 3, ("f16", 1.0), ("f16", 1e-4)}
    for splits in (1, 3):
        assert torch.allclose(outs[splits], reference, atol=1e-4), (splits, (outs[splits] - reference).abs().max())
    for tiny in (1.0, 1e-4):  # float16 operands: ~1e-3 relative, at any scale of the values
        expected = reference_decode_attention(q, k8, v8, ks, vs * tiny, keep, length, 128**-0.5)
        error = (outs[("f16", tiny)] - expected).abs().max() / expected.abs().max()
        assert 0 < error < 2e-3, (tiny, error)


def test_kernel_launch_passes_only_what_inductor_can_type():
    """Inside the compiled decode step Inductor generates the kernel's launch, and it types a Python float
    argument fp64: that made the kernel's running max fp64 and failed its compile on an H100. So the runtime
    arguments are ints and tensors (the key mask as bytes, not bool), and the softmax scale is a constexpr."""
    q, k, v, keep, length = _decode_case()
    (k8, ks), (v8, vs) = quantize_per_token(k), quantize_per_token(v)
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.constexprs = {p.name for p in kernel.params if p.is_constexpr}

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.constexprs, args, kwargs))

    triton_decode_attention(q, k8, v8, ks, vs, keep, length, 128**-0.5, launch=Recorder)
    (constexprs, args, kwargs), = launches
    assert all(isinstance(a, int) or (isinstance(a, torch.Tensor) and a.dtype != torch.bool) for a in args), \
        [type(a).__name__ if not isinstance(a, torch.Tensor) else a.dtype for a in args]
    floats = {name for name, value in kwargs.items() if isinstance(value, float)}
    assert floats and floats <= constexprs

def test_cache_refuses_sliding_window_layers():
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=16, vocab_size=64)
    with pytest.raises(ValueError, match="full-attention layers only"):
        fp8_static_cache(config, 128)
    config.sliding_window = None
    cache = fp8_static_cache(config, 128)
    assert [type(layer) for layer in cache.layers] == [Fp8StaticLayer] * 2 and cache.is_compileable


def test_config_needs_a_static_cache_and_sdpa():
    assert CaptionerConfig(kv_cache="fp8").kv_cache == "fp8"
    for bad in ({"static_cache": False}, {"attn_implementation": "flash_attention_2"}, {"backend": "vllm"}):
        with pytest.raises(ValueError, match="kv_cache: fp8 needs"):
            CaptionerConfig(kv_cache="fp8", **bad)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava_next")
    build_tiny_llava_next(folder)
    return folder


def test_captioner_decodes_from_the_fp8_cache_batch_invariantly(folder):
    sizes = [(32, 32), (32, 64), (64, 32), (48, 40), (64, 64), (20, 30)]  # six anyres token counts: left padding
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    cfg = CaptionerConfig(path=folder, batch_size=6, max_new_tokens=6, min_words=3, max_words=40, max_entities=3)
    plain, fp8 = Captioner.load(cfg, device="cpu"), Captioner.load(cfg.model_copy(update={"kv_cache": "fp8"}),
                                                                   device="cpu")
    assert fp8.version.endswith(".kvfp8-f16-b128s2." + plain.version.rsplit(".", 1)[1]) and fp8.version != plain.version
    together = [g.token_ids for g in fp8.vlm.generate(ims, min_new_tokens=6)]
    cache = fp8.vlm._cache
    assert all(type(layer) is Fp8StaticLayer for layer in cache.layers) and cache.layers[0].keys.dtype == torch.uint8
    assert all(layer.self_attn.fp8_kv_layer is c for layer, c in zip(fp8.vlm.model.get_decoder().layers,
                                                                    cache.layers))
    alone = [fp8.vlm.generate([im], min_new_tokens=6)[0].token_ids for im in ims]
    assert together == alone and all(len(t) == 6 for t in alone)
    reference = [g.token_ids for g in plain.vlm.generate(ims, min_new_tokens=6)]
    assert [t[0] for t in together] == [t[0] for t in reference]  # the first token comes from the exact prefill
    agree = np.mean([a == b for t, r in zip(together, reference) for a, b in zip(t, r)])
    assert agree >= 0.8, agree  # the decode steps read an FP8 cache: close to, not always equal to, the plain one


def test_fp8_cache_on_a_model_with_sliding_windows_names_the_key(folder):
    cfg = CaptionerConfig(path=folder, batch_size=2, max_new_tokens=2, min_words=1, kv_cache="fp8")
    cap = Captioner.load(cfg, device="cpu")
    cap.vlm.model.config.text_config.sliding_window = 4
    with pytest.raises(AnnotatorError, match=r"annotators\.captioner\.kv_cache=fp8: .*full-attention"):
        cap.vlm.generate([np.zeros((32, 32, 3), np.uint8)])


def test_decode_step_over_the_fp8_cache_compiles_whole(folder):
    """generate's compiled decode step (the model, our attention function, the FP8 cache layers) traced with
    fullgraph=True, as CUDA runs it (here through AOTAutograd without Inductor): no graph break, and the tokens of
    the eager steps."""
    from transformers import CompileConfig, GenerationConfig

    cfg = CaptionerConfig(path=folder, batch_size=2, max_new_tokens=4, min_words=1, kv_cache="fp8")
    vlm = Captioner.load(cfg, device="cpu").vlm
    rng = np.random.default_rng(0)
    inputs = vlm._inputs([rng.integers(0, 256, (32, 64, 3), dtype=np.uint8),
                          rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)])
    length = inputs["input_ids"].shape[1]

    def tokens(compiled: bool) -> list:
        compile_config = CompileConfig(backend="aot_eager", fullgraph=True, mode=None)
        compile_config._compile_all_devices = True  # transformers' switch for compiling off CUDA
        gen = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=vlm.pad_id,
                               compile_config=compile_config, disable_compile=not compiled)
        with torch.no_grad():
            ids = vlm.model.generate(**inputs, past_key_values=vlm._static_cache(2, length + 4), generation_config=gen)
        return ids[:, length:].tolist()

    torch._dynamo.reset()
    assert tokens(compiled=True) == tokens(compiled=False)
    assert hasattr(vlm.model, "_compiled_call")  # the compiled path really ran
