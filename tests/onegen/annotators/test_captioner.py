"""The captioner on a tiny random LLaVA-NeXT (CLIP-vision + Llama with grouped-query attention),
saved with a tokenizer built here and processor and loaded back through ``Captioner.load``.
Random weights emit garbage, so parsing is covered by test_caption_text.py and the retry logic by
a scripted VLM; here the generation path itself: determinism, batch invariance across mixed
anyres token counts, the base-resolution option, packed-GQA attention, retries and provenance."""

import argparse
import importlib.util

import numpy as np
import pytest
import torch

from onegen.annotators.base import AnnotatorError, weights_sha256
from onegen.annotators.captioner import (
    CACHE_ROUND, Captioner, CaptionResult, Generation, TransformersVLM, _sdpa_packed_gqa, _SeededSampling,
    compile_prefill_layers, flex_decode_attention, image_seed)
from onegen.config import CaptionerConfig
from tests.benchmarks.scripts import load_script
from tests.tiny_annotators import build_tiny_llava_next

SIZES = [(32, 32), (32, 64), (64, 32), (48, 40), (64, 64), (20, 30)]  # six different anyres token counts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava_next")
    build_tiny_llava_next(folder)
    return folder


@pytest.fixture(scope="module")
def cfg(folder):
    return CaptionerConfig(path=folder, batch_size=6, max_new_tokens=6, min_words=3, max_words=40, max_entities=3)


@pytest.fixture(scope="module")
def captioner(cfg):
    return Captioner.load(cfg, device="cpu")


def images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def token_ids(vlm, ims, **kw):
    return [g.token_ids for g in vlm.generate(ims, **kw)]


def test_load_errors_name_the_params_key(tmp_path):
    with pytest.raises(AnnotatorError, match=r"annotators\.captioner\.path is not set"):
        Captioner.load(CaptionerConfig())
    with pytest.raises(AnnotatorError, match=r"annotators\.captioner\.path: VLM folder not found"):
        Captioner.load(CaptionerConfig(path=tmp_path / "missing"))
    with pytest.raises(AnnotatorError, match=r"annotators\.captioner\.path: no image-text-to-text VLM"):
        Captioner.load(CaptionerConfig(path=tmp_path), device="cpu")


def test_flash_attention_needs_its_package_and_a_gpu(folder):
    with pytest.raises(AnnotatorError, match=r"annotators\.captioner\.attn_implementation=flash_attention_2: "):
        Captioner.load(CaptionerConfig(path=folder, attn_implementation="flash_attention_2"), device="cpu")


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_engine_backend_without_its_package_fails_clearly(folder, backend):
    if importlib.util.find_spec(backend):
        pytest.skip(f"{backend} is installed here; this test covers machines without it")
    with pytest.raises(AnnotatorError, match=rf"backend={backend} needs the '{backend}' package"):
        Captioner.load(CaptionerConfig(path=folder, backend=backend))


def test_record_and_model(captioner, folder):
    assert type(captioner.vlm.model).__name__ == "LlavaNextForConditionalGeneration"
    assert captioner.vlm.model.config.text_config._attn_implementation == "sdpa_packed_gqa"
    rec = captioner.record
    assert rec["name"] == "captioner" and rec["weights_sha256"] == weights_sha256(folder)
    assert rec["version"].startswith("1+transformers.anyres.")


def test_batching_never_changes_greedy_tokens(captioner, cfg):
    """Six sizes -> six anyres token counts -> left padding in the batch; static cache as in production."""
    vlm, ims = captioner.vlm, images()
    counts = vlm.num_image_tokens(ims)
    assert len(set(counts)) == len(SIZES)
    longest_first = sorted(range(6), key=lambda i: -counts[i])
    assert vlm.batches(ims) == [longest_first]
    alone = [token_ids(vlm, [im], min_new_tokens=6)[0] for im in ims]
    together = token_ids(vlm, ims, min_new_tokens=6)
    assert together == alone and all(len(t) == 6 for t in alone)
    assert len(set(alone)) > 1  # the images really get different answers
    cache = vlm._cache
    assert token_ids(vlm, ims, min_new_tokens=6) == together  # deterministic, on the reset static cache
    assert vlm._cache is cache and vlm._cache_len % CACHE_ROUND == 0  # kept: its decode graph replays in place
    by_four = TransformersVLM(vlm.model, vlm.processor, cfg.model_copy(update={"batch_size": 4}), captioner.instruction)
    assert by_four.batches(ims) == [longest_first[:4], longest_first[4:]]
    assert token_ids(by_four, ims, min_new_tokens=6) == together
    crowd = images([SIZES[i % 6] for i in range(58)], seed=1)  # the same six among 58 others: one batch of 64
    by_64 = TransformersVLM(vlm.model, vlm.processor, cfg.model_copy(update={"batch_size": 64}), captioner.instruction)
    assert len(by_64.batches(crowd + ims)) == 1
    assert token_ids(by_64, crowd + ims, min_new_tokens=6)[58:] == alone


