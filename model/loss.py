"""Flow-matching loss with an independent noise level per view (paper §3.2, eq. 5).

σ = noise level (SPEC): x_σ = (1-σ)·x + σ·ε, velocity target u = ε - x, and the model sees
timesteps σ·1000. Each view draws its own σ from the SD3 schedule -- a logit-normal
LogNorm(0, 1) sample shifted by 3 (σ' = sσ / (1 + (s-1)σ)) -- so every subset of views learns
to act as condition (σ near 0) or target (σ near 1), which is what lets one model do every task.

Near 0 is rarer than it sounds: at shift 3 a view is below σ = 0.1 once in ~2000 draws, and the
sampler feeds its condition views clean. ``given_views`` is the optional remedy (not in the
paper): some samples train as the sampler's conditional mode runs them with
``given_label='zero'`` (which the model predictor picks for such checkpoints): a random subset of
their views clean at σ = 0 and out of the loss, the rest targets with their own σ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(shape, generator: torch.Generator | None = None, shift: float = 3.0,
                  device="cpu") -> torch.Tensor:
    """Independent σ per entry: shift(sigmoid(N(0, 1)))."""
    u = torch.randn(shape, generator=generator, device="cpu").to(device)
    return shift_sigmas(torch.sigmoid(u), shift)


def given_views(shape, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which views are given clean as conditions, [B, F] bool.

    Each sample of two or more views is conditional with probability ``prob``; a conditional
    sample gives each view with probability 1/2, but always at least one and never all of them
    (one view drawn to be a target, another to be given). Draws nothing when ``prob`` is 0, so
    a run without conditions keeps its noise stream.
    """
    B, F = shape
    if prob <= 0 or F < 2:
        return torch.zeros(B, F, dtype=torch.bool)
    conditional = torch.rand(B, generator=generator) < prob
    given = torch.rand(B, F, generator=generator) < 0.5
    target = torch.randint(F, (B,), generator=generator)
    other = (target + 1 + torch.randint(F - 1, (B,), generator=generator)) % F
    rows = torch.arange(B)
    given[rows, target] = False
    given[rows, other] = True
    return given & conditional[:, None]


def flow_matching_loss(model, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                       sigmas: torch.Tensor, noise: torch.Tensor,
                       given: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared velocity error over the target views; also the per-view loss [B, F] for logging.

    ``latents`` [B, F, C, H, W] clean; ``sigmas`` [B, F]; ``noise`` like ``latents``; ``given``
    [B, F] bool marks condition views, fed clean at σ = 0 and left out of the mean (their
    velocity ε − x cannot be read from a clean input).
    """
    if given is not None:
        sigmas = sigmas.masked_fill(given, 0.0)
    s = sigmas.to(latents.dtype)[..., None, None, None]
    x_sigma = (1 - s) * latents + s * noise
    v = model(x_sigma, sigmas * 1000, text, text_mask)
    per_view = F.mse_loss(v.float(), (noise - latents).float(), reduction="none").mean(dim=(2, 3, 4))
    if given is None:
        return per_view.mean(), per_view.detach()
    target = (~given).to(per_view.dtype)
    return (per_view * target).sum() / target.sum().clamp_min(1), per_view.detach()
