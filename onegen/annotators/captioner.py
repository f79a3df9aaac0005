"""VLM captioner and entity lister (paper §4): one generation per image gives a 100-150 word
caption and up to 10 entity nouns (``caption_text``), for any transformers image-text-to-text
model in a local folder; LLaVA-NeXT (``LlavaNextForConditionalGeneration``) is the paper's.

An answer that fails validation is regenerated once with seeded sampling and, if still invalid,
returned as ``CaptionResult(ok=False, error=...)`` for the caller's ``errors.jsonl``; it never
becomes a caption. The caller stores the VLM caption beside the source's original one
(``CaptionResult.captions(original)`` -> ``{"vlm": ..., "original": ...}``).

Why it is fast (LLaVA-NeXT-7B = Mistral-7B + CLIP-L/336 on one H100, 672² images)
--------------------------------------------------------------------------------
* The job. anyres turns a 672² image into 5 tiles -> 576 + 48·(48+1) = 2928 image tokens, ~3010
  with the prompt. Prefill costs ~2·7.0e9·3010 ≈ 42 TFLOP + ~2.4 attention + ~1.8 CLIP ≈ 46
  TFLOP per image: ≥ 47 ms at the dense bf16 peak (989 TFLOP/s), ~70 ms at a realistic 65%.
  The KV cache holds 2·32 layers·8 heads·128·2 B = 128 KiB per token, 0.41 GB per image at
  3160 tokens. Each decode step reads the weights (14.5 GB) once for the batch and every
  image's KV once: 14.5/B + 0.41 GB per image per step.
* The naive loop (``generate``, batch 8, dynamic cache, eager): ~1000 kernel launches per decode
  step and 2.2 GB of reads per image per step -> ~40 ms/step, ~0.8 s per image -> 1.23 img/s,
  decode-bound.
* Large batches: B = 40 cuts the weight share of a decode step 5x; at B ≳ 36 the KV reads
  dominate, so larger B barely helps anyres. Memory sets the limit: measured on an 80 GB H100,
  anyres B = 40 peaks at 45 GiB, and B = 64 ran out of memory in the prefill MLP (57 GB held plus
  20 GB of fragmented cache). FP8 halves weights and activations: anyres B = 64 peaks at 54.5 GiB
  (``quantize: fp8``'s default batch then; 96 since, 128 with the FP8 KV cache), and its decode costs 37 ms per image against B = 40's
  54 (H200, 2026-11-24). Base-only tiles need 0.1 GB of KV per image: B = 256 peaks at 61 GiB. Beyond the KV
  cache, the prefill MLP's gate/up activations (~0.2 GB per anyres image) set the peak: ``prefill_mlp_rows``
  runs them a few images at a time (``RowChunkedMLP``): batch 96 peaks at 47.3 GiB with the FP8 KV cache, and
  batch 128 (its default) at 61.1 GiB on an 80 GB H100.
* Static KV cache + torch.compile (a transformers ``StaticCache``, what ``cache_implementation=
  "static"`` builds, with which ``generate`` compiles the decode step for CUDA graphs): one graph
  launch per step instead of ~1000 kernel launches.
* Compiled prefill layers (``compile_prefill_layers``): ``generate`` runs the prefill eager, and
  a profile of it (H200, FP8, batch 40) spent ~40 of its 75 ms of GPU time per image outside the
  GEMMs and attention: float32 RMSNorm passes, RoPE's cats, copies, and three quantisations of one
  input for q, k and v. Each decoder layer compiled with dynamic shapes fuses those; a graph per
  layer (dynamo keeps ``layer_idx`` static) serves every prompt length.
* The inputs of the next batch (processor: tiling, resizing, normalising, ~10 ms of host time per
  image) are made in a second thread while the current batch generates. Their token ids come from the prompt
  tokenized once, the image placeholder repeated to each image's count (``expand_placeholder``), rather than
  from the processor tokenizing ~3,000 ids per image again; the first batch checks them against the processor's.
* Packed-GQA decode attention (``sdpa`` here): under compile, transformers' SDPA path copies the 8
  KV heads out to 32 query heads before every decode attention (4x the KV bytes written, then
  read: ~230 GB per step at B = 64). We fold the 4 query heads of each KV head into the query
  length instead, so each decode step reads the KV once (~26 GB). Prefill keeps stock SDPA.
* FP8 KV cache (``kv_cache: fp8``, ``onegen.annotators.kv_fp8``): at batch 96 the keys and values are ~84% of a
  decode step's bytes; stored as float8 with a scale per token and head they are half as many, read by a Triton
  split-KV kernel that folds the scales into the scores and the softmax weights, its dots on float16 operands
  (float8 e4m3 converts to float16 in one instruction: 1.20x bf16 operands on an H100). The prefill attends to its
  own full-precision states; only the decode steps read FP8.
* Length bucketing: anyres token counts depend on the aspect ratio; images are sorted by count
  (longest first) and cut into batches, so left padding (FLOPs spent on pads) stays small, and
  the first batch fixes the static cache length for the rest (no recompiles for shorter ones).
  The cache itself is kept and reset between batches of the same size, so the decode step's
  CUDA graph replays on the same addresses; a batch size that divides the shard keeps it so.
* Greedy decoding, one pass for caption + entities (instead of two prompts, two prefills).
* The shared prefix. LLaVA's template is ``<s>[INST] <image>\\n{instruction} [/INST]``: only the
  4 tokens before the image are common to all images (0.1% of the prefill), and the instruction
  comes after the image, so its keys/values depend on the image and cannot be reused. Caching
  those 4 tokens would cost a KV copy per batch for no gain, so we don't; the prompt is rendered
  once and the compiled decode graph and cache shape are reused across batches.
* The roofline this leaves: anyres 672² is prefill-bound, ~1/(47 ms + 20 ms) ≈ 15 img/s even
  at peak FLOPs and an ideal decode. Measured (H100, random weights, 2026-11-23,
  ``benchmarks/bench_captioner.py``): anyres B = 40 6.07 img/s against the naive loop's 1.06
  (5.7x), prefill 105 ms + decode 60 ms per image, GPU busy 0.88; ``image_tokens: base`` (577
  image tokens, B = 256) 30.0 img/s (19.7x), prefill 20.5 ms + decode 12.9 ms per image. The
  prefill runs eager at ~45% of the bf16 peak: ``quantize: fp8`` (``onegen.annotators.fp8``,
  W8A8 with per-row scales) doubles the GEMM peak and halves each decode step's weight bytes,
  at the price of captions that differ from bf16's. Its first measurement, with the activations
  quantised eagerly: 6.20 img/s, prefill 105 ms + decode 56 ms per image, peak 38.9 GiB against
  45.4 -- the quantisation passes ate the GEMM gain. Fused into one kernel (H200, which has the
  H100's compute peak): 6.93 img/s, prefill 90.8 ms (10.7 of it the processor) + decode 53.4 ms;
  again a session later 7.35 img/s, 86.5 + 49.7 ms, and its profile put the prefill's FP8 GEMMs
  at 30 ms per image (~1.4 PFLOP/s: near their peak) and ~40 ms in unfused elementwise work.
  With the compiled prefill layers (a graph per layer) and the input thread: B = 40 8.96 img/s,
  prefill 57.9 ms + decode 53.8; B = 64 **10.42 img/s** (5.4x its naive run), prefill 59.0 + decode
  37.0 ms (H200, 2026-11-24). With the FP8 KV cache at B = 128: **12.01 img/s** on one H100 (8.65x its naive
  run), prefill 58.7 + decode 24.5 ms, GPU busy 0.94 (2026-12-05). Still on the table: the decode kernel reads
  the FP8 cache at ~1.3-1.6 TB/s, ``generate`` syncs the host every step, and a batch's decode never overlaps
  the next batch's prefill; the vLLM backend (continuous batching, chunked prefill) removes the latter.

Batching never changes a result: rows are left-padded with masked pads and position ids from
the attention mask, so an image's greedy tokens are the same at batch 1 and batch 64 (up to float
noise, tested on CPU in float32); retries sample with per-image Gumbel noise seeded by the image's
content, so a retry does not depend on its batch either.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from onegen.annotators import caption_text, kv_fp8
from onegen.annotators.base import AnnotatorError, annotator_record, require_path, resolve_device, weights_sha256
from onegen.annotators.batching import check_images
from onegen.annotators.fp8 import check_fp8_device, quantize_linears
from onegen.annotators.kv_fp8 import FP8, decode_attention, fp8_static_cache

if TYPE_CHECKING:
    from onegen.config import CaptionerConfig

NAME = "captioner"
CODE_VERSION = "1"
PACKED_SDPA = "sdpa_packed_gqa"
FLEX_DECODE = "sdpa_flex_decode"
CACHE_ROUND = 128  # static KV cache lengths are multiples of this: few shapes, few compiled graphs
# Retries sample on a dynamic bf16 cache beside the static one (~0.45 GB a row at anyres with 320 new tokens): a
# whole failed batch of 128 at once would not fit on an 80 GB card, 16 rows at a time do.
RETRY_ROWS = 16
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Generation:
    """One raw VLM answer: text, its token ids (up to EOS) and whether it hit max_new_tokens."""

    text: str
    token_ids: tuple[int, ...]
    truncated: bool


@dataclass(frozen=True)
class CaptionResult:
    """The captioner's answer for one image; only ``ok`` results may enter a shard."""

    ok: bool
    caption: str | None
    entities: tuple[str, ...]
    error: str | None
    raw: str  # the VLM's last answer, kept for errors.jsonl
    attempts: int

    def captions(self, original: str | None = None) -> dict[str, str]:
        """The captions a sample stores: the VLM's, beside the source's original one if it has one."""
        if not self.ok:
            raise ValueError(f"an invalid VLM answer is never stored as a caption ({self.error})")
        return {"vlm": self.caption} | ({"original": original} if original else {})


