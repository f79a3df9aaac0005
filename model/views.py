"""Reader batches -> the transformer's latent sequence [B, F, 16, h, w].

Image-like views (images, depth/semantic/box/edge maps, all 3-channel in [-1, 1]) go through
the VAE; Plücker ray views and precomputed ``latent`` views (``onegen latents``) are already
16-channel maps at latent resolution and pass through.
Multiview samples are stored as K images then K ray maps; the model sees them interleaved
``[img0, rays0, img1, rays1, ...]`` as the released sampler orders them.
"""

from __future__ import annotations

import torch

from model.vae import LatentCodec


def view_order(modalities: list[str]) -> list[int]:
    """Indices putting each image beside its ray map (identity when there are no rays)."""
    rays = [i for i, m in enumerate(modalities) if m == "rays"]
    if not rays:
        return list(range(len(modalities)))
    images = [i for i, m in enumerate(modalities) if m != "rays"]
    if len(images) != len(rays):
        raise ValueError(f"multiview sample has {len(images)} images but {len(rays)} ray maps")
    return [i for pair in zip(images, rays) for i in pair]


def batch_to_latents(batch: dict, codec: LatentCodec) -> torch.Tensor:
    """Encode a bucketed reader batch (one shape signature) into [B, F, 16, h, w]."""
    modalities = batch["modalities"][0]
    out = []
    for i in view_order(modalities):
        v = batch["views"][i]
        # non_blocking: a blocking copy would wait for the GPU's queue (the loader's workers pin their batches)
        out.append(v.to(codec.device, non_blocking=True).float() if modalities[i] in ("rays", "latent")
                   else codec.encode(v))
    shapes = {tuple(x.shape[1:]) for x in out}
    if len(shapes) != 1:
        raise ValueError(f"views do not share one latent shape: {sorted(shapes)}")
    return torch.stack(out, dim=1)
