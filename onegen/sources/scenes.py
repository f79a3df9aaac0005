"""Pieces shared by the external scene and identity readers (DL3DV, Objaverse, CO3D, Hypersim, ID folders).

Their records have the shape of the ``world`` stage's (``onegen.sources.world_records``), so the
task families treat both alike: a ``onegen.format.Sample`` whose views are square RGB images
(``View("image", HxWx3 uint8, camera=Camera)``), ``meta["kind"]`` ``"scene"`` or ``"identity"``.

Pixel convention, here and in ``onegen.camera`` / ``onegen.plucker``: continuous image
coordinates with pixel ``(i, j)`` covering ``[j, j+1) x [i, i+1)``, its centre at
``(j + 0.5, i + 0.5)``; the principal point of a centred camera is ``(W/2, H/2)``. COLMAP
(hence nerfstudio/DL3DV) and PyTorch3D (hence CO3D) use the same convention, so their
intrinsics carry over without half-pixel shifts. Under it, cropping and resizing change
intrinsics exactly: ``K' = S (K - crop offset)`` (see ``square_crop``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

from onegen.camera import Camera
from onegen.format import Provenance, Sample, View
from onegen.portable_linalg import matmul
from onegen.seeding import item_seed
from onegen.sources import SourceError
from onegen.sources.image_folder import one_line
from onegen.sources.world_records import RECORD_TASK

# a record's meta key: the source trains on the task token alone, never with a VLM caption (CO3D, paper §4)
TASK_TOKEN_ONLY = "task_token_only"
GL_TO_CV = np.diag([1.0, -1.0, -1.0])  # OpenGL/Blender camera axes (y up, looking down -z) <-> OpenCV
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_id(text: str) -> str:
    """``text`` as one webdataset key part: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _UNSAFE.sub("_", text)


def unique_ids(ids: list[str], origins: list, what: str) -> list[str]:
    """``ids`` unchanged, or SourceError naming the two items that share one."""
    seen: dict[str, object] = {}
    for source_id, origin in zip(ids, origins):
        if source_id in seen:
            raise SourceError(f"{origin}: {what} id {source_id!r} is also the id of {seen[source_id]}")
        seen[source_id] = origin
    return ids


def reader_record(module: str, version: str) -> dict:
    """Provenance entry for a reader (no weights)."""
    return {"name": module, "version": version, "weights_sha256": None}


def item_seed_for(seed: int, source: str, source_id: str) -> int:
    """Seed of one item, keyed by its id (not its index), so subsets and filters keep every choice."""
    return item_seed(seed, f"{source}/{source_id}", 0)


def load_image(path: Path) -> Image.Image:
    """The image at ``path`` fully decoded (mode kept), or SourceError naming the file."""
    if not path.is_file():
        raise SourceError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncation and corruption show up here, not later
            return im.copy()
    except Exception as e:  # Pillow raises many types on malformed files
        raise SourceError(f"{path}: cannot decode image: {one_line(e)}") from e


def rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB image; transparent pixels are composited over white (renders with an alpha channel)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))
    return image.convert("RGB")


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for the same image resampled by (sx, sy), e.g. intrinsics given for 3840x2160, image 960x540."""
    return matmul(np.diag([sx, sy, 1.0]), np.asarray(K, dtype=np.float64))


def square_crop_intrinsics(K: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """The intrinsics of an image's centre square crop ``[x0, x0+s) x [y0, y0+s)`` resized to ``size``: an image
    point ``x`` lands at ``size/s * (x - x0)``, so ``K' = S T K`` with ``T`` the crop offset and
    ``S = diag(size/s, size/s, 1)``."""
    s = min(width, height)
    x0, y0 = (width - s) // 2, (height - s) // 2
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return matmul(matmul(np.diag([size / s, size / s, 1.0]), shift), np.asarray(K, dtype=np.float64))


def square_crop(image: Image.Image, K: np.ndarray, size: int,
                resample: Image.Resampling = Image.Resampling.BICUBIC) -> tuple[Image.Image, np.ndarray]:
    """Centre square crop resized to ``size``, and the intrinsics that go with it (``square_crop_intrinsics``:
    Pillow's ``box`` resize maps box edges to image edges, as those intrinsics assume)."""
    w, h = image.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    out = image.resize((size, size), resample, box=(x0, y0, x0 + s, y0 + s))
    return out, square_crop_intrinsics(K, w, h, size)


def pick_views(count: int, views: tuple[int, int], seed: int, where: str) -> list[int]:
    """Sorted frame indices of one multiview sample: K in ``views`` (seeded), one per stratum.

    The sequence ``0..count-1`` is cut into K equal strata and one frame is drawn in each, so the
    views spread over the whole sequence.
    """
    lo, hi = views
    if count < lo:
        raise SourceError(f"{where}: has {count} frame(s), fewer than the {lo} views a record needs")
    rng = np.random.default_rng(seed)
    k = int(rng.integers(lo, min(hi, count) + 1))
    edges = [count * i // k for i in range(k + 1)]  # k <= count, so every stratum is non-empty
    return [a + int(rng.integers(0, b - a)) for a, b in zip(edges[:-1], edges[1:])]


def rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 ``[R t; 0 1]``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def check_pose(T: np.ndarray, where: str) -> np.ndarray:
    """``T`` as a float64 4x4 rigid transform, or SourceError (wrong shape, non-finite, not a rotation)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise SourceError(f"{where}: pose must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3) \
            or np.linalg.det(R) < 0:
        raise SourceError(f"{where}: pose is not a rigid transform (rotation part not orthonormal, or last row "
                          f"not 0 0 0 1)")
    return rigid(R, T[:3, 3])  # the last row exactly 0 0 0 1


def read_captions_csv(path: Path, keep: set[str] | None = None) -> dict[str, str]:
    """``id,caption`` rows without a header (Cap3D's layout) -> ``{id: caption}``, only ids in ``keep``."""
    captions: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if len(row) != 2:
                    raise SourceError(f"{path}:{line}: expected 'id,caption', got {len(row)} fields")
                if keep is None or row[0] in keep:
                    captions[row[0]] = row[1].strip()
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: cannot read captions csv: {one_line(e)}") from e
    return captions


def scene_record(source: str, source_id: str, seed: int, reader: dict, views: list[View],
                 captions: dict[str, str], meta: dict) -> Sample:
    """A ``kind: "scene"`` record in the world records' shape."""
    return Sample(key=f"{source}/{source_id}", task=RECORD_TASK, caption=captions.get("original", ""),
                  views=views, provenance=Provenance(source, source_id, seed, [reader]), captions=captions,
                  meta={"kind": "scene", **meta})


def camera_view(image: Image.Image, K: np.ndarray, world_to_camera: np.ndarray, size: int,
                meta: dict | None = None) -> View:
    """An RGB image view at ``size`` x ``size`` with its camera (intrinsics adjusted to the crop)."""
    out, K2 = square_crop(image, K, size)
    return View("image", np.asarray(out, dtype=np.uint8), role="image",
                camera=Camera(K=K2, world_to_camera=np.asarray(world_to_camera, dtype=np.float64),
                              height=size, width=size),
                meta=meta or {})
