"""An AutoencoderKL fitted on world renders, and the normalisation of its latents, for the learning runs and probes.

There is no offline pretrained VAE, and a random one cannot be learned through, so ``learn_procedural.py`` fits
a small SD3-style one (16 latent channels, /8) on the world and ``probe_text.py --vae`` a tiny one (/2) at 32²;
both then normalise its latents on held-out images, per channel or by SD3's one shift and scale.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from evals.geneval.colors import WorldColorClassifier
from onegen.pixels import tensor_to_pixels

LATENT_NORMS = ("channel", "global")


def fit_autoencoder(vae: AutoencoderKL, data: torch.Tensor, device: torch.device, seed: int,
                    seconds: float = float("inf"), steps: int | None = None, batch: int = 64,
                    scale_equivariance: float = 0.0, objects: torch.Tensor | None = None,
                    object_weight: float = 0.0) -> dict:
    """Train ``vae`` on ``data`` ([N, 3, H, W] in [-1, 1]) for ``seconds`` or ``steps``, whichever ends first: L1 +
    MSE reconstruction of a sampled latent with a weak KL term, AdamW, bf16 autocast on a GPU.
    ``scale_equivariance`` > 0 adds, at that weight, the reconstruction of the image downsampled 2x from
    its latent downsampled 2x (Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders": latents
    whose coarse scales decode to the coarse image carry less high-frequency content for diffusion to model).
    ``object_weight`` > 0 counts the reconstruction error of the pixels ``objects`` marks ([N, 1, H, W], 1 on an
    object) that many times more than the background's. Why: a world object covers ~1% of a render, so a plain fit
    spends its steps on floor and sky; session 22's 60-second fit sent most objects' colours to one brown (world
    GenEval of its round trips of the oracle renders: colours 0.19, against the renders' own 0.81)."""
    if steps is None and seconds == float("inf"):
        raise ValueError("fit_autoencoder needs seconds or steps to stop")
    if object_weight and (objects is None or objects.shape != (len(data), 1, *data.shape[2:])):
        raise ValueError(f"object_weight needs objects shaped [{len(data)}, 1, {data.shape[2]}, {data.shape[3]}], "
                         f"got {None if objects is None else tuple(objects.shape)}")
    torch.manual_seed(seed)
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-4, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    t0, step, losses = time.time(), 0, []
    progress = tqdm(desc="vae", unit="step", total=steps)
    while time.time() - t0 < seconds and (steps is None or step < steps):
        pick = torch.randint(len(data), (batch,), generator=gen)
        x = data[pick].to(device, non_blocking=True)
        weight = 1 + object_weight * objects[pick].to(device, torch.float32) if object_weight else None
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample.float()
            coarse = vae.decode(F.avg_pool2d(z, 2)).sample.float() if scale_equivariance else None
        kl = post.kl().mean() / x[0].numel()
        if weight is None:
            loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        else:  # the same two terms as a weighted mean over the pixels (every channel of a pixel its weight)
            err = rec - x
            loss = ((err.abs() + err.square()) * weight).mean() / weight.mean() + 1e-4 * kl
        if coarse is not None:
            x_coarse = F.avg_pool2d(x, 2)
            loss = loss + scale_equivariance * (F.l1_loss(coarse, x_coarse) + F.mse_loss(coarse, x_coarse))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        progress.update()
        if step % 200 == 0:
            losses.append(round(loss.item(), 5))
            progress.set_postfix(loss=losses[-1])
    progress.close()
    vae.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "loss_every_200": losses, "images": len(data),
            "object_weight": object_weight}


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, held: torch.Tensor, latent_norm: str) -> dict:
    """Normalise ``vae``'s latents on ``held`` images: each channel to mean 0 and std 1 (``"channel"``, folded into
    the VAE by ``standardise_latent_channels``, config scale 1 and shift 0) or all channels by one shift and scale
    in its config (``"global"``, SD3's). -> the reconstruction PSNR and each channel's spread under one scale."""
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, not {latent_norm!r}")
    modes = _modes(vae, held)
    z = modes.float()
    shared = (z - z.mean()) / z.std()  # the spread of each channel under one scale and shift for all
    summary = {"recon_psnr_db": reconstruction_psnr(vae, held, modes), "latent_norm": latent_norm,
               "channel_mean": [round(float(m), 3) for m in shared.mean((0, 2, 3))],
               "channel_std": [round(float(s), 3) for s in shared.std((0, 2, 3))]}
    if latent_norm == "channel":
        standardise_latent_channels(vae, z.mean((0, 2, 3)), z.std((0, 2, 3)))
        vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    else:
        vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
    return {**summary, "shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor}


def _modes(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    images = images.to(vae.quant_conv.weight.device)
    return torch.cat([vae.encode(images[i:i + 64]).latent_dist.mode() for i in range(0, len(images), 64)])


def object_colours_kept(images: torch.Tensor, round_trips: torch.Tensor, instances: torch.Tensor,
                        palette: dict[str, tuple[int, int, int]], min_pixels: int = 16) -> dict:
    """How many objects keep their colour through a VAE's ``round_trips`` of ``images`` (both [N, 3, H, W] in
    [-1, 1]): each instance of ``instances`` ([N, H, W], 0 the background) covering ``min_pixels`` or more is named
    a colour on both as world GenEval names it (``WorldColorClassifier``: the palette colour nearest the median
    pixel under its mask). The share named alike bounds the colours a model generating in those latents can draw,
    with no detector in the way."""
    name = WorldColorClassifier(palette)
    kept = total = 0
    for k, (image, trip, instance) in enumerate(zip(images, round_trips, instances.numpy())):
        ids, counts = np.unique(instance[instance > 0], return_counts=True)
        masks = [(None, instance == i) for i in ids[counts >= min_pixels]]
        if masks:
            before, after = (name(tensor_to_pixels(x), masks, f"image {k}") for x in (image, trip))
            kept += sum(a == b for a, b in zip(before, after))
            total += len(masks)
    return {"objects": total, "colour_kept": round(kept / max(total, 1), 4)}


@torch.no_grad()
def round_trips(vae: AutoencoderKL, images: torch.Tensor, modes: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` ([-1, 1]) encoded to their posterior's mode (``modes`` where already encoded) and decoded."""
    z = _modes(vae, images) if modes is None else modes
    return torch.cat([vae.decode(z[i:i + 64]).sample for i in range(0, len(z), 64)]).clamp(-1, 1)


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor, modes: torch.Tensor | None = None) -> float:
    """PSNR (dB, images in [0, 1]) of ``images`` ([-1, 1]) encoded to their posterior's mode (``modes`` where
    already encoded) and decoded."""
    rec = round_trips(vae, images, modes)
    mse = F.mse_loss((rec + 1) / 2, (images.to(rec.device) + 1) / 2).item()
    return round(10 * math.log10(1 / mse), 2)


@torch.no_grad()
def standardise_latent_channels(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the VAE's latent channel c come out as (z_c - mean_c) / std_c, and decode as before, by folding the
    affine map into its 1x1 ``quant_conv`` (the posterior's mean and log-variance) and ``post_quant_conv``.

    Why: SD3's one scale for all channels left the learning run's fitted VAE with channel spreads from 0.25 to
    1.92 (a CPU fit), and ``probe_text.py --chroma-scale`` finds a prompt's colours learned slower when they sit in
    weaker channels. (``probe_text.py --vae`` then found colour learned as fast under either normalisation of a
    tiny fitted VAE, README.) The result is still a plain ``AutoencoderKL``, which every consumer reads with
    scale 1 and shift 0."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("standardising the latent channels needs the VAE's quant_conv and post_quant_conv")
    c = mean.numel()
    mean, std = mean.to(vae.quant_conv.weight), std.clamp(min=1e-6).to(vae.quant_conv.weight)
    enc = vae.quant_conv
    enc.weight[:c] /= std[:, None, None, None]
    enc.bias[:c] = (enc.bias[:c] - mean) / std
    enc.bias[c:] -= 2 * std.log()  # the log-variance, so a sampled latent is scaled as the mode
    dec = vae.post_quant_conv
    dec.bias += dec.weight[:, :, 0, 0] @ mean
    dec.weight *= std[None, :, None, None]

