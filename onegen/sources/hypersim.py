"""Hypersim: tonemapped RGB, metric planar depth and cameras, as scene records (for the depth family).

Layout, as the official per-scene zips unpack (frame ``IIII`` is keyframe ``IIII`` of its trajectory)::

    ai_VVV_NNN/_detail/metadata_scene.csv                        meters_per_asset_unit
    ai_VVV_NNN/_detail/cam_XX/camera_keyframe_positions.hdf5     (N, 3) camera centres, asset units
    ai_VVV_NNN/_detail/cam_XX/camera_keyframe_orientations.hdf5  (N, 3, 3) camera-to-world rotations
    ai_VVV_NNN/images/scene_cam_XX_final_preview/frame.IIII.tonemap.jpg
    ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5

**Cameras.** An orientation's columns are the camera axes in the world (x right, y up, z pointing
away from the view: OpenGL-like); OpenCV's world-to-camera is ``R = diag(1, -1, -1) R_wc^T``,
``t = -R C`` with the centre ``C`` in metres (asset units x ``meters_per_asset_unit``), the unit of
the depth maps.

**Intrinsics.** Hypersim renders a 60 degree (horizontal) pinhole camera, except in scenes whose
V-Ray camera has tilt-shift lens settings. Given ``camera_parameters`` (the official
``metadata_camera_parameters.csv``), a scene's ``M_cam_from_uv`` is used: the ray through image
point ``(u, v)`` (both in [-1, 1] across the image, u right, v up) is ``M [u, v, 1]`` in the
OpenGL-like camera frame. With ``A`` taking pixel coordinates to ``(u, v, 1)``, the OpenCV ray is
``N p`` with ``N = diag(1, -1, -1) M A``; the RQ decomposition ``N^-1 ~ K R_t`` gives an upper
triangular ``K`` and, for tilted lenses, a rotation ``R_t`` of the image plane that is folded into
the world-to-camera (a virtual camera that projects exactly like the rendered one). Without the
csv, ``M = diag(tan 30deg, tan 30deg * H/W, -1)``.

**Depth.** ``depth_meters`` holds the Euclidean distance to the camera centre, not planar depth;
the z-depth along the (virtual) optical axis at pixel centre ``p`` is ``d / ||K^-1 p||``. Stored
like the world's depth: 16-bit millimetres, 0 where invalid (NaN, inf, <= 0), view meta
``depth_scale`` 0.001, ``units`` m, ``kind`` z-depth; resized with nearest neighbour.

**Records.** Every frame is used once, as the depth family wants: a trajectory of ``n`` frames is
split into ``m = ceil(n / views[1])`` records, record ``c`` holding frames ``c, c+m, c+2m, ...``,
so each spans the trajectory with at most ``views[1]`` views (fewer than ``views[0]`` only when the
trajectory is that short). Views come per frame as the world's: image, then depth. No captions
(the paper captions Hypersim frames with a VLM: the captioner's job).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from onegen.camera import Camera
from onegen.format import Sample, View
from onegen.portable_linalg import det3, inv3, matmul, norm, rq3
from onegen.sources import SourceError
from onegen.sources.image_folder import one_line
from onegen.sources.scenes import (
    GL_TO_CV, camera_view, check_pose, item_seed_for, load_image, reader_record, rgb_on_white, rigid, safe_id,
    scene_record, square_crop, unique_ids,
)
from onegen.sources.world_records import DEPTH_SCALE

SOURCE = "hypersim"
VERSION = "2"  # 2: camera maths through portable_linalg
DEFAULT_FOV_X_DEG = 60.0
_PREVIEW = re.compile(r"^scene_(cam_\d+)_final_preview$")
_FRAME = re.compile(r"^frame\.(\d+)\.tonemap\.jpg$")


class HypersimSource:
    def __init__(self, root: Path, views: tuple[int, int] = (4, 12), resolution: int = 256,
                 camera_parameters: Path | None = None, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: Hypersim root does not exist or is not a directory")
        self.resolution, self.seed = resolution, seed
        self.camera_parameters = Path(camera_parameters) if camera_parameters is not None else None
        self.projections = _read_camera_parameters(self.camera_parameters) if self.camera_parameters else None
        self.records: list[tuple[str, str, list[int], int, int]] = []  # scene, camera, frames, part, parts
        scenes = sorted(p for p in self.root.iterdir() if (p / "_detail").is_dir() and (p / "images").is_dir())
        for scene in scenes:
            for cam_dir in sorted((scene / "images").iterdir()):
                match = _PREVIEW.match(cam_dir.name)
                if not match or not cam_dir.is_dir():
                    continue
                frames = sorted(int(m.group(1)) for m in map(_FRAME.match, (p.name for p in cam_dir.iterdir())) if m)
                parts = math.ceil(len(frames) / views[1])
                self.records += [(scene.name, match.group(1), frames[c::parts], c, parts) for c in range(parts)]
        self.ids = unique_ids([safe_id(f"{s}_{c}_part{k}") for s, c, _, k, _ in self.records], self.records, "record")

    def __len__(self) -> int:
        return len(self.records)

    def record_info(self, index: int) -> tuple[str, int, frozenset[str]]:
        """(kind, image views, modalities) of a record, without reading a file."""
        return "scene", len(self.records[index][2]), frozenset({"image", "depth"})

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        scene_name, cam, frames, part, parts = self.records[index]
        source_id = self.ids[index]
        scene = self.root / scene_name
        mpau = _meters_per_asset_unit(scene / "_detail" / "metadata_scene.csv")
        positions = _read_hdf5(scene / "_detail" / cam / "camera_keyframe_positions.hdf5", (3,))
        orientations = _read_hdf5(scene / "_detail" / cam / "camera_keyframe_orientations.hdf5", (3, 3))
        views: list[View] = []
        for frame in frames:
            where = f"{scene_name} {cam} frame {frame:04d}"
            if frame >= min(len(positions), len(orientations)):
                raise SourceError(f"{scene / '_detail' / cam}: no keyframe {frame} for {where} "
                                  f"({len(positions)} positions, {len(orientations)} orientations)")
            image = rgb_on_white(load_image(scene / "images" / f"scene_{cam}_final_preview"
                                            / f"frame.{frame:04d}.tonemap.jpg"))
            K, R_t = self._intrinsics(scene_name, *image.size)
            c2w = check_pose(rigid(orientations[frame], positions[frame] * mpau), where)
            R = matmul(matmul(R_t, GL_TO_CV), c2w[:3, :3].T)
            w2c = rigid(R, -matmul(R, c2w[:3, 3]))
            distance = _read_hdf5(scene / "images" / f"scene_{cam}_geometry_hdf5"
                                  / f"frame.{frame:04d}.depth_meters.hdf5", None)
            if distance.shape != (image.size[1], image.size[0]):
                raise SourceError(f"{where}: depth is {distance.shape}, image is {image.size[1]}x{image.size[0]}")
            img_view = camera_view(image, K, w2c, self.resolution, meta={"frame": frame})
            views += [img_view, self._depth_view(planar_depth(distance, K), K, img_view.camera)]
        seed = item_seed_for(self.seed, SOURCE, source_id)
        return scene_record(SOURCE, source_id, seed, reader_record(f"onegen.sources.{SOURCE}", VERSION), views, {},
                            {"scene": scene_name, "camera": cam, "part": part, "parts": parts,
                             "frames": frames, "meters_per_asset_unit": mpau})

    def _intrinsics(self, scene: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        if self.projections is None:
            a = math.tan(math.radians(DEFAULT_FOV_X_DEG) / 2)
            M = np.diag([a, a * height / width, -1.0])
        elif scene in self.projections:
            M = self.projections[scene]
        else:
            raise SourceError(f"{self.camera_parameters}: no camera parameters for scene {scene}")
        return intrinsics_from_uv(M, width, height, scene)

    def _depth_view(self, depth_m: np.ndarray, K: np.ndarray, camera: Camera) -> View:
        out, _ = square_crop(Image.fromarray(depth_m.astype(np.float32)), K, self.resolution,
                             Image.Resampling.NEAREST)
        mm = np.clip(np.round(np.asarray(out) / DEPTH_SCALE), 0, 65535).astype(np.uint16)
        return View("depth", mm, role="condition", camera=camera,
                    meta={"depth_scale": DEPTH_SCALE, "units": "m", "kind": "z-depth", "invalid": 0})

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def intrinsics_from_uv(M: np.ndarray, width: int, height: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Hypersim's ``M_cam_from_uv`` -> (K, R_t) with ``pixel ~ K R_t ray`` for OpenCV-axes rays."""
    A = np.array([[2.0 / width, 0.0, -1.0], [0.0, -2.0 / height, 1.0], [0.0, 0.0, 1.0]])  # pixel -> (u, v, 1)
    N = matmul(matmul(GL_TO_CV, np.asarray(M, dtype=np.float64)), A)
    if not np.all(np.isfinite(N)) or det3(N) <= 0:
        raise SourceError(f"{where}: M_cam_from_uv is singular, non-finite or mirrored")
    U, Q = rq3(inv3(N))  # det(Q) = +1 as det(P) > 0
    return U / U[2, 2], Q


