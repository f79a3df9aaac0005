"""GSO-30 novel-view-synthesis renders (EscherNet's evaluation set; OneDiffusion Table 2).

Protocol (SPEC "Evaluation protocols", GSO): 30 objects x 25 views at 256², white background;
condition on the first 1, 2 or 3 views, predict views 10-24, and score PSNR/SSIM/LPIPS per view,
averaged per object, then over objects.

``root`` holds one folder per object (its name is the object's name); each folder uses one of two
layouts, detected per object:

``rgb/`` + ``pose/`` (this project's layout)
    ``<object>/rgb/000.png`` .. ``024.png`` and ``<object>/pose/000.npy`` .. ``024.npy``; poses are
    world-to-camera in OpenCV axes (x right, y down, looking down +z), 3x4 or 4x4.
``render_mvs_25/model/`` (EscherNet's public GSO30 renders, HF dataset ``kxic/EscherNet-Dataset``)
    ``<object>/render_mvs_25/model/000.png`` + ``000.npy`` .. ``024.*``; other folders of an object
    (``meshes/``, ``render_sync_36_single/`` ...) are ignored. Poses are 3x4 world-to-camera in
    Blender camera axes (x right, y up, looking down -z: ``get_3x4_RT_matrix_from_blender`` in
    EscherNet's ``scripts/blender_script_mvs.py``) and are turned into OpenCV axes by negating the
    camera's y and z rows.

Images are RGBA (or RGB) PNGs of any square size, composited over white with the "over" operator
and, when not 256², resized to 256² with PIL bicubic after compositing (EscherNet's renders are 512²
and its evaluation resizes them so). EscherNet whitens only fully transparent pixels; compositing
differs from that on antialiased edge pixels only (about 0.02 % of a render). Views 000-024 are read;
other files are ignored.

Intrinsics: ``<object>/K.npy`` (3x3, pixels of the stored images) when present, else the field of
view of the Zero-1-to-3 Blender script EscherNet rendered with (35 mm lens, 32 mm sensor width:
``FOV_DEG`` = 2·atan(16/35) = 49.13°, principal point at the centre), i.e. f = 280 px at 256².

A missing, unreadable or malformed file raises :class:`GSODataError` with one line naming it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evals.nvs import metrics
from onegen.camera import intrinsics_from_fov

N_VIEWS = 25
RESOLUTION = 256
# EscherNet's eval_eschernet.py conditions on ``np.arange(T_in)`` (views 0..T_in-1) and
# metrics/eval_2D_NVS.py scores ``range(10, 25)``; SPEC fixes the same targets.
CONDITION_VIEWS: dict[int, tuple[int, ...]] = {1: (0,), 2: (0, 1), 3: (0, 1, 2)}
TARGET_VIEWS: tuple[int, ...] = tuple(range(10, N_VIEWS))

FOV_DEG = math.degrees(2 * math.atan(16 / 35))  # Zero-1-to-3 / EscherNet Blender camera: lens 35, sensor 32

_PLAIN, _ESCHERNET = "rgb/+pose/", "render_mvs_25/model/"
_BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])  # camera axes: Blender (y up, -z forward) -> OpenCV
_ROTATION_TOLERANCE = 1e-3  # renders store float32/float64 rotations; anything looser is not a pose

# What a damaged PNG or .npy can raise while being decoded.
_DECODE_ERRORS = (OSError, EOFError, ValueError, SyntaxError, zlib.error, Image.DecompressionBombError)


class GSODataError(ValueError):
    """A GSO file that is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class GSOObject:
    name: str
    images: np.ndarray  # (25, 256, 256, 3) uint8, on white
    world_to_camera: np.ndarray  # (25, 4, 4) float64, OpenCV axes
    K: np.ndarray  # (3, 3) float64, pixels at 256²


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _layout(folder: Path) -> str:
    if (folder / "rgb").is_dir() and (folder / "pose").is_dir():
        return _PLAIN
    if (folder / "render_mvs_25" / "model").is_dir():
        return _ESCHERNET
    raise GSODataError(f"{folder}: not a GSO object folder (expected rgb/ and pose/, or render_mvs_25/model/)")


def _view_paths(folder: Path, layout: str, view: int) -> tuple[Path, Path]:
    if layout == _PLAIN:
        return folder / "rgb" / f"{view:03d}.png", folder / "pose" / f"{view:03d}.npy"
    base = folder / "render_mvs_25" / "model" / f"{view:03d}"
    return base.with_suffix(".png"), base.with_suffix(".npy")


def _read_image(path: Path) -> tuple[np.ndarray, int]:
    """The view on white at RESOLUTION², uint8 RGB, and the side of the stored image."""
    if not path.is_file():
        raise GSODataError(f"{path}: missing")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and is named
            mode, rgba = im.mode, np.asarray(im.convert("RGBA"))
    except _DECODE_ERRORS as e:
        raise GSODataError(f"{path}: unreadable image ({_reason(e)})") from None
    if mode not in ("RGBA", "RGB"):
        raise GSODataError(f"{path}: expected an RGBA or RGB image, got mode {mode}")
    height, width = rgba.shape[:2]
    if height != width:
        raise GSODataError(f"{path}: expected a square image, got {width}x{height}")
    rgb = metrics.white_background(rgba)
    if height != RESOLUTION:
        rgb = np.asarray(Image.fromarray(rgb).resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC))
    return rgb, height