def test_same_tokens_as_plain_generate(captioner, folder):
    """Static cache, packed-GQA decode and bucketed batches give what the stock per-image path gives."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    ims = images(SIZES[:3])
    ours = token_ids(captioner.vlm, ims, min_new_tokens=6)
    for im, mine in zip(ims, ours):
        inputs = processor(text=[captioner.vlm.prompt], images=[im], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert tuple(out[0, inputs["input_ids"].shape[1] :].tolist()) == mine


def test_compiled_prefill_layers_give_the_eager_tokens(cfg, captioner, caplog):
    """What CUDA runs (each decoder layer compiled with dynamic shapes, the static cache allocated up
    front), here on the CPU: the same greedy tokens as eager; seeded retries (dynamic cache) stay eager.
    Under a recompile limit below the layer count (as Mistral's 32 layers against dynamo's 8), every
    layer still gets its graph."""
    from torch._dynamo.utils import counters

    eager_vlm = captioner.vlm
    ims = images()
    eager = token_ids(eager_vlm, ims, min_new_tokens=6)
    retried = token_ids(eager_vlm, ims[:2], seeds=[1, 2])
    model = type(eager_vlm.model)._from_config(eager_vlm.model.config, dtype=torch.float32).eval()
    model.load_state_dict(eager_vlm.model.state_dict())
    from onegen.annotators.captioner import use_packed_gqa_sdpa

    use_packed_gqa_sdpa(model)
    compile_prefill_layers(model)
    compile_prefill_layers(model)  # idempotent
    vlm = TransformersVLM(model, eager_vlm.processor, cfg, captioner.instruction)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()  # the layer graphs of other tests would count against the limit
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING", logger="torch._dynamo"):
        assert token_ids(vlm, ims, min_new_tokens=6) == eager
    assert "recompile_limit" not in caplog.text  # no layer fell back to eager
    assert counters["stats"]["unique_graphs"] >= graphs + len(model.get_decoder().layers)  # a graph per layer
    graphs = counters["stats"]["unique_graphs"]
    assert token_ids(vlm, ims[:2], seeds=[1, 2]) == retried
    assert counters["stats"]["unique_graphs"] == graphs  # retries: nothing compiled


def test_prefill_mlp_row_chunks_change_no_token_and_leave_decode_whole(cfg, captioner):
    """Batch 6 with each prefill MLP on 4 rows, then 2; the decode steps on all 6: the unchunked run's tokens."""
    from onegen.annotators.captioner import RowChunkedMLP, use_packed_gqa_sdpa

    base, ims = captioner.vlm, images()
    whole = token_ids(base, ims, min_new_tokens=6)
    model = type(base.model)._from_config(base.model.config, dtype=torch.float32).eval()
    model.load_state_dict(base.model.state_dict())
    use_packed_gqa_sdpa(model)
    vlm = TransformersVLM(model, base.processor, cfg.model_copy(update={"prefill_mlp_rows": 4}), captioner.instruction)
    assert all(isinstance(layer.mlp, RowChunkedMLP) for layer in model.get_decoder().layers)
    shapes = []
    model.get_decoder().layers[0].mlp.mlp.register_forward_hook(lambda m, a, out: shapes.append(tuple(a[0].shape[:2])))
    assert token_ids(vlm, ims, min_new_tokens=6) == whole
    assert [rows for rows, length in shapes if length > 1] == [4, 2]
    decode = [rows for rows, length in shapes if length == 1]
    assert len(decode) == 5 and set(decode) == {6}
    TransformersVLM(model, base.processor, cfg.model_copy(update={"prefill_mlp_rows": 2}), captioner.instruction)
    assert model.get_decoder().layers[0].mlp.rows == 2 and isinstance(model.get_decoder().layers[0].mlp.mlp, type(
        base.model.get_decoder().layers[0].mlp))  # re-set, not wrapped twice


