"""Captioning throughput (issue 6): the naive transformers ``generate`` loop against our captioner.

    python benchmarks/bench_captioner.py --json $OUT/bench_captioner.json   # the issue's job, one GPU
    python benchmarks/bench_captioner.py --quick --device cpu                # tiny smoke run (< 60 s)
    python benchmarks/bench_captioner.py --image-tokens base                 # the base-tile option
    python benchmarks/bench_captioner.py --quantize fp8 --profile            # + the top kernels of one batch

The job: LLaVA-NeXT-7B as llava-v1.6-mistral-7b (Mistral-7B text, CLIP ViT-L/14-336 vision,
llava-v1.6 anyres pinpoints, vocab 32064) built from configs in code with seeded random weights
in bf16, a word-level tokenizer built here, 672² images, 150 new tokens per image, greedy. Random
weights could stop at any EOS, so both sides force exactly 150 tokens (min = max new tokens).
Random-weight text is garbage: these figures are speed only, never captions.

* naive: processor on the CPU + ``model.generate`` at batch 8 (dynamic cache, eager, stock SDPA);
* ours:  ``TransformersVLM.generate`` (what ``Captioner`` runs before validation): batches of
  ``--batch`` sorted by image-token count, preprocessing on the device, static KV cache +
  torch.compile (CUDA graphs) for decode, packed-GQA decode attention. The first batch is a
  warm-up (compilation) and is not timed. A pass over the same images with one new token
  (vision + prefill alone) splits our per-image time into prefill and decode.

Prints and writes (``--json``) img/s, new tokens/s, peak GPU memory, the GPU-busy fraction (NVML) and
the ratio ours / naive.
Needs only torch, torchvision, transformers, numpy and this repo's captioner (no pydantic), so it
runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Prefill and decode alternate between very different shapes; without expandable segments the
# allocator's cached blocks fragment (an 80 GB H100 held 20 GB unusable at anyres batch 64).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_busy import GpuBusy  # noqa: E402
from benchmarks.gpu_profile import op_profile, print_profile  # noqa: E402
from onegen.annotators.caption_text import instruction  # noqa: E402
from onegen.annotators.captioner import TransformersVLM, use_packed_gqa_sdpa  # noqa: E402

TEMPLATE = ("{{ bos_token }}{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}"
            "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}")
# (vocab, image token id, pad id, tile, patch); llava-v1.6-mistral-7b's layout at real size
REAL = dict(vocab=32064, image_token=32000, pad=32001, tile=336, patch=14)
QUICK = dict(vocab=512, image_token=500, pad=501, tile=32, patch=8)


def llava_next_config(quick: bool):
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    s = QUICK if quick else REAL
    t = s["tile"]
    if quick:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=t, patch_size=s["patch"], projection_dim=32)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1)
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=t, patch_size=s["patch"], projection_dim=768,
                                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
        text = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8)
    text = MistralConfig(**text, vocab_size=s["vocab"], max_position_embeddings=32768, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, sliding_window=None,
                         bos_token_id=1, eos_token_id=2, pad_token_id=s["pad"], tie_word_embeddings=False)
    pinpoints = [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]]
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=s["image_token"],
                           image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                           vision_feature_select_strategy="default", projector_hidden_act="gelu",
                           image_seq_length=(t // s["patch"]) ** 2, tie_word_embeddings=False)


def llava_next_processor(config, quick: bool):
    """A word-level tokenizer with llava-v1.6-mistral's special ids, and its anyres image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor, PreTrainedTokenizerFast

    s = QUICK if quick else REAL
    names = {0: "<unk>", 1: "<s>", 2: "</s>", s["image_token"]: "<image>", s["pad"]: "<pad>"}
    words = instruction(100, 150, 10).split()
    vocab = {names.get(i, words[i - 3] if 3 <= i < 3 + len(words) else f"w{i}"): i for i in range(s["vocab"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens=["<image>"])
    t = s["tile"]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": t}, crop_size={"height": t, "width": t},
                                              image_grid_pinpoints=config.image_grid_pinpoints)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=s["patch"],
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=TEMPLATE)


