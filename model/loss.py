"""Flow-matching loss with an independent noise level per view (paper §3.2, eq. 5).

σ = noise level (SPEC): x_σ = (1-σ)·x + σ·ε, velocity target u = ε - x, and the model sees
timesteps σ·1000. Each view draws its own σ from the SD3 schedule -- a logit-normal
LogNorm(0, 1) sample shifted by 3 (σ' = sσ / (1 + (s-1)σ)) -- so every subset of views learns
to act as condition (σ near 0) or target (σ near 1), which is what lets one model do every task.
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


def flow_matching_loss(model, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                       sigmas: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared velocity error over all views; also the per-view loss [B, F] for logging.

    ``latents`` [B, F, C, H, W] clean; ``sigmas`` [B, F]; ``noise`` like ``latents``.
    """
    s = sigmas.to(latents.dtype)[..., None, None, None]
    x_sigma = (1 - s) * latents + s * noise
    v = model(x_sigma, sigmas * 1000, text, text_mask)
    per_view = F.mse_loss(v.float(), (noise - latents).float(), reduction="none").mean(dim=(2, 3, 4))
    return per_view.mean(), per_view.detach()
