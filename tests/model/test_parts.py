"""VAE and text-encoder wrappers, the flow-matching loss, and view ordering."""

import pytest
import torch

from model.loss import flow_matching_loss, given_views, sample_sigmas, shift_sigmas
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


def test_vae_unshifted_latents_are_the_released_pipelines():
    """The released pipeline encodes ``scaling_factor * z`` and decodes ``x / scaling_factor``, never using
    shift_factor: ``shift=False`` gives those latents, the default SD3's ``(z - shift) * scale``."""
    shifted, unshifted = LatentCodec.load(None, seed=0), LatentCodec.load(None, seed=0, shift=False)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    z = shifted.vae.encode(x).latent_dist.mode()
    cfg = shifted.vae.config
    assert cfg.shift_factor != 0  # else the two conventions would agree and this test prove nothing
    assert torch.allclose(unshifted.encode(x), cfg.scaling_factor * z, atol=1e-6)
    assert torch.allclose(shifted.encode(x), (z - cfg.shift_factor) * cfg.scaling_factor, atol=1e-6)
    lat = torch.randn(1, 16, 2, 2)
    assert torch.allclose(unshifted.decode(lat), shifted.vae.decode(lat / cfg.scaling_factor).sample.clamp(-1, 1),
                          atol=1e-6)
    assert LatentCodec.identity_of(None, 0, shift=False) != LatentCodec.identity_of(None, 0) == "random-tiny-vae-seed0"


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


def test_random_encoder_reads_world_words_whole_and_spells_the_rest():
    tok = TextEncoder.load(None).tokenizer
    pieces = tok.convert_ids_to_tokens(tok("A photo of two Red cubes, left of a giraffe.").input_ids)
    assert pieces[:7] == ["a", "photo", "of", "two", "red", "cube", "##s"]  # lower-cased, one token a world word
    assert pieces[7:11] == [",", "left", "of", "a"]
    assert pieces[11:] == ["g", "##i", "##r", "##a", "##f", "##f", "##e", ".", "</s>"]  # no <unk> for new words
    tagged = tok.convert_ids_to_tokens(tok("[[depth2image]] a cone [[text2image]]x").input_ids)
    assert tagged == ["[[depth2image]]", "a", "cone", "[", "[", "t", "##e", "##x", "##t", "##2", "##i", "##m", "##a",
                      "##g", "##e", "]", "]", "x", "</s>"]  # task tags whole, unless glued to a word
    assert TextEncoder.identity_of(None) != TextEncoder.identity_of(None, seed=1)


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


def test_given_views_keep_a_target_and_a_condition_in_each_conditional_sample():
    g = torch.Generator().manual_seed(0)
    given = given_views((4000, 4), 0.5, g)
    conditional = given.any(dim=1)
    assert 0.45 < conditional.float().mean() < 0.55
    counts = given[conditional].sum(dim=1)
    assert counts.min() == 1 and counts.max() == 3  # never all four, never none in a conditional sample
    assert set(counts.tolist()) == {1, 2, 3}
    assert not given_views((50, 1), 1.0, g).any()  # one view has nothing to condition on


def test_given_views_at_probability_zero_leave_the_noise_stream_alone():
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert not given_views((8, 4), 0.0, g).any()
    assert torch.equal(torch.randn(5, generator=g), torch.randn(5, generator=ref))


def test_loss_feeds_given_views_clean_at_sigma_zero_and_leaves_them_out():
    x = torch.randn(3, 4, 16, 4, 4)
    eps = torch.randn_like(x)
    sig = torch.rand(3, 4) * 0.9 + 0.05
    given = torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, True, False]])
    seen = {}

    def oracle_on_targets(x_sigma, t, text, mask):  # exact velocity on targets, garbage on given views
        seen["x"], seen["t"] = x_sigma, t
        s = (t / 1000)[..., None, None, None]
        v = (x_sigma - x) / s.clamp_min(1e-6)
        return torch.where(given[..., None, None, None], torch.full_like(v, 7.0), v)

    loss, per_view = flow_matching_loss(oracle_on_targets, x, None, None, sig, eps, given)
    assert loss.item() < 1e-8
    assert per_view[given].min() > 1.0  # logged per view, but not in the loss
    assert torch.equal(seen["x"][given], x[given]) and (seen["t"][given] == 0).all()
    assert (seen["t"][~given] > 0).all()


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