def test_prefill_mlp_row_chunks_compile_once_for_every_batch_size(cfg, captioner, caplog):
    """Under compiled prefill layers (CUDA's path, here on the CPU) the chunk loop stays outside the layer graphs:
    batches of 5, 5, 2 rows and then 3, 3, 3, 3 (chunks of 2) add no graph past the first, and never hit the limit."""
    from torch._dynamo.utils import counters

    from onegen.annotators.captioner import use_packed_gqa_sdpa

    base, ims = captioner.vlm, images(SIZES * 2)
    whole = token_ids(base, ims, min_new_tokens=6)
    model = type(base.model)._from_config(base.model.config, dtype=torch.float32).eval()
    model.load_state_dict(base.model.state_dict())
    use_packed_gqa_sdpa(model)
    compile_prefill_layers(model)
    torch._dynamo.reset()
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING", logger="torch._dynamo"):
        for batch in (5, 3):
            vlm = TransformersVLM(model, base.processor, cfg.model_copy(update={"prefill_mlp_rows": 2,
                                                                               "batch_size": batch}),
                                  captioner.instruction)
            assert token_ids(vlm, ims, min_new_tokens=6) == whole
            graphs.append(counters["stats"]["unique_graphs"])
    assert "recompile_limit" not in caplog.text
    assert graphs[1] == graphs[0]


