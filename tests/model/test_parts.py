"""VAE and text-encoder wrappers, the flow-matching loss, and view ordering."""

import pytest
import torch

from model.loss import flow_matching_loss, sample_sigmas, shift_sigmas
from model.text import TextEncoder
from model.vae import LatentCodec
from model.views import batch_to_latents, view_order


def test_vae_shapes_determinism_and_local_round_trip(tmp_path):
    codec = LatentCodec.load(None, seed=0)
    assert codec.random_weights
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 16, 4, 6) and torch.equal(z, codec.encode(x))
    assert codec.decode(z).shape == (2, 3, 32, 48)
    codec.vae.save_pretrained(tmp_path / "repo" / "vae")
    loaded = LatentCodec.load(tmp_path / "repo")  # Hub layout: <repo>/vae
    assert not loaded.random_weights and torch.allclose(loaded.encode(x), z, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.encode(torch.zeros(1, 3, 30, 32))


def test_vae_missing_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.vae: no AutoencoderKL at .*nowhere"):
        LatentCodec.load(tmp_path / "nowhere")


def test_text_encoder_masks_padding_and_round_trips(tmp_path):
    enc = TextEncoder.load(None, max_tokens=40, dim=32)
    h, m = enc(["[[text2image]] a red cube", ""])
    assert h.shape[0] == 2 and h.shape[2] == 32 and m.dtype == torch.bool
    assert m[1].sum() == 1  # the empty prompt keeps its end-of-sequence token
    alone, _ = enc(["[[text2image]] a red cube"])
    n = int(m[0].sum())
    assert torch.allclose(alone[0, :n], h[0, :n], atol=1e-5)  # padding elsewhere changes nothing
    long, lm = enc(["x" * 100])
    assert lm.shape[1] == 40
    enc.model.save_pretrained(tmp_path / "text_encoder")
    enc.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = TextEncoder.load(tmp_path)
    assert torch.allclose(loaded(["a red cube"])[0], enc(["a red cube"])[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model.text_encoder"):
        TextEncoder.load(tmp_path / "nowhere")


def test_sigma_schedule_is_shifted_logit_normal():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas((20000,), g, shift=3.0)
    assert 0 < s.min() and s.max() < 1
    assert abs(s.median().item() - 0.75) < 0.01  # shift 3 moves sigmoid(0) = 0.5 to 0.75
    assert torch.equal(shift_sigmas(torch.tensor([0.0, 1.0]), 3.0), torch.tensor([0.0, 1.0]))


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise():
    x = torch.randn(2, 3, 16, 4, 4)
    eps = torch.randn_like(x)
    sig = torch.rand(2, 3)

    def oracle(x_sigma, t, text, mask):  # recovers u = eps - x from x_sigma and sigma
        s = (t / 1000)[..., None, None, None]
        return (x_sigma - x) / s

    loss, per_view = flow_matching_loss(oracle, x, None, None, sig, eps)
    assert loss.item() < 1e-8 and per_view.shape == (2, 3)
    loss0, _ = flow_matching_loss(lambda a, t, b, c: torch.zeros_like(a), x, None, None, sig, eps)
    assert loss0.item() > 0.5


def test_multiview_views_are_interleaved_and_encoded():
    assert view_order(["image", "image", "rays", "rays"]) == [0, 2, 1, 3]
    assert view_order(["image", "depth"]) == [0, 1]
    with pytest.raises(ValueError, match="2 images but 1 ray"):
        view_order(["image", "image", "rays"])
    codec = LatentCodec.load(None)
    batch = {"modalities": [["image", "image", "rays", "rays"]],
             "views": [torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32),
                       torch.full((1, 16, 4, 4), 7.0), torch.full((1, 16, 4, 4), 9.0)]}
    z = batch_to_latents(batch, codec)
    assert z.shape == (1, 4, 16, 4, 4)
    assert (z[0, 1] == 7).all() and (z[0, 3] == 9).all()
