"""world_vae: the fit stops where told and can weight the objects up, the colours a round trip keeps are counted
per object, and both latent normalisations give what the model is meant to see while the VAE decodes as before."""

import pytest
import torch
from diffusers import AutoencoderKL

from benchmarks.world_vae import (fit_autoencoder, normalise_latents, object_colours_kept, round_trips,
                                  standardise_latent_channels)
from onegen.sources.procedural import COLORS


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(latent_channels=16, block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_fit_runs_its_steps_and_lowers_the_reconstruction_loss():
    flat = torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1  # one colour an image
    vae, data = _tiny_vae(), flat.expand(-1, -1, 16, 16).repeat(4, 1, 1, 1)
    with torch.no_grad():
        before = (vae.decode(vae.encode(data).latent_dist.mode()).sample - data).abs().mean()
    summary = fit_autoencoder(vae, data, torch.device("cpu"), seed=0, steps=60, batch=8)
    assert summary["steps"] == 60 and summary["images"] == 32 and not vae.training
    with torch.no_grad():
        after = (vae.decode(vae.encode(data).latent_dist.mode()).sample - data).abs().mean()
    assert after < 0.9 * before
    with pytest.raises(ValueError, match="seconds or steps"):
        fit_autoencoder(vae, data, torch.device("cpu"), seed=0)


def test_the_scale_equivariance_term_teaches_the_decoder_to_read_pooled_latents():
    blocks = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    data = torch.nn.functional.interpolate(blocks, scale_factor=4, mode="nearest")  # coarse structure to keep
    coarse_error = {}
    for weight in (0.0, 1.0):  # 300 steps: the fit's fixed learning rate is slow for a VAE this small
        vae = _tiny_vae()
        fit_autoencoder(vae, data, torch.device("cpu"), seed=0, steps=300, batch=8, scale_equivariance=weight)
        with torch.no_grad():
            pooled = torch.nn.functional.avg_pool2d(vae.encode(data).latent_dist.mode(), 2)
            coarse_error[weight] = (vae.decode(pooled).sample - torch.nn.functional.avg_pool2d(data, 2)).abs().mean()
    assert coarse_error[1.0] < 0.85 * coarse_error[0.0]  # 0.32 against 0.44 when written


@pytest.mark.parametrize("latent_norm", ["channel", "global"])
def test_normalised_latents_are_unit_per_channel_or_overall_and_decode_as_before(latent_norm):
    vae, held = _tiny_vae().eval(), _images(6, 1)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(held).latent_dist.mode()).sample
    summary = normalise_latents(vae, held, latent_norm)
    assert summary["latent_norm"] == latent_norm and len(summary["channel_std"]) == 16
    with torch.no_grad():
        z = vae.encode(held).latent_dist.mode()
        latents = (z - vae.config.shift_factor) * vae.config.scaling_factor
        assert torch.allclose(vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample,
                              decoded, atol=1e-4)
    if latent_norm == "channel":
        assert torch.allclose(latents.std((0, 2, 3)), torch.ones(16), atol=1e-4)
    else:  # one scale for all: the channels keep the unequal spreads the summary reports
        assert abs(latents.std().item() - 1) < 1e-3
        assert torch.allclose(latents.std((0, 2, 3)), torch.tensor(summary["channel_std"]), atol=2e-3)
        assert max(summary["channel_std"]) > 1.5 * min(summary["channel_std"])
    with pytest.raises(ValueError, match="latent_norm"):
        normalise_latents(vae, held, "none")


def test_standardised_vae_encodes_unit_channels_and_decodes_as_before():
    vae, images = _tiny_vae().eval(), _images(6, 2)
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        z = before.mode()
        mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
        decoded = vae.decode(z).sample
        standardise_latent_channels(vae, mean, std)
        after = vae.encode(images).latent_dist
    assert torch.allclose(after.mode(), (z - mean[:, None, None]) / std[:, None, None], atol=1e-4)
    assert torch.allclose(after.mode().mean((0, 2, 3)), torch.zeros(16), atol=1e-4)
    assert torch.allclose(after.mode().std((0, 2, 3)), torch.ones(16), atol=1e-4)
    assert torch.allclose(after.std, before.std / std[:, None, None], rtol=1e-4)  # a sample scales as the mode
    with torch.no_grad():
        assert torch.allclose(vae.decode(after.mode()).sample, decoded, atol=1e-4)
        assert not torch.allclose(vae.decode(z).sample, decoded, atol=1e-2)  # the old latents are no longer its


def _objects_on_grey(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16² grey images with one 5x5 square of a palette colour each, and their instance maps (1 on the square)."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 127.5 - 1
    images, instances = torch.zeros(n, 3, 16, 16), torch.zeros(n, 16, 16, dtype=torch.long)
    for k in range(n):
        y, x = torch.randint(0, 11, (2,), generator=g).tolist()
        images[k, :, y:y + 5, x:x + 5] = palette[torch.randint(len(palette), (1,), generator=g)].view(3, 1, 1)
        instances[k, y:y + 5, x:x + 5] = 1
    return images, instances


def test_weighting_the_objects_fits_their_colours_first():
    images, instances = _objects_on_grey(64, 0)
    on_object = (instances > 0)[:, None].expand(-1, 3, -1, -1)
    error = {}
    for weight in (0.0, 20.0):
        vae = _tiny_vae()
        summary = fit_autoencoder(vae, images, torch.device("cpu"), seed=0, steps=80, batch=16,
                                  objects=(instances > 0)[:, None], object_weight=weight)
        assert summary["object_weight"] == weight
        error[weight] = (round_trips(vae, images) - images).abs()[on_object].mean()
    assert error[20.0] < 0.8 * error[0.0]
    with pytest.raises(ValueError, match=r"objects shaped \[64, 1, 16, 16\]"):
        fit_autoencoder(_tiny_vae(), images, torch.device("cpu"), seed=0, steps=1, object_weight=1.0)


def test_object_colours_kept_counts_the_objects_a_round_trip_names_alike():
    images, instances = _objects_on_grey(24, 1)
    instances[:4] = 0  # no object: nothing to count
    for k in range(4, 8):  # 3 rows of the square left: 15 pixels, under the 16 an object needs to be counted
        instances[k, instances[k].any(1).nonzero().flatten()[3:]] = 0
    counted = 16
    untrained = object_colours_kept(images, round_trips(_tiny_vae().eval(), images), instances, COLORS)
    assert untrained["objects"] == counted
    vae = _tiny_vae()
    fit_autoencoder(vae, images, torch.device("cpu"), seed=0, steps=150, batch=8,
                    objects=(instances > 0)[:, None], object_weight=20.0)
    fitted = object_colours_kept(images, round_trips(vae.eval(), images), instances, COLORS)
    assert fitted["objects"] == counted
    assert fitted["colour_kept"] > untrained["colour_kept"] + 0.3