def test_packed_gqa_decode_attention_equals_stock_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Layer(torch.nn.Module):
        num_key_value_groups, is_causal = 4, True

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=g) for s in [(3, 8, 1, 16), (3, 2, 10, 16), (3, 2, 10, 16)])
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row
    ours, _ = _sdpa_packed_gqa(Layer(), q, k, v, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(Layer(), q, k, v, mask, scaling=0.25)
    assert ours.shape == stock.shape == (3, 1, 8, 16)
    torch.testing.assert_close(ours, stock, rtol=1e-6, atol=1e-6)
    flex = flex_decode_attention(q, k, v, mask, scale=0.25)  # unfused here; compiled in the decode step on CUDA
    assert flex.shape == stock.shape
    torch.testing.assert_close(flex, stock, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(flex, flex_decode_attention(q, k, v, torch.ones_like(mask), scale=0.25))  # masked


def test_flex_decode_is_only_taken_inside_a_compiled_decode_step(captioner, cfg):
    """Eager (here: the CPU, whose decode is not compiled) it is the packed SDPA path: same tokens."""
    from onegen.annotators.captioner import FLEX_DECODE, PACKED_SDPA, use_packed_gqa_sdpa

    vlm, ims = captioner.vlm, images(SIZES[:3])
    packed = token_ids(vlm, ims, min_new_tokens=6)
    use_packed_gqa_sdpa(vlm.model, decode="flex")
    try:
        assert vlm.model.config._attn_implementation == FLEX_DECODE
        assert token_ids(vlm, ims, min_new_tokens=6) == packed
    finally:
        use_packed_gqa_sdpa(vlm.model)
    assert vlm.model.config._attn_implementation == PACKED_SDPA


def test_input_ids_built_once_are_the_processors_own(cfg, captioner):
    """Mixed sizes (six placeholder counts, left padding): the ids built from the prompt tokenized once equal the
    processor's; a processor that expands otherwise is caught on the first batch and makes the ids from then on."""
    vlm, ims = captioner.vlm, images()
    theirs = vlm.processor(text=[vlm.prompt] * len(ims), images=ims, padding=True, return_tensors="pt",
                           add_special_tokens=vlm.add_special_tokens)
    fresh = TransformersVLM(vlm.model, vlm.processor, cfg, captioner.instruction)
    assert fresh._prompt_pieces is not None and len(set(fresh.num_image_tokens(ims))) == len(ims)
    for _ in range(2):  # the first call checks against the processor, the second builds alone
        ours = fresh._anyres_inputs(ims)
        assert fresh._prompt_pieces is not None and fresh._prompt_pieces_checked
        assert sorted(ours.keys()) == sorted(theirs.keys())
        for key in theirs:
            assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key

    off = TransformersVLM(vlm.model, vlm.processor, cfg, captioner.instruction)
    head, image_id, tail = off._prompt_pieces
    off._prompt_pieces = (head, image_id, [image_id, *tail])  # as if the processor expanded to one more each
    for _ in range(2):
        assert torch.equal(off._anyres_inputs(ims)["input_ids"], theirs["input_ids"])
        assert off._prompt_pieces is None


def test_base_resolution_option_caps_image_tokens(cfg, captioner):
    base = Captioner.load(cfg.model_copy(update={"image_tokens": "base", "static_cache": False}), device="cpu")
    ims = images()
    assert base.vlm.num_image_tokens(ims) == [(32 // 8) ** 2 + 1] * len(ims)  # one tile's patches + one newline
    assert min(captioner.vlm.num_image_tokens(ims)) > 17
    embeds = base.vlm._base_inputs(ims[:2])["inputs_embeds"]
    prompt_tokens = len(base.vlm.tokenizer(base.vlm.prompt, add_special_tokens=False).input_ids)
    assert embeds.shape == (2, prompt_tokens - 1 + 17, 32)
    together = token_ids(base.vlm, ims, min_new_tokens=6)
    assert together == [token_ids(base.vlm, [im], min_new_tokens=6)[0] for im in ims]
    assert together != token_ids(captioner.vlm, ims, min_new_tokens=6)
    assert base.record["version"].startswith("1+transformers.base.")


def test_out_of_memory_is_one_line_naming_the_batch_size(captioner, monkeypatch):
    def too_large(**inputs):  # what CUDA raises when a batch's activations or cache do not fit
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.66 GiB.\nGPU 0 has a total capacity ...")

    monkeypatch.setattr(captioner.vlm.model, "generate", too_large)
    with pytest.raises(AnnotatorError, match=r"^annotators\.captioner\.batch_size=6: out of memory on cpu; lower it") as e:
        captioner(images(SIZES[:2]))
    assert "\n" not in str(e.value) and captioner.vlm._cache is None


def test_garbage_is_retried_once_with_seeded_sampling_then_reported(captioner):
    ims = images(SIZES[:3])
    greedy = captioner.vlm.generate(ims)
    results = captioner(ims)
    assert [r.ok for r in results] == [False] * 3 and all(r.attempts == 2 for r in results)
    assert all(r.caption is None and r.entities == () for r in results)
    assert all(r.error.startswith("VLM answer rejected after 2 attempt(s): ") for r in results)
    assert any(r.raw != g.text for r, g in zip(results, greedy))  # the retry sampled something else
    assert [r.raw for r in captioner(ims[1:2])] == [results[1].raw]  # a retry does not depend on its batch
    with pytest.raises(ValueError, match="never stored"):
        results[0].captions("a photo")


class ScriptedVLM:
    """Stands in for the model with fixed answers, to test the captioner's retry bookkeeping."""

    name = "scripted"

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def generate(self, ims, seeds=None, min_new_tokens=0):
        self.calls.append(seeds)
        return [Generation(self.answers.pop(0), (), False) for _ in ims]


def test_retry_bookkeeping(cfg):
    good = "CAPTION: a dog sits on the grass near a red car.\nENTITIES: dog, grass, car"
    vlm = ScriptedVLM(["nonsense", good, "CAPTION: dog.\nENTITIES: dog", good, "still nonsense"])
    cap = Captioner(vlm, cfg, weights_sha256=None)
    ims = images(SIZES[:3])
    results = cap(ims)
    assert vlm.calls == [None, [image_seed(ims[0], cfg.seed + 1), image_seed(ims[2], cfg.seed + 1)]]
    assert [r.ok for r in results] == [True, True, False] and [r.attempts for r in results] == [2, 1, 2]
    assert results[0].entities == ("dog", "grass", "car")
    assert results[2].error.endswith("malformed: no 'CAPTION:' label") and results[2].raw == "still nonsense"
    assert results[1].captions("orig") == {"vlm": "a dog sits on the grass near a red car.", "original": "orig"}
    assert results[1].captions() == {"vlm": "a dog sits on the grass near a red car."}
    no_retry = Captioner(ScriptedVLM(["nonsense"]), cfg.model_copy(update={"retries": 0}), None)(ims[:1])
    assert no_retry[0].attempts == 1 and not no_retry[0].ok


def test_seeded_sampling_noise_depends_on_the_row_seed_only():
    scores = torch.zeros(3, 50)
    both = _SeededSampling([7, 9, 7], 0.5)(None, scores)
    alone = _SeededSampling([9], 0.5)(None, scores[:1])
    torch.testing.assert_close(both[1], alone[0], rtol=0, atol=0)
    torch.testing.assert_close(both[0], both[2], rtol=0, atol=0)
    assert not torch.equal(both[0], both[1])
    step1 = _SeededSampling([7], 0.5)
    assert not torch.equal(step1(None, scores[:1]), step1(None, scores[:1]))  # fresh noise each step


def test_bad_images_name_the_item(captioner):
    ims = images(SIZES[:2])
    with pytest.raises(AnnotatorError, match=r"captioner: image 1: expected an HxWx3 uint8 RGB array, got uint8"):
        captioner([ims[0], np.zeros((4, 4), np.uint8)])
    with pytest.raises(AnnotatorError, match=r"captioner: image 0: .* got float32"):
        captioner.vlm.generate([ims[0].astype(np.float32)])


def test_image_seed_is_content_based():
    a, b = images(SIZES[:2])
    assert image_seed(a, 0) == image_seed(a.copy(), 0) != image_seed(a, 1)
    assert image_seed(a, 0) != image_seed(b, 0) and 0 <= image_seed(a, 0) < 2**63
    assert CaptionResult(True, "c", ("x",), None, "raw", 1).captions() == {"vlm": "c"}


def test_benchmark_job_is_llava_v16_mistral_7b_and_spells_out_every_config_field():
    bench = load_script("bench_captioner")
    args = argparse.Namespace(batch=64, dtype="bfloat16", image_tokens="anyres", quantize="none", prefill_mlp_rows=16,
                              static_cache=True, kv_cache="fp8", decode_compile_mode="max-autotune",
                              compile=True, new_tokens=150, decode_attention="flex")
    settings = vars(bench.job_settings(args))
    assert set(settings) == set(CaptionerConfig.model_fields)  # runs without pydantic, so it lists them all
    CaptionerConfig(**settings)
    config = bench.llava_next_config(quick=False)
    assert (config.text_config.num_hidden_layers, config.text_config.num_key_value_heads) == (32, 8)
    processor = bench.llava_next_processor(config, quick=False)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == 32000
    counts = processor._get_num_multimodal_tokens(image_sizes=[(672, 672), (480, 640)]).num_image_tokens
    assert counts[0] == 576 + 48 * 49  # the docstrings' 2928: base tile + 2x2 tiles unpadded, one newline per row
    assert counts[1] < counts[0]
    for quantize, kv_cache in [("none", "model"), ("fp8", "model"), ("fp8", "fp8")]:
        assert bench.default_batch(argparse.Namespace(quantize=quantize, kv_cache=kv_cache)) == \
            CaptionerConfig(quantize=quantize, kv_cache=kv_cache).batch_size


def test_retries_run_at_most_retry_rows_at_a_time(captioner, monkeypatch):
    """Seeded retries decode on a dynamic cache beside the static one: a whole failed batch at once could run
    the card out of memory, so they are cut to ``RETRY_ROWS``; greedy batches keep ``batch_size``."""
    import onegen.annotators.captioner as module

    sizes, real = [], captioner.vlm._generate_batch
    monkeypatch.setattr(captioner.vlm, "_generate_batch", lambda inputs, batch, *a: sizes.append(batch) or real(inputs, batch, *a))
    monkeypatch.setattr(module, "RETRY_ROWS", 4)
    ims = images(SIZES)
    captioner.vlm.generate(ims, seeds=list(range(len(ims))))
    captioner.vlm.generate(ims)
    assert len(ims) == 6 and sizes == [4, 2, 6]