def planar_depth(distance: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Euclidean distance to the camera centre -> z-depth (0 where invalid), pixel centres at +0.5."""
    h, w = distance.shape
    v, u = np.mgrid[0:h, 0:w] + 0.5
    rays = matmul(np.stack([u, v, np.ones_like(u)], axis=-1), inv3(K).T)  # third component is 1
    depth = distance.astype(np.float64) / norm(rays, axis=-1)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)


def _read_hdf5(path: Path, row_shape: tuple[int, ...] | None) -> np.ndarray:
    """Hypersim's hdf5 ``dataset`` array; ``row_shape`` checks (N, *row_shape), None a 2-D image."""
    try:
        with h5py.File(path, "r") as f:
            data = np.asarray(f["dataset"][()])
    except FileNotFoundError:
        raise SourceError(f"{path}: file is missing") from None
    except (OSError, KeyError, ValueError) as e:
        raise SourceError(f"{path}: unreadable hdf5 (expected a 'dataset' array): {one_line(e)}") from e
    ok = data.ndim == 2 if row_shape is None else (data.ndim == 1 + len(row_shape) and data.shape[1:] == row_shape)
    if not ok or data.dtype.kind != "f":
        want = "a 2-D float image" if row_shape is None else f"float (N, {', '.join(map(str, row_shape))})"
        raise SourceError(f"{path}: expected {want}, got {data.dtype} {data.shape}")
    return data.astype(np.float64) if row_shape is not None else data


def _meters_per_asset_unit(path: Path) -> float:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = {r[0]: r[1] for r in csv.reader(f) if len(r) == 2}
        value = float(rows["meters_per_asset_unit"])
    except FileNotFoundError:
        raise SourceError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError) as e:
        raise SourceError(f"{path}: no numeric meters_per_asset_unit: {one_line(e)}") from e
    if not (math.isfinite(value) and value > 0):
        raise SourceError(f"{path}: meters_per_asset_unit must be positive, got {value}")
    return value


def _read_camera_parameters(path: Path) -> dict[str, np.ndarray]:
    """``metadata_camera_parameters.csv`` -> ``{scene: M_cam_from_uv (3x3)}``."""
    names = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {row["scene_name"]: np.array([float(row[n]) for n in names]).reshape(3, 3)
                    for row in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{path}: malformed camera parameters csv (needs scene_name and M_cam_from_uv_00..22): "
                          f"{one_line(e)}") from e
