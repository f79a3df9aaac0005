"""A decoded sample at a smaller resolution: what a training stage at another side than the shards' reads.

The paper changes resolution between stages (text-to-image at 256² then 512², the other tasks at 256², a
1024² finetune) over the same data, so shards are built once and resized as they are read (or as
`onegen latents` encodes them). Every view is centre-cropped to a square and resized to ``side``
(``scenes.square_crop``, the crop and intrinsics maths of the scene readers): pictures with an antialiased
filter; maps whose values are labels, geometry or thin lines (depth, class colours, drawn boxes, binary edges)
by nearest neighbour, so no pixel takes a value that no object has. Cameras follow the crop and the scale, and
ray maps are recomputed from them at the new latent grid rather than interpolated; likewise Canny edges are found
again on the resized picture with their recorded thresholds, and pose skeletons drawn again from their keypoints.
Never upwards: a sample smaller than the side would be a blurred copy, so it is an error naming the item.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from onegen.camera import Camera
from onegen.config import SideRule, ViewSides
from onegen.format import Sample, View
from onegen.plucker import rays_for_cameras
from onegen.sources.scenes import square_crop, square_crop_intrinsics

# bump when resizing the same sample gives other pixels: resized latents record it
VERSION = 3  # 2: pose skeletons redrawn from their keypoints, Canny edges found again on the resized picture;
# 3: that Canny on the colour image, pose limbs as wide as the short side says
# values that must stay among those the map already holds (Canny's edges: binary, one pixel wide)
NEAREST_MODALITIES = frozenset({"depth", "semantic", "bbox", "instance", "canny"})
# views that are not pictures: the prompt's cached features pass as they are, ray maps are recomputed
UNSIZED = frozenset({"text", "rays"})


def resized_dir(family_dir: Path, side: int | ViewSides) -> Path:
    """Where a family's samples resized to ``side`` (or by view count) are kept, inside its own folder
    (``onegen latents``): ``side512``, ``side512to3v_256to5v``."""
    return family_dir / f"side{rule_record(side)}"


def rule_record(rule: SideRule) -> int | str | None:
    """``rule`` as a JSON record keeps it (a checkpoint's recipe, ``latents.json``): the side or the rule's label."""
    return rule.label if isinstance(rule, ViewSides) else rule


def rule_text(rule: SideRule) -> str:
    """``rule`` for a person: ``as built``, ``resized to 512px``, ``resized to 512px up to 3 views, ...``."""
    return "as built" if rule is None else f"resized to {rule if isinstance(rule, ViewSides) else f'{rule}px'}"


def side_by_views(rule: ViewSides, views: int) -> int | None:
    """The side of a sample of ``views`` views (ray maps not counted): that of the smallest ``n`` >= ``views``."""
    return next((side for n, side in rule.by_views if views <= n), rule.beyond)


class UpscaleError(ValueError):
    """A stage's side is larger than a stored sample's: the recipe asks for what the shards cannot give, so the
    reader stops at once rather than skipping the sample as a damaged one."""


def _check_side(height: int, width: int, side: int, where: str) -> None:
    if min(height, width) < side:
        raise UpscaleError(f"{where}: {width}x{height} px, smaller than the stage's side {side}: stages never "
                           f"upscale; store the source that large (world.resolution, a source's resolution) or train "
                           f"this family at its own side")


def resized_camera(camera: Camera, side: int, where: str) -> Camera:
    """The camera of its image's centre square crop resized to ``side``."""
    _check_side(camera.height, camera.width, side, where)
    return Camera(K=square_crop_intrinsics(camera.K, camera.width, camera.height, side),
                  world_to_camera=camera.world_to_camera, height=side, width=side)


def resized_points(xy: np.ndarray, height: int, width: int, side: int) -> np.ndarray:
    """Pixel positions [..., 2] (x, y) of an image after its centre square crop is resized to ``side``: the
    mapping ``square_crop_intrinsics`` applies to cameras (its crop of the identity is that affine map)."""
    A = square_crop_intrinsics(np.eye(3), width, height, side)
    return (xy @ A[:2, :2].T + A[:2, 2]).astype(xy.dtype)


def _redrawn_pose(view: View, side: int, where: str) -> View:
    """A pose skeleton drawn again at ``side`` from its keypoints, moved by the crop and scale (resampling would
    blend its limb colours and thin its lines), keypoints and boxes with it."""
    from onegen.annotators.pose import render_skeleton

    h, w = view.data.shape[:2]
    _check_side(h, w, side, where)
    kp = np.array(view.meta["keypoints"], np.float32).reshape(-1, 17, 3)
    boxes = np.array(view.meta["boxes"], np.float32).reshape(-1, 5)
    kp[..., :2] = resized_points(kp[..., :2], h, w, side)
    boxes[:, :4] = resized_points(boxes[:, :4].reshape(-1, 2, 2), h, w, side).reshape(-1, 4)
    meta = {**view.meta, "keypoints": np.round(kp, 2).tolist(), "boxes": np.round(boxes, 2).tolist()}
    return replace(view, data=render_skeleton(kp, side, side, view.meta.get("threshold", 0.3)), meta=meta)


def resize_view(view: View, side: int, where: str) -> View:
    """One picture or map (HxW or HxWxC) centre-cropped and resized to ``side``, its camera with it; a pose
    skeleton is drawn again from its keypoints."""
    a = view.data
    if view.modality == "pose" and "keypoints" in view.meta:
        return _redrawn_pose(view, side, where)
    if view.modality == "latent":
        raise ValueError(f"{where}: VAE latents cannot be resized; resize the shards before `onegen latents`")
    if a.ndim not in (2, 3):
        raise ValueError(f"{where}: expected an HxW or HxWxC map to resize, got shape {a.shape}")
    _check_side(*a.shape[:2], side, where)
    if view.modality in NEAREST_MODALITIES:
        resample = Image.Resampling.NEAREST
    elif a.dtype == np.uint8:
        resample = Image.Resampling.BICUBIC
    else:
        raise ValueError(f"{where}: no resampling rule for a {a.dtype} {view.modality} map")
    image, _ = square_crop(Image.fromarray(a), np.eye(3), side, resample)
    camera = None if view.camera is None else resized_camera(view.camera, side, where)
    return replace(view, data=np.asarray(image, dtype=a.dtype), camera=camera)


def _redetect_canny(sample: Sample, views: list[View]) -> None:
    """Canny edges of the resized picture with the thresholds the stored map was drawn with, in place of its
    nearest-neighbour shrink (which breaks its one-pixel lines): the condition as it would be made at this side."""
    from onegen.annotators.degrade import canny

    picture = next((v for v in views if v.modality == "image"), None)
    for i, v in enumerate(sample.views):
        if v.modality == "canny" and picture is not None and {"low", "high"} <= v.meta.keys():
            views[i] = replace(views[i], data=canny(picture.data, int(v.meta["low"]), int(v.meta["high"]))[0])


def resize_by_rule(sample: Sample, rule: SideRule) -> Sample:
    """``sample`` at what a stage trains its family at: ``rule``'s side (by its count of views other than ray maps
    for ``ViewSides``), or as stored where that is None."""
    if isinstance(rule, ViewSides):
        rule = side_by_views(rule, sum(v.modality not in UNSIZED for v in sample.views))
    return sample if rule is None else resize_sample(sample, rule)


def resize_sample(sample: Sample, side: int) -> Sample:
    """``sample`` with every view at ``side`` x ``side``; a view that cannot be resized (a VAE latent, one smaller
    than ``side``, an unknown kind of array) is a ``ValueError`` naming the sample and the view. Views' pixel-unit
    metadata (a blur's sigma, an inpainting box) keep the stored units: ``meta.resized_from`` says which; a pose
    view's keypoints and boxes move with its pixels."""
    views = [v if v.modality in UNSIZED else resize_view(v, side, f"{sample.key}: view {i} ({v.modality})")
             for i, v in enumerate(sample.views)]
    ray_at = [i for i, v in enumerate(views) if v.modality == "rays"]
    if ray_at:
        rig = [views[i] for i in ray_at]
        if any(v.camera is None for v in rig):
            raise ValueError(f"{sample.key}: a ray view without its camera cannot be recomputed at side {side}")
        normalized = {bool(v.meta.get("normalized", False)) for v in rig}
        if len(normalized) != 1:
            raise ValueError(f"{sample.key}: ray views disagree on camera normalisation")
        cameras = [resized_camera(v.camera, side, f"{sample.key}: view {i} (rays)") for i, v in zip(ray_at, rig)]
        rays = rays_for_cameras(cameras, normalize=normalized.pop()).astype(rig[0].data.dtype)
        for i, c, r in zip(ray_at, cameras, rays):
            views[i] = replace(views[i], data=r, camera=c)
    _redetect_canny(sample, views)
    sizes = sorted({tuple(v.data.shape[:2]) for v in sample.views if v.modality not in UNSIZED})
    return replace(sample, views=views, meta={**sample.meta, "resized_from": [list(s) for s in sizes]})