def _read_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise GSODataError(f"{path}: missing")
    try:
        array = np.load(path, allow_pickle=False)
    except _DECODE_ERRORS as e:
        raise GSODataError(f"{path}: unreadable {what} ({_reason(e)})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise GSODataError(f"{path}: expected a numeric array ({what})")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise GSODataError(f"{path}: non-finite values ({what})")
    return array


def _read_pose(path: Path, blender_axes: bool) -> np.ndarray:
    """A 3x4 or 4x4 world-to-camera matrix -> 4x4 in OpenCV axes."""
    pose = _read_array(path, "pose")
    if pose.shape == (4, 4):
        if not np.allclose(pose[3], [0, 0, 0, 1]):
            raise GSODataError(f"{path}: the last row of a 4x4 pose must be 0 0 0 1, got {pose[3].tolist()}")
    elif pose.shape != (3, 4):
        raise GSODataError(f"{path}: expected a 3x4 or 4x4 world-to-camera matrix, got shape {pose.shape}")
    w2c = np.eye(4)
    w2c[:3] = pose[:3]
    R = w2c[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=_ROTATION_TOLERANCE) or np.linalg.det(R) < 0:
        raise GSODataError(f"{path}: the 3x3 block is not a rotation (det {np.linalg.det(R):.4f})")
    if blender_axes:
        w2c[:3] = _BLENDER_TO_OPENCV @ w2c[:3]
    return w2c


def _read_intrinsics(folder: Path, size: int) -> np.ndarray:
    path = folder / "K.npy"
    if not path.exists():
        return intrinsics_from_fov(FOV_DEG, RESOLUTION, RESOLUTION)
    K = _read_array(path, "intrinsics")
    if K.shape != (3, 3) or not np.allclose(K[2], [0, 0, 1]) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GSODataError(f"{path}: expected a 3x3 intrinsics matrix with last row 0 0 1 and positive focals")
    # K.npy is in pixels of the stored images; scale it with them (pixel-corner convention: cx = W/2).
    return np.diag([RESOLUTION / size, RESOLUTION / size, 1.0]) @ K


def load_object(folder: str | Path) -> GSOObject:
    """One object folder (either layout) -> its 25 views on white, OpenCV poses and K at 256²."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GSODataError(f"{folder}: missing (expected a GSO object folder)")
    layout = _layout(folder)
    images, poses, sizes = [], [], []
    for view in range(N_VIEWS):
        image_path, pose_path = _view_paths(folder, layout, view)
        image, size = _read_image(image_path)
        if sizes and size != sizes[0]:  # one K serves all views, so they must share a resolution
            raise GSODataError(f"{image_path}: {size}x{size}, unlike view 000 ({sizes[0]}x{sizes[0]})")
        images.append(image)
        sizes.append(size)
        poses.append(_read_pose(pose_path, blender_axes=layout == _ESCHERNET))
    return GSOObject(name=folder.name, images=np.stack(images), world_to_camera=np.stack(poses),
                     K=_read_intrinsics(folder, sizes[0]))


def load_gso(root: str | Path, objects: Sequence[str] | None = None) -> list[GSOObject]:
    """Every object folder under ``root`` (sorted by name, hidden ones skipped), or the named ones in order."""
    root = Path(root)
    if not root.is_dir():
        raise GSODataError(f"{root}: missing (expected a folder with one sub-folder per GSO object)")
    if objects is None:
        objects = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not objects:
            raise GSODataError(f"{root}: no object folders")
    return [load_object(root / name) for name in objects]


def score_object(preds: Mapping[int, np.ndarray], obj: GSOObject,
                 lpips: metrics.LPIPSAlex | None = None) -> dict[str, float]:
    """PSNR, SSIM (and LPIPS when a model is given) of the target views, averaged over the views.

    ``preds`` maps a view index to its predicted HxWx3 uint8 image; views other than the targets are
    ignored, so condition views may be left in.
    """
    missing = [v for v in TARGET_VIEWS if v not in preds]
    if missing:
        raise ValueError(f"{obj.name}: no prediction for target views {missing}")
    per_view: dict[str, list[float]] = {"psnr": [], "ssim": []} | ({"lpips": []} if lpips is not None else {})
    for v in TARGET_VIEWS:
        pred, target = preds[v], obj.images[v]
        if not isinstance(pred, np.ndarray) or pred.shape != target.shape or pred.dtype != np.uint8:
            raise ValueError(f"{obj.name}: view {v}: expected a {target.shape} uint8 prediction, got "
                             f"{getattr(pred, 'shape', type(pred).__name__)} {getattr(pred, 'dtype', '')}".rstrip())
        per_view["psnr"].append(metrics.psnr_uint8(pred, target))
        per_view["ssim"].append(metrics.ssim(pred, target))
        if lpips is not None:
            per_view["lpips"].append(lpips(pred, target))
    return {k: float(np.mean(v)) for k, v in per_view.items()}


def aggregate(per_object: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over objects of :func:`score_object`'s per-object means (object name -> scores)."""
    if not per_object:
        raise ValueError("no objects to aggregate")
    names = list(per_object)
    keys = set(per_object[names[0]])
    for name in names[1:]:
        if set(per_object[name]) != keys:
            raise ValueError(f"{name}: metrics {sorted(per_object[name])} differ from "
                             f"{names[0]}'s {sorted(keys)}")
    return {k: float(np.mean([per_object[n][k] for n in names])) for k in sorted(keys)}
