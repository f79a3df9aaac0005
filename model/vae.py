"""The VAE tokenizer: images in [-1, 1] <-> 16-channel latents at 1/8 resolution (SD3-style).

Wraps ``diffusers.AutoencoderKL`` loaded from a local folder (never the hub). Latents are
normalised with the VAE config's ``shift_factor`` and ``scaling_factor`` so they are roughly
unit-variance, as the transformer expects: ``z = (mode(q(z|x)) - shift) * scale``. Encoding
uses the posterior mode, so precomputed latents are deterministic.

The released OneDiffusion pipeline encodes ``scale * z`` and decodes ``x / scale``: it never applies
``shift_factor``. Its weights learned those latents, so ``shift=False`` gives them (``ModelConfig.vae_shift``
decides where the released weights are in play).

``load(None)`` builds a tiny seeded-random VAE of the same architecture for tests and the
offline CPU default; anything it produces is marked ``random_weights`` and is not a result.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from onegen.annotators.base import weights_sha256
from onegen.hub_cache import resolve_model_path

LATENT_CHANNELS = 16
DOWNSAMPLE = 8


def tiny_vae_config() -> dict:
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
        "scaling_factor": 1.5305, "shift_factor": 0.0609,  # SD3's values
    }


class LatentCodec:
    def __init__(self, vae: AutoencoderKL, random_weights: bool, shift: bool = True):
        self.vae = vae.eval().requires_grad_(False)
        self.random_weights = random_weights
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0) if shift else 0.0
        if vae.config.latent_channels != LATENT_CHANNELS:
            raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the model needs {LATENT_CHANNELS}")

    @staticmethod
    def identity_of(path: Path | None, seed: int = 0, shift: bool = True) -> str:
        """Names the latents ``load(path, seed=seed, shift=shift)`` gives, for caches made with them."""
        if path is None:
            name = f"random-tiny-vae-seed{seed}"
        else:
            path = Path(resolve_model_path(path, "model.vae"))
            name = weights_sha256(path / "vae" if (path / "vae" / "config.json").is_file() else path)
        return name if shift else f"{name}+unshifted"

    @classmethod
    def load(cls, path: Path | None, device="cpu", dtype=torch.float32, seed: int = 0,
             shift: bool = True) -> "LatentCodec":
        if path is None:
            torch.manual_seed(seed)
            vae = AutoencoderKL(**tiny_vae_config()).to(device)
            return cls(vae if dtype == torch.float32 else vae.to(dtype=dtype), random_weights=True, shift=shift)
        path = Path(resolve_model_path(path, "model.vae"))
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model.vae: no AutoencoderKL at {path} (expected config.json there or in vae/)")
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        return cls(vae.to(device), random_weights=False, shift=shift)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] (H, W multiples of 8) -> [B, 16, H/8, W/8] normalised latents."""
        if images.shape[-1] % DOWNSAMPLE or images.shape[-2] % DOWNSAMPLE:
            raise ValueError(f"VAE input {tuple(images.shape[-2:])} is not a multiple of {DOWNSAMPLE}")
        x = images.to(self.device, next(self.vae.parameters()).dtype)
        z = self.vae.encode(x).latent_dist.mode()
        return ((z - self.shift) * self.scale).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, next(self.vae.parameters()).dtype) / self.scale + self.shift
        return self.vae.decode(z).sample.float().clamp(-1, 1)
