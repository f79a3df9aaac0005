"""A decoded sample at another resolution: what a training stage at another side than the shards' reads.

The paper changes resolution between stages (text-to-image at 256² then 512², the other tasks at 256², a
1024² finetune) over the same data, so shards are built once and resized as they are read (or as
`onegen latents` encodes them). Every view is centre-cropped to a square and resized to ``side``:
pictures with an antialiased filter; maps whose values are labels or geometry (depth, class colours,
drawn boxes) by nearest neighbour, so no pixel takes a value that no object has. Cameras follow the crop
and the scale, and ray maps are recomputed from them at the new latent grid rather than interpolated.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from onegen.camera import Camera
from onegen.format import Sample, View
from onegen.plucker import rays_for_cameras

# bump when resizing the same sample gives other pixels: resized latents record it
VERSION = 1
# values that must stay among those the map already holds
NEAREST_MODALITIES = frozenset({"depth", "semantic", "bbox", "instance"})
PASS_THROUGH = frozenset({"text"})


def square_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, size) of the centred square crop."""
    size = min(height, width)
    return (height - size) // 2, (width - size) // 2, size


def _nearest(a: np.ndarray, top: int, left: int, size: int, side: int) -> np.ndarray:
    # the source pixel whose centre is nearest each target pixel's centre
    idx = np.minimum(((np.arange(side) + 0.5) * size / side).astype(np.int64), size - 1)
    return np.ascontiguousarray(a[top + idx][:, left + idx])


def _antialiased(a: np.ndarray, top: int, left: int, size: int, side: int) -> np.ndarray:
    crop = a[top:top + size, left:left + size]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None))


def resized_camera(camera: Camera, top: int, left: int, size: int, side: int) -> Camera:
    """The camera of the crop (principal point moved) scaled from ``size`` to ``side`` pixels."""
    scale = side / size
    K = np.array(camera.K, dtype=np.float64)
    K[0, 2] -= left
    K[1, 2] -= top
    K[:2] *= scale
    return Camera(K=K, world_to_camera=np.asarray(camera.world_to_camera, dtype=np.float64), height=side, width=side)


def resize_sample(sample: Sample, side: int) -> Sample:
    """``sample`` with every view at ``side`` x ``side``; a view that cannot be resized (a VAE latent, an
    unknown kind of array) is a ``ValueError`` naming the sample and the view."""
    views: list[View | None] = []
    for i, v in enumerate(sample.views):
        where = f"{sample.key}: view {i} ({v.modality})"
        if v.modality in PASS_THROUGH or v.modality == "rays":
            views.append(None if v.modality == "rays" else v)  # rays: recomputed below from the resized cameras
            continue
        if v.modality == "latent":
            raise ValueError(f"{where}: VAE latents cannot be resized; resize the shards before `onegen latents`")
        if v.data.ndim not in (2, 3):
            raise ValueError(f"{where}: expected an HxW or HxWxC map to resize, got shape {v.data.shape}")
        top, left, size = square_crop_box(*v.data.shape[:2])
        if v.modality in NEAREST_MODALITIES:
            data = _nearest(v.data, top, left, size, side)
        elif v.data.dtype == np.uint8:
            data = _antialiased(v.data, top, left, size, side)
        else:
            raise ValueError(f"{where}: no resampling rule for a {v.data.dtype} {v.modality} map")
        camera = resized_camera(v.camera, top, left, size, side) if v.camera is not None else None
        views.append(replace(v, data=data, camera=camera))

    ray_at = [i for i, v in enumerate(sample.views) if v.modality == "rays"]
    if ray_at:
        rig = [sample.views[i] for i in ray_at]
        if any(v.camera is None for v in rig):
            raise ValueError(f"{sample.key}: a ray view without its camera cannot be recomputed at side {side}")
        normalized = {bool(v.meta.get("normalized", False)) for v in rig}
        if len(normalized) != 1:
            raise ValueError(f"{sample.key}: ray views disagree on camera normalisation")
        cameras = [resized_camera(v.camera, *square_crop_box(v.camera.height, v.camera.width), side) for v in rig]
        rays = rays_for_cameras(cameras, normalize=normalized.pop()).astype(rig[0].data.dtype)
        for i, v, c, r in zip(ray_at, rig, cameras, rays):
            views[i] = replace(v, data=r, camera=c)
    return replace(sample, views=views)