def job_settings(args) -> SimpleNamespace:
    """Every CaptionerConfig field, spelled out (this script runs without pydantic)."""
    return SimpleNamespace(
        path=None, backend="transformers", batch_size=args.batch, dtype=args.dtype, attn_implementation="sdpa",
        decode_attention=args.decode_attention, image_tokens=args.image_tokens, quantize=args.quantize,
        prefill_mlp_rows=args.prefill_mlp_rows, static_cache=args.static_cache, kv_cache=args.kv_cache,
        decode_compile_mode=args.decode_compile_mode, compile=args.compile, length_bucketing=True,
        max_new_tokens=args.new_tokens, min_words=100, max_words=150, max_entities=10, retries=0,
        retry_temperature=0.7, seed=0, instruction=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def naive_prompt(processor) -> str:
    """The captioner's instruction after one image, in the model's own chat template."""
    return processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": instruction(100, 150, 10)}]}], add_generation_prompt=True,
        tokenize=False)


def naive_generate(model, processor, prompt: str, images, batch: int, new_tokens: int) -> int:
    """The plain loop: CPU preprocessing, ``generate`` per batch. Returns the new tokens made."""
    made = 0
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        inputs = processor(text=[prompt] * len(chunk), images=chunk, padding=True, return_tensors="pt",
                           add_special_tokens=False).to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        made += out[:, inputs["input_ids"].shape[1] :].numel()
    return made


def timed(fn, device: torch.device) -> tuple[float, int, float | None, float | None]:
    """Seconds, new tokens, peak GiB and GPU-busy fraction of one call of ``fn``."""
    reset_peak(device)
    sync(device)
    with GpuBusy(device) as busy:
        t0 = time.perf_counter()
        made = fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return seconds, made, peak_gib(device), busy.fraction


def row(name: str, n: int, seconds: float, tokens: int, peak: float | None, **extra) -> dict:
    return dict(name=name, images=n, seconds=round(seconds, 3), img_per_s=round(n / seconds, 3),
                new_tok_per_s=round(tokens / seconds, 1), peak_gib=None if peak is None else round(peak, 2), **extra)


