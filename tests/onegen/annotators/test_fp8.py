"""FP8 W8A8 linears (the captioner's ``quantize: fp8``), run by torch's CPU ``_scaled_mm``."""

import numpy as np
import pytest
import torch
from torch import nn

from onegen.annotators.base import AnnotatorError
from onegen.annotators.captioner import Captioner
from onegen.annotators.fp8 import FP8, Fp8Linear, quantize_linears, quantize_rows
from onegen.config import CaptionerConfig
from tests.tiny_annotators import build_tiny_llava_next

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quantize_rows_round_trips_within_fp8_precision():
    x = torch.randn(7, 64) * torch.logspace(-3, 3, 7)[:, None]  # rows six decades apart
    q, scale = quantize_rows(x)
    assert q.dtype == FP8 and scale.shape == (7, 1)
    back = q.float() * scale
    assert torch.all((back - x).abs() <= 2 ** -3 * x.abs().amax(1, keepdim=True))  # 3 mantissa bits per row
    assert not torch.equal(back, x)


def test_fused_quantize_rows_computes_the_eager_numbers():
    # CUDA runs quantize_rows compiled (one fused kernel); it must be the same function, any row count
    fused = torch.compile(quantize_rows, dynamic=True)
    for rows in (37, 5, 1):
        x = (torch.randn(rows, 64) * torch.logspace(-3, 3, rows)[:, None]).bfloat16()
        (q0, s0), (q1, s1) = quantize_rows(x), fused(x)
        assert torch.equal(q0.view(torch.uint8), q1.view(torch.uint8)) and torch.equal(s0, s1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_is_close_to_the_linear_and_row_independent(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True).to(dtype)
    fp8 = Fp8Linear(linear)
    assert fp8.weight_fp8.dtype == FP8 and fp8.weight_fp8.shape == (48, 64)
    x = torch.randn(2, 5, 64, dtype=dtype)
    y, ref = fp8(x), linear(x)
    assert y.shape == ref.shape and y.dtype == dtype
    err = ((y - ref).float().norm() / ref.float().norm()).item()
    assert 0 < err < 0.06
    # Per-row scales: a row quantises the same alone or in a batch, so only the GEMM's own
    # accumulation order (as for any linear) can tell batch sizes apart.
    rows = x.reshape(10, 64)
    q, scale = quantize_rows(rows)
    for i in range(10):
        qi, si = quantize_rows(rows[i : i + 1])
        assert torch.equal(qi.view(torch.uint8), q[i : i + 1].view(torch.uint8)) and torch.equal(si, scale[i : i + 1])
    alone = torch.cat([fp8(rows[i : i + 1]) for i in range(10)]).reshape_as(y)
    torch.testing.assert_close(alone, y, rtol=1e-5, atol=1e-5)


def test_quantize_linears_replaces_every_linear_once():
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 16), nn.LayerNorm(16)))
    assert quantize_linears(net) == 2
    assert isinstance(net[0], Fp8Linear) and isinstance(net[2][0], Fp8Linear) and isinstance(net[2][1], nn.LayerNorm)
    assert quantize_linears(net) == 0
    with pytest.raises(ValueError, match="multiple of 16"):
        Fp8Linear(nn.Linear(30, 16))


def test_fp8_captioner_keeps_batch_invariance_and_leaves_head_and_vision_alone(tmp_path):
    build_tiny_llava_next(tmp_path)
    cfg = CaptionerConfig(path=tmp_path, batch_size=6, max_new_tokens=5, min_words=3, max_words=40, max_entities=3,
                          quantize="fp8")
    captioner = Captioner.load(cfg, device="cpu")
    assert captioner.record["version"].startswith("1+transformers.anyres.fp8.")  # provenance says how it ran
    vlm, model = captioner.vlm, captioner.vlm.model
    quantized = [m for m in model.get_decoder().layers.modules() if isinstance(m, Fp8Linear)]
    assert len(quantized) == 7 * len(model.get_decoder().layers)  # q, k, v, o, gate, up, down
    assert not any(isinstance(m, Fp8Linear) for m in model.model.vision_tower.modules())
    assert isinstance(model.lm_head, nn.Linear)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(32, 32), (40, 64), (64, 40), (48, 48)]]
    alone = [vlm.generate([im], min_new_tokens=5)[0].token_ids for im in ims]
    assert [g.token_ids for g in vlm.generate(ims, min_new_tokens=5)] == alone


def test_fp8_needs_a_bfloat16_model(tmp_path):
    build_tiny_llava_next(tmp_path)
    cfg = CaptionerConfig(path=tmp_path, dtype="float16", quantize="fp8", max_new_tokens=5, min_words=3, max_words=40,
                          max_entities=3)
    with pytest.raises(AnnotatorError, match=r"quantize=fp8: fp8 needs the model in bfloat16"):
        Captioner.load(cfg, device="cpu")