def image_seed(image: np.ndarray, seed: int) -> int:
    """A per-image seed from its pixels, so retries do not depend on which batch the image is in."""
    h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
    h.update(repr((image.shape, seed)).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def _sdpa_packed_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, except that a one-token (decode) query of a grouped-query
    layer is folded onto its KV heads, (B, H, 1, D) -> (B, H_kv, H/H_kv, D), so the KV cache is
    read once instead of being copied out to every query head."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.dtype == FP8:  # a decode step over an Fp8StaticLayer (see kv_fp8)
        keep = attention_mask[:, 0, 0] if attention_mask is not None else torch.ones(
            key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)
        scale = scaling or query.shape[-1] ** -0.5
        return decode_attention(query, key, value, module.fp8_kv_layer, keep, scale), None
    if attention_mask is not None and attention_mask.shape[-1] > key.shape[-2]:
        # an Fp8StaticLayer's prefill attends to the prompt's own states; the mask spans the whole static cache
        attention_mask = attention_mask[..., : key.shape[-2]]
    groups = getattr(module, "num_key_value_groups", 1)
    mask_per_head = attention_mask is not None and attention_mask.shape[1] != 1
    if query.shape[2] != 1 or groups == 1 or mask_per_head or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, h, _, d = query.shape
    out = F.scaled_dot_product_attention(query.reshape(b, h // groups, groups, d), key, value,
                                         attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, 1, h, d), None


def flex_decode_attention(query, key, value, keep: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """One decode step's attention by flex attention: query (B, H, 1, D) against the cache (B, H_kv, L, D),
    ``keep`` the (B, 1, 1, L) boolean SDPA mask; returns (B, 1, H, D) as transformers' attention functions do.

    Compiled inside the decode step, Inductor lowers a short query to its split-KV decoding kernel
    (flash-decoding): the cache of each (row, KV head) is read by several blocks at once. The packed
    SDPA kernel gives each (row, KV head) one block, which read the cache at ~54% of the bandwidth
    bound (H200, batch 40, 3200 keys: 24 of the decode's 44 ms of GPU time per image)."""
    from torch.nn.attention.flex_attention import flex_attention

    keep = keep[:, 0, 0]

    def masked(score, b, h, q_idx, kv_idx):
        return torch.where(keep[b, kv_idx], score, -float("inf"))

    out = flex_attention(query, key, value, score_mod=masked, scale=scale, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)


def _flex_decode(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """:func:`flex_decode_attention` for the compiled decode step; :func:`_sdpa_packed_gqa` everywhere else
    (the prefill, and an eager decode, where flex would run unfused)."""
    if (query.shape[2] != 1 or key.dtype == FP8 or not torch.compiler.is_compiling() or attention_mask is None
            or attention_mask.dtype != torch.bool or attention_mask.shape[1] != 1 or kwargs.get("position_bias") is not None):
        return _sdpa_packed_gqa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                is_causal=is_causal, **kwargs)
    return flex_decode_attention(query, key, value, attention_mask, scaling), None


def use_packed_gqa_sdpa(model, decode: str = "sdpa") -> None:
    """Switch a transformers model to SDPA with packed-GQA decode (masks built as for ``sdpa``), or with
    ``decode="flex"`` to flex attention for the compiled decode step."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name, fn = {"sdpa": (PACKED_SDPA, _sdpa_packed_gqa), "flex": (FLEX_DECODE, _flex_decode)}[decode]
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)


def compile_prefill_layers(model) -> None:
    """Compile each decoder layer of ``model``'s language model, with dynamic shapes, in place.

    ``generate`` compiles only the decode step and runs the prefill eager: ~30 ms of a 672² image's
    75 ms of prefill GPU time went to unfused elementwise passes (float32 RMSNorm, RoPE's cats,
    copies) and FP8 activation quantisation (H200 profile, 2026-11-23). Compiled, each layer fuses
    its norms, rotary embedding, SwiGLU and quantisation, and q/k/v share one quantisation of their
    input. The layers share one code object, but dynamo guards on each layer's ``layer_idx`` (an int
    attribute, which it keeps static): each layer gets its own graph (Inductor's cache makes the later
    ones cheap), so the caller must allow a recompile per layer (``layer_recompiles``). The decode
    step's whole-model compile traces through them as through plain modules. A ``RowChunkedMLP``'s inner MLP is
    compiled on its own (its chunk loop stays outside the layer's graph). Idempotent."""
    for layer in model.get_decoder().layers:
        if layer._compiled_call_impl is None:
            layer.compile(dynamic=True)
        _compile_chunked_mlp(layer)


class RowChunkedMLP(torch.nn.Module):
    """A decoder layer's MLP run on at most ``rows`` batch rows at a time in prefill.

    The prefill's peak memory is its MLP's: the gate and up projections of an anyres 672² prompt (~3,010 tokens,
    Mistral's 14,336 wide) hold ~0.2 GB per image beside the KV cache's 0.39 GB, and at batch 64 the bf16 model ran an
    80 GB H100 out of memory there. Chunked, that transient no longer grows with the batch, and the decode steps,
    which read every weight once per call, keep their whole batch (one token per row: never split). Rows are
    independent in an MLP, so no result changes. The inner module keeps its name, so state-dict keys get one level."""

    def __init__(self, mlp: torch.nn.Module, rows: int):
        super().__init__()
        self.mlp, self.rows = mlp, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 or x.shape[0] <= self.rows:
            return self.mlp(x)
        return self._in_chunks(x)

    @torch.compiler.disable
    def _in_chunks(self, x: torch.Tensor) -> torch.Tensor:
        # Outside the compiled layer: traced, the chunk count would be a constant and each batch size a new graph of
        # every layer. The inner MLP is compiled on its own where the layers are (``compile_prefill_layers``).
        out = None
        for start in range(0, x.shape[0], self.rows):
            part = self.mlp(x[start : start + self.rows])
            if out is None:  # written in place: chunks then a cat would hold the output twice
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[start : start + self.rows] = part
        return out


def chunk_prefill_mlps(model, rows: int) -> None:
    """Wrap every decoder layer's MLP in a ``RowChunkedMLP`` of ``rows`` (or re-set its rows). Idempotent."""
    for layer in model.get_decoder().layers:
        if isinstance(layer.mlp, RowChunkedMLP):
            layer.mlp.rows = rows
        else:
            layer.mlp = RowChunkedMLP(layer.mlp, rows)
        if layer._compiled_call_impl is not None:
            _compile_chunked_mlp(layer)


def _compile_chunked_mlp(layer) -> None:
    if isinstance(layer.mlp, RowChunkedMLP) and layer.mlp.mlp._compiled_call_impl is None:
        layer.mlp.mlp.compile(dynamic=True)


def layer_recompiles(model):
    """Dynamo's recompile limit raised to hold four graphs per decoder layer while the compiled layers run.

    At the default limit (8), the H200 profile of 2026-11-24 found 8 of Mistral's 32 layers compiled and
    the other 24 fallen back to eager (``hit config.recompile_limit``, last reason ``layer_idx == 7``).
    Four, because dynamo specialises a dimension of size 1: batch 1 (a shard's last images) and length 1
    (a decode step, where it is not compiled as a whole) each make another graph of every layer. The
    raised limits hold for every compile inside, the whole-model decode step's too; the accumulated one
    (256 by default) would stop an 80-layer model (LLaVA-NeXT-72B) short."""
    cfg = torch._dynamo.config
    limit = cfg.recompile_limit + 4 * len(model.get_decoder().layers)
    return cfg.patch(recompile_limit=limit, accumulated_recompile_limit=max(cfg.accumulated_recompile_limit, limit))


class _SeededSampling:
    """Temperature sampling as argmax(logits / T + Gumbel noise), the noise of each row drawn from
    that row's own seed and step on the CPU: a sample depends on its image alone, on any device."""

    def __init__(self, seeds: list[int], temperature: float):
        self.seeds, self.temperature, self.step = seeds, temperature, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        noise = torch.stack([self._gumbel(s, scores.shape[-1]) for s in self.seeds]).to(scores.device)
        self.step += 1
        return scores / self.temperature + noise.to(scores.dtype)

    def _gumbel(self, seed: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((seed * 1_000_003 + self.step) % 2**63)
        u = torch.rand(n, generator=g, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        return (-torch.log(-torch.log(u))).float()


def prompt_text(processor, instruction: str, path: Path | str) -> str:
    """The chat-formatted prompt with one image placeholder, rendered once."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    try:
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except ValueError as e:
        raise AnnotatorError(f"annotators.captioner.path: {path} has no usable chat template ({e})") from None


def prompt_pieces(processor, prompt: str, add_special_tokens: bool) -> tuple[list[int], int, list[int]] | None:
    """The prompt's token ids around its one image placeholder, tokenized once: a batch's ids are then these with
    the placeholder repeated to each image's count (``expand_placeholder``), where the processor tokenizes the
    expanded prompt again for every image (~3,000 ids each at anyres 672²). None (the processor makes the ids)
    if the prompt holds no single placeholder or the processor has no separate image step."""
    image_id = getattr(processor, "image_token_id", None)
    if image_id is None or not hasattr(processor, "_process_images"):
        return None
    ids = processor.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
    at = [k for k, t in enumerate(ids) if t == image_id]
    return (ids[: at[0]], image_id, ids[at[0] + 1 :]) if len(at) == 1 else None


def expand_placeholder(pieces: tuple[list[int], int, list[int]], counts: list[int],
                       pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's (input_ids, attention_mask) from a prompt's ids around its one image placeholder (head, the
    placeholder's id, tail), the placeholder repeated ``counts[i]`` times in row i; padded as the processors pad
    for generation: on the left, with ``pad_id``, mask 0 there."""
    head, image_id, tail = pieces
    lengths = [len(head) + n + len(tail) for n in counts]
    ids = torch.full((len(counts), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (n, length) in enumerate(zip(counts, lengths)):
        start = ids.shape[1] - length
        ids[row, start:] = torch.tensor(head + [image_id] * n + tail)
        mask[row, start:] = 1
    return ids, mask


def inputs_from_pieces(processor, images: list[np.ndarray], image_kwargs: dict,
                       pieces: tuple[list[int], int, list[int]], pad_id: int):
    """The processor's call without its tokenizing: its image step (which also says each image's expansion of the
    placeholder), then the ids from ``pieces``. None where an expansion is more than the placeholder repeated."""
    inputs, expansions = processor._process_images(images, **image_kwargs)
    for key in getattr(processor, "unused_input_names", ()):  # what the processor's call drops
        inputs.pop(key, None)
    token = processor.image_token
    counts = [len(e) // len(token) for e in expansions]
    if any(e != token * n for e, n in zip(expansions, counts)):
        return None
    inputs["input_ids"], inputs["attention_mask"] = expand_placeholder(pieces, counts, pad_id)
    return inputs


class TransformersVLM:
    """Batched generation with a transformers image-text-to-text model (see the module docstring)."""

    name = "transformers"

    def __init__(self, model, processor, cfg: CaptionerConfig, instruction: str, path: Path | str = "<in memory>"):
        self.model, self.processor, self.cfg = model, processor, cfg
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.device, self.dtype = model.device, model.dtype
        self.prompt = prompt_text(processor, instruction, path)
        bos = self.tokenizer.bos_token
        self.add_special_tokens = not (bos and self.prompt.startswith(bos))  # the template may write <s> itself
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self._cache, self._cache_batch, self._cache_len = None, 0, 0
        # the processor's call as _anyres_inputs makes it, and its kwargs merged as that call merges them
        self._processor_kwargs = dict(padding=True, return_tensors="pt", add_special_tokens=self.add_special_tokens,
                                      device=self.device)
        self._prompt_pieces = prompt_pieces(processor, self.prompt, self.add_special_tokens)
        self._prompt_pieces_checked = False
        if self._prompt_pieces is not None:
            self._image_kwargs = processor._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs,
                                                         **self._processor_kwargs)["images_kwargs"]
        # One lasting thread makes the next batch's inputs (a new thread per call would re-plan its cuDNN
        # convolutions, which PyTorch caches per thread). The tokenizer is not safe to use from two threads
        # at once (the processor sets its padding), hence the lock around inputs and decoding.
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="captioner-inputs")
        self._tokenizer_lock = threading.Lock()
        if cfg.image_tokens == "base" and type(model).__name__ != "LlavaNextForConditionalGeneration":
            raise AnnotatorError(f"annotators.captioner.image_tokens=base is implemented for LLaVA-NeXT only, "
                                 f"not {type(model).__name__}")
        if cfg.quantize == "fp8":
            try:
                check_fp8_device(self.device, self.dtype)
            except RuntimeError as e:
                raise AnnotatorError(f"annotators.captioner.quantize=fp8: {e}") from None
            quantize_linears(model.get_decoder().layers)  # idempotent: an Fp8Linear is no nn.Linear
        if cfg.prefill_mlp_rows is not None:
            chunk_prefill_mlps(model, cfg.prefill_mlp_rows)
        # Where generate compiles the decode step (CUDA), the prefill's layers are compiled too.
        if cfg.compile and cfg.static_cache and self.device.type == "cuda":
            compile_prefill_layers(model)

    @classmethod
    def from_folder(cls, path: Path, cfg: CaptionerConfig, instruction: str, device: str = "auto") -> TransformersVLM:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dev = resolve_device(device)
        dtype = _DTYPES.get(cfg.dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation=cfg.attn_implementation)
        except ImportError as e:
            raise AnnotatorError(f"annotators.captioner.attn_implementation={cfg.attn_implementation}: {e}") from None
        except (OSError, ValueError) as e:
            raise AnnotatorError(f"annotators.captioner.path: no image-text-to-text VLM at {path}: {e}") from None
        model.to(dev).eval()
        if cfg.attn_implementation == "sdpa":
            use_packed_gqa_sdpa(model, decode=cfg.decode_attention)
        return cls(model, processor, cfg, instruction, path)

    # -- image tokens and batches ------------------------------------------------------------
    def base_image_tokens(self) -> int:
        """LLaVA-NeXT's single-tile length: the tile's patches (+ CLS under 'full') + one newline."""
        vc, strategy = self.model.config.vision_config, self.model.config.vision_feature_select_strategy
        return (vc.image_size // vc.patch_size) ** 2 + (strategy == "full") + 1

    def num_image_tokens(self, images: list[np.ndarray]) -> list[int] | None:
        """Image tokens per image as this captioner feeds them; None if the processor cannot tell."""
        if self.cfg.image_tokens == "base":
            return [self.base_image_tokens()] * len(images)
        count = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if count is None:
            return None
        return list(count(image_sizes=[im.shape[:2] for im in images]).num_image_tokens)

    def batches(self, images: list[np.ndarray], rows: int | None = None) -> list[list[int]]:
        """Indices per generate call: longest image-token count first, then cut by batch_size (or ``rows``)."""
        counts = self.num_image_tokens(images) if self.cfg.length_bucketing else None
        order = sorted(range(len(images)), key=lambda i: -counts[i]) if counts else list(range(len(images)))
        bs = min(self.cfg.batch_size, rows or self.cfg.batch_size)
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    # -- generation ----------------------------------------------------------------------------
    def generate(self, images: list[np.ndarray], seeds: list[int] | None = None,
                 min_new_tokens: int = 0) -> list[Generation]:
        """Greedy answers (seeded samples if ``seeds``), in input order. The next batch's inputs
        (anyres tiling, resizing, normalising: ~10 ms of host time per 672² image) are made in a
        second thread while the current batch generates."""
        check_images(images, NAME)
        out: list[Generation | None] = [None] * len(images)
        batches = self.batches(images, RETRY_ROWS if seeds is not None else None)
        pending = self._ahead.submit(self._inputs, [images[i] for i in batches[0]]) if batches else None
        try:
            for k, idx in enumerate(batches):
                inputs = pending.result()
                if k + 1 < len(batches):
                    pending = self._ahead.submit(self._inputs, [images[i] for i in batches[k + 1]])
                batch_seeds = [seeds[i] for i in idx] if seeds is not None else None
                for i, g in zip(idx, self._generate_batch(inputs, len(idx), batch_seeds, min_new_tokens)):
                    out[i] = g
        except torch.OutOfMemoryError:
            self._cache = None  # the largest allocation left: free it for whatever handles the error
            raise AnnotatorError(self._out_of_memory()) from None
        return out

    def _out_of_memory(self) -> str:
        where = self.device.type
        if where == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        return (f"annotators.captioner.batch_size={self.cfg.batch_size}: out of memory on {where}; lower it, or set "
                f"image_tokens: base (anyres 672² peaks on an H100: 61 GiB at 128 with quantize and kv_cache fp8, "
                f"47 GiB at 96; 45 GiB at 40 in bf16)")

    def _inputs(self, images: list[np.ndarray]):
        images = [im if im.flags.writeable else im.copy() for im in images]  # torch.from_numpy warns on read-only
        with self._tokenizer_lock:
            return self._base_inputs(images) if self.cfg.image_tokens == "base" else self._anyres_inputs(images)

    @torch.no_grad()  # not inference_mode: transformers' compiled static-cache decode is built for no_grad
    def _generate_batch(self, inputs, batch: int, seeds, min_new_tokens) -> list[Generation]:
        from transformers import CompileConfig, GenerationConfig, LogitsProcessorList

        length = (inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]).shape[1]
        # Retries are few and come in odd batch sizes: a static cache and a decode graph for each would cost more
        # than they save.
        cache = None
        if self.cfg.static_cache and seeds is None:
            cache = self._static_cache(batch, length + self.cfg.max_new_tokens)
        gen = GenerationConfig(
            max_new_tokens=self.cfg.max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, disable_compile=not self.cfg.compile or cache is None,
            compile_config=CompileConfig(mode=self.cfg.decode_compile_mode))
        processors = LogitsProcessorList([_SeededSampling(seeds, self.cfg.retry_temperature)] if seeds else [])
        # The compiled prefill layers are specialised to the static cache: on a dynamic cache (retries) they run eager
        stance = "default" if cache is not None else "force_eager"
        with torch.compiler.set_stance(stance), layer_recompiles(self.model):
            ids = self.model.generate(**inputs, past_key_values=cache, generation_config=gen,
                                      logits_processor=processors)
        if "input_ids" in inputs:
            ids = ids[:, inputs["input_ids"].shape[1] :]
        return [self._decode(row) for row in ids.tolist()]

    def _static_cache(self, batch: int, length: int):
        """One static KV cache, reset and reused while the batch size holds: the compiled decode step
        replays its CUDA graph only on the same cache addresses (a new cache means a re-recording).
        Its length is rounded up and never shrinks, so shorter batches reuse it too."""
        from transformers import StaticCache

        size = max(-(-length // CACHE_ROUND) * CACHE_ROUND, self._cache_len if batch == self._cache_batch else 0)
        if self._cache is not None and (batch, size) == (self._cache_batch, self._cache_len):
            self._cache.reset()
            return self._cache
        self._cache = None  # free the old one before the new one is allocated
        if self.cfg.kv_cache == "fp8":
            try:
                self._cache = fp8_static_cache(self.model.config, size)
            except ValueError as e:
                raise AnnotatorError(f"annotators.captioner.kv_cache=fp8: {e}") from None
            for layer, cache_layer in zip(self.model.get_decoder().layers, self._cache.layers):
                layer.self_attn.fp8_kv_layer = cache_layer  # where the attention function finds the scales
        else:
            self._cache = StaticCache(config=self.model.config, max_cache_len=size)
        # Allocated here, not lazily in the first layer call: inside a compiled prefill layer that would skip
        # marking the tensors as static addresses, and the decode step's CUDA graph would be skipped.
        text = self.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self._cache.early_initialization(batch, text.num_key_value_heads, head_dim, self.dtype, self.device)
        self._cache_batch, self._cache_len = batch, size
        return self._cache

    def _decode(self, row: list[int]) -> Generation:
        end = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
        kept = row if end is None else row[:end]
        with self._tokenizer_lock:
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(text, tuple(kept),
                          truncated=end is None and len(row) >= self.cfg.max_new_tokens)

    @torch.no_grad()  # also when called on its own (the benchmark times it): no graph kept per chunk
    def _anyres_inputs(self, images):
        """The processor's inputs (each image's placeholder expanded to its anyres count). With ``_prompt_pieces``
        its image step runs as in its own call, and the ids are the prompt's pieces around each image's expansion
        where that is the placeholder repeated; the first batch is also made by the processor's own call, and the
        pieces are kept only if their ids are its ids."""
        if self._prompt_pieces is None:
            return self._on_device(self._processor_call(images))
        inputs = inputs_from_pieces(self.processor, images, self._image_kwargs, self._prompt_pieces, self.pad_id)
        if inputs is not None and self._prompt_pieces_checked:
            return self._on_device(inputs)
        theirs = self._processor_call(images)
        if inputs is not None:
            self._prompt_pieces_checked = True
            if set(inputs) == set(theirs) and all(torch.equal(inputs[k].cpu(), theirs[k].cpu())
                                                  for k in ("input_ids", "attention_mask")):
                return self._on_device(inputs)
        self._prompt_pieces = None  # a processor that expands or tokenizes otherwise: its own call from now on
        return self._on_device(theirs)

    def _processor_call(self, images):
        return self.processor(text=[self.prompt] * len(images), images=images, **self._processor_kwargs)

    def _on_device(self, inputs):
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    @torch.no_grad()
    def _base_inputs(self, images):
        """LLaVA-NeXT with the base tile only: the model's own single-tile features (patch
        features, projector, one newline embedding) spliced into the prompt's embeddings."""
        llava = self.model.model
        tile = self.model.config.vision_config.image_size
        pixels = self.processor.image_processor(images, image_grid_pinpoints=[[tile, tile]], return_tensors="pt",
                                                device=self.device)["pixel_values"][:, 0]
        layer = self.model.config.vision_feature_layer
        hidden = llava.vision_tower(pixels.to(self.device, self.dtype), output_hidden_states=True).hidden_states
        feats = torch.cat([hidden[k] for k in layer], -1) if isinstance(layer, (list, tuple)) else hidden[layer]
        if self.model.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        feats = llava.multi_modal_projector(feats)
        feats = torch.cat([feats, llava.image_newline.to(feats)[None, None].expand(len(images), 1, -1)], 1)
        token = self.processor.image_token
        text = self.prompt.replace(token, token * feats.shape[1])
        ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens, return_tensors="pt").input_ids
        ids = ids.to(self.device).expand(len(images), -1)
        embeds = self.model.get_input_embeddings()(ids)
        image_at = (ids == self.model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_at, feats.to(embeds.dtype))
        return {"inputs_embeds": embeds, "attention_mask": torch.ones(ids.shape, dtype=torch.long, device=self.device)}


class VllmVLM:
    """The vLLM engine (continuous batching, paged KV): greedy, seeded retries per request."""

    name = "vllm"

    def __init__(self, path: Path, cfg: CaptionerConfig, instruction: str):
        try:
            import vllm
        except ImportError:
            raise AnnotatorError("annotators.captioner.backend=vllm needs the 'vllm' package, which is not installed "
                                 "(pip install vllm), or set backend: transformers") from None
        from transformers import AutoProcessor

        _engine_checks(cfg, "vllm")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.vllm, self.cfg = vllm, cfg
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.prompt = prompt_text(processor, instruction, path).removeprefix(processor.tokenizer.bos_token or "")
        self.llm = vllm.LLM(model=str(path), dtype=cfg.dtype, seed=cfg.seed, max_num_seqs=cfg.batch_size,
                            limit_mm_per_prompt={"image": 1}, trust_remote_code=False,
                            quantization="fp8" if cfg.quantize == "fp8" else None)

    def generate(self, images, seeds=None, min_new_tokens=0) -> list[Generation]:
        from PIL import Image

        check_images(images, NAME)
        params = [self.vllm.SamplingParams(
            temperature=0.0 if seeds is None else self.cfg.retry_temperature, seed=None if seeds is None else seeds[i],
            max_tokens=self.cfg.max_new_tokens, min_tokens=min_new_tokens) for i in range(len(images))]
        requests = [{"prompt": self.prompt, "multi_modal_data": {"image": Image.fromarray(im)}} for im in images]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        return [Generation(o.outputs[0].text, tuple(o.outputs[0].token_ids), o.outputs[0].finish_reason == "length")
                for o in outs]


class SglangVLM:
    """The SGLang offline engine. Its sampled retries are seeded by the engine's ``random_seed``
    only, so unlike the other backends a retry may depend on what runs beside it."""

    name = "sglang"

    def __init__(self, path: Path, cfg: CaptionerConfig, instruction: str):
        try:
            import sglang
        except ImportError:
            raise AnnotatorError("annotators.captioner.backend=sglang needs the 'sglang' package, which is not "
                                 "installed (pip install sglang), or set backend: transformers") from None
        from transformers import AutoProcessor

        _engine_checks(cfg, "sglang")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.cfg = cfg
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.prompt = prompt_text(processor, instruction, path).removeprefix(processor.tokenizer.bos_token or "")
        self.engine = sglang.Engine(model_path=str(path), dtype=cfg.dtype, random_seed=cfg.seed,
                                    max_running_requests=cfg.batch_size,
                                    quantization="fp8" if cfg.quantize == "fp8" else None)

    def generate(self, images, seeds=None, min_new_tokens=0) -> list[Generation]:
        from PIL import Image

        check_images(images, NAME)
        sampling = {"temperature": 0.0 if seeds is None else self.cfg.retry_temperature,
                    "max_new_tokens": self.cfg.max_new_tokens, "min_new_tokens": min_new_tokens}
        outs = self.engine.generate(prompt=[self.prompt] * len(images), sampling_params=sampling,
                                    image_data=[Image.fromarray(im) for im in images])
        return [Generation(o["text"], (), o["meta_info"]["finish_reason"]["type"] == "length") for o in outs]


def _engine_checks(cfg: CaptionerConfig, backend: str) -> None:
    if cfg.image_tokens != "anyres":
        raise AnnotatorError(f"annotators.captioner.image_tokens=base is implemented for backend: transformers, "
                             f"not {backend}")


class Captioner:
    """Images -> validated long captions + entity lists (``CaptionResult`` per image, input order)."""

    def __init__(self, vlm, cfg: CaptionerConfig, weights_sha256: str | None):
        self.vlm, self.cfg, self.weights_sha256 = vlm, cfg, weights_sha256
        self.instruction = instruction_for(cfg)

    @classmethod
    def load(cls, cfg: CaptionerConfig, device: str = "auto") -> Captioner:
        path = require_path("annotators.captioner.path", cfg.path, kind="VLM folder")
        instruction = instruction_for(cfg)
        if cfg.backend == "vllm":
            vlm = VllmVLM(path, cfg, instruction)
        elif cfg.backend == "sglang":
            vlm = SglangVLM(path, cfg, instruction)
        else:
            vlm = TransformersVLM.from_folder(path, cfg, instruction, device)
        return cls(vlm, cfg, weights_sha256(path))

    @property
    def version(self) -> str:
        """Code version + what changes the answers: backend, image tokens, quantisation, instruction."""
        prompt = hashlib.sha256(self.instruction.encode()).hexdigest()[:8]
        quant = "" if self.cfg.quantize == "none" else f".{self.cfg.quantize}"
        if self.cfg.kv_cache == "fp8":  # the decode kernel's operands and launch change the numbers too
            quant += f".kvfp8-{kv_fp8.kernel_version()}"
        return f"{CODE_VERSION}+{self.vlm.name}.{self.cfg.image_tokens}{quant}.{prompt}"

    @property
    def record(self) -> dict:
        return annotator_record(NAME, self.version, self.weights_sha256)

    def __call__(self, images: list[np.ndarray]) -> list[CaptionResult]:
        check_images(images, NAME)
        results = [self._result(g, 1) for g in self.vlm.generate(images)]
        for attempt in range(1, self.cfg.retries + 1):
            redo = [i for i, r in enumerate(results) if not r.ok]
            if not redo:
                break
            seeds = [image_seed(images[i], self.cfg.seed + attempt) for i in redo]
            for i, g in zip(redo, self.vlm.generate([images[i] for i in redo], seeds=seeds)):
                results[i] = self._result(g, attempt + 1)
        return results

    def _result(self, g: Generation, attempts: int) -> CaptionResult:
        c = caption_text.check(g.text, min_words=self.cfg.min_words, max_words=self.cfg.max_words,
                               max_entities=self.cfg.max_entities, truncated=g.truncated)
        if c.error:
            return CaptionResult(False, None, (), f"VLM answer rejected after {attempts} attempt(s): {c.error}",
                                 g.text, attempts)
        return CaptionResult(True, c.caption, c.entities, None, g.text, attempts)


def instruction_for(cfg: CaptionerConfig) -> str:
    return cfg.instruction or caption_text.instruction(cfg.min_words, cfg.max_words, cfg.max_entities)