def default_batch(args: argparse.Namespace) -> int:
    """CaptionerConfig's default batch for these settings, written out: this script runs without pydantic."""
    if args.quantize == "fp8":
        return 128 if args.kv_cache == "fp8" else 96
    return 40


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and few images (a CPU smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, help="images timed for ours, a multiple of --batch (default 4 batches: the "
                    "first batch's inputs are made before any generation starts, a fill a long build pays once)")
    ap.add_argument("--baseline-images", type=int, help="images timed for the naive loop, 0 = skip (default 32)")
    ap.add_argument("--batch", type=int, help="our batch (default anyres 40, with fp8 (and --prefill-mlp-rows 16) 96, 128 with "
                                                 "--kv-cache fp8 too; base 256; quick 4)")
    ap.add_argument("--baseline-batch", type=int, default=8)
    ap.add_argument("--image-tokens", choices=["anyres", "base"], default="anyres")
    ap.add_argument("--quantize", choices=["none", "fp8"], default="none",
                    help="fp8: our side's language-model linears in FP8 W8A8 (the naive loop stays bf16)")
    ap.add_argument("--decode-attention", choices=["sdpa", "flex"], default="sdpa",
                    help="the compiled decode step's attention: packed-GQA SDPA or flex (split-KV decoding)")
    ap.add_argument("--prefill-mlp-rows", type=int, help="each decoder MLP on at most this many images in prefill "
                                                         "(caps the prefill's peak memory; default: 16 with fp8, else the whole batch)")
    ap.add_argument("--static-cache", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--kv-cache", choices=["model", "fp8"], default="model",
                    help="fp8: our static KV cache in float8 with per-token scales, read by a Triton decode kernel")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--decode-compile-mode", choices=["reduce-overhead", "max-autotune"], default="reduce-overhead",
                    help="max-autotune: the decode step's GEMM tiles timed for its shapes at compile")
    ap.add_argument("--new-tokens", type=int, default=150)
    ap.add_argument("--image-size", type=int, help="square input side (default 672; quick 64)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one batch of ours, prefill alone and whole: GPU ms per image and top kernels")
    ap.add_argument("--json", type=Path, default=Path("runs/bench_captioner.json"))
    args = ap.parse_args()
    if args.profile and args.device != "cuda":
        ap.error("--profile measures GPU kernel time: it needs --device cuda")
    q = args.quick
    args.batch = args.batch or (4 if q else 256 if args.image_tokens == "base" else default_batch(args))
    if args.quantize == "fp8" and args.prefill_mlp_rows is None:
        args.prefill_mlp_rows = 16
    args.images = args.images or 4 * args.batch
    args.baseline_images = args.baseline_images if args.baseline_images is not None else (8 if q else 32)
    args.image_size = args.image_size or (64 if q else 672)
    device = torch.device(args.device)
    args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    if q:
        torch.set_num_threads(1)  # a tiny model is op-overhead bound: more threads only add barrier stalls

    import transformers
    from transformers import LlavaNextForConditionalGeneration

    t0 = time.perf_counter()
    config = llava_next_config(q)
    processor = llava_next_processor(config, q)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=getattr(torch, args.dtype)).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"LLaVA-NeXT {'(quick) ' if q else ''}{params / 1e6:.1f}M params, random weights, {args.dtype}, "
          f"built in {time.perf_counter() - t0:.0f} s on {device}", flush=True)

    rng = np.random.default_rng(0)
    size = args.image_size
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(args.images,
                                                                                       args.baseline_images))]
    settings = job_settings(args)
    rows = []

    if args.baseline_images:
        prompt = naive_prompt(processor)
        bb = args.baseline_batch
        naive_generate(model, processor, prompt, images[:bb], bb, args.new_tokens)  # warm-up: CUDA init, cuBLAS
        seconds, made, peak, busy = timed(lambda: naive_generate(model, processor, prompt, images[: args.baseline_images],
                                                           bb, args.new_tokens), device)
        rows.append(row("naive generate", args.baseline_images, seconds, made, peak, batch=bb, static_cache=False,
                        compile=False, attention="sdpa (stock)", image_tokens="anyres",
                        gpu_busy=busy))
        print(rows[-1], flush=True)

    use_packed_gqa_sdpa(model, decode=args.decode_attention)
    # Where our time goes: the same batches with one new token are vision + prefill alone (no decode step),
    # on the same kind of cache as ours: with a static one the prefill's layers run compiled, as in ours.
    prefill_only = TransformersVLM(model, processor, SimpleNamespace(**{**vars(settings), "max_new_tokens": 1}),
                                   instruction(100, 150, 10))
    prefill_only.generate(images[: args.batch])  # warm-up: compiles the prefill layers
    prefill_s, _, _, _ = timed(lambda: len(prefill_only.generate(images[: args.images])), device)
    prefill_only._cache = None  # not held beside ours; the profile below makes it again
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # ... of which the inputs: the processor (tiling, resizing, normalising), with base tiles the vision tower too
    make_inputs = prefill_only._base_inputs if args.image_tokens == "base" else prefill_only._anyres_inputs
    chunks = [images[i : i + args.batch] for i in range(0, args.images, args.batch)]
    def all_inputs() -> int:
        for c in chunks:  # one chunk's inputs alive at a time, as in a build
            make_inputs(c)
        return len(chunks)

    inputs_s, _, _, _ = timed(all_inputs, device)
    # A build's pipeline fill: the first batch's inputs, which nothing runs beside (the next ones are made while a
    # batch generates). Paid once per build, so the steady figure below leaves it out.
    fill_s, _, _, _ = timed(lambda: make_inputs(chunks[0]), device)

    vlm = TransformersVLM(model, processor, settings, instruction(100, 150, 10))
    image_tokens = vlm.num_image_tokens(images[:1])[0]
    t0 = time.perf_counter()
    vlm.generate(images[: args.batch], min_new_tokens=args.new_tokens)  # warm-up: compiles the decode step
    warmup = time.perf_counter() - t0

    def ours() -> int:
        return sum(len(g.token_ids) for g in vlm.generate(images[: args.images], min_new_tokens=args.new_tokens))

    seconds, made, peak, busy = timed(ours, device)
    per_image_ms = 1000 / args.images
    rows.append(row("ours", args.images, seconds, made, peak, batch=args.batch, quantize=args.quantize,
                    static_cache=args.static_cache,
                    compile=args.compile and device.type == "cuda",
                    attention=f"sdpa + {'packed-GQA' if args.decode_attention == 'sdpa' else 'flex'} decode",
                    image_tokens=f"{args.image_tokens} ({image_tokens} per image)", warmup_s=round(warmup, 1), gpu_busy=busy,
                    prefill_ms_per_image=round(prefill_s * per_image_ms, 1),
                    inputs_ms_per_image=round(inputs_s * per_image_ms, 1),
                    decode_ms_per_image=round((seconds - prefill_s) * per_image_ms, 1),
                    fill_s=round(fill_s, 3), steady_img_per_s=round(args.images / (seconds - fill_s), 3)))
    print(rows[-1], flush=True)
    ratio = rows[-1]["img_per_s"] / rows[0]["img_per_s"] if len(rows) == 2 else None
    print(f"\n{'':16s} {'img/s':>8s} {'new tok/s':>10s} {'peak GiB':>9s} {'GPU busy':>9s}  batch")
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        busy = "-" if r["gpu_busy"] is None else f"{r['gpu_busy']:.2f}"
        print(f"{r['name']:16s} {r['img_per_s']:8.2f} {r['new_tok_per_s']:10.0f} {peak:>9s} {busy:>9s}  {r['batch']}")
    ours_row = rows[-1]
    print(f"ours steady, the first batch's inputs ({ours_row['fill_s']:.2f} s, a build's fill) left out: "
          f"{ours_row['steady_img_per_s']:.2f} img/s")
    if ratio is not None:
        print(f"ratio ours / naive: {ratio:.2f}x (steady: {ours_row['steady_img_per_s'] / rows[0]['img_per_s']:.2f}x)")
    summary = dict(
        job=dict(model="llava-next-7b (mistral-7b + clip-l/336), random weights" if not q else "quick tiny llava-next",
                 image_size=size, new_tokens=args.new_tokens, greedy=True, dtype=args.dtype),
        device=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, transformers=transformers.__version__, rows=rows,
        ratio=None if ratio is None else round(ratio, 2), profiles={},
        command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")  # before the profile, which may run out of memory
    print(f"wrote {args.json}", flush=True)
    if args.profile:  # which kernels bound the prefill (FP8 GEMMs? attention? quantisation?) and the decode
        one = images[: args.batch]
        profiles = summary["profiles"]
        profiles["whole"] = op_profile(lambda: len(vlm.generate(one, min_new_tokens=args.new_tokens)), device, top=12)
        print_profile(f"ours, whole (batch {args.batch})", profiles["whole"])
        vlm._cache = None  # one static cache at a time: two of batch 128 did not fit beside a prefill in 80 GB
        torch.cuda.empty_cache()
        profiles["prefill"] = op_profile(lambda: len(prefill_only.generate(one)), device, top=12)
        print_profile(f"ours, prefill (batch {args.batch})", profiles["prefill"])
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json} with the profiles")


if __name__ == "__main__":
    main()
