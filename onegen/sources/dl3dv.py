"""DL3DV-10K scenes (nerfstudio ``transforms.json``) as multiview scene records.

Layout: every folder at most three levels below ``root`` that holds a ``transforms.json`` is one
scene (DL3DV-ALL-960P: ``1K/<hash>/transforms.json`` beside ``images_4/``; the benchmark:
``<hash>/nerfstudio/transforms.json``). The scene id is that folder's relative path made key-safe
(``1K/<hash>`` -> ``1K_<hash>``). Opening only finds the files; each is parsed when its record is read.

``transforms.json`` as nerfstudio writes it (DL3DV ran ``ns-process-data`` on COLMAP/hloc output):

* intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` at the top level, any of them
  overridable per frame; they are for the declared ``w x h``, while the files may be a downscale
  (``images_4/``, and some DL3DV scenes were shot in 2K rather than 4K), so ``K`` is rescaled to
  the decoded image size. COLMAP's pixel convention matches ours (centres at +0.5).
* ``camera_model`` PINHOLE / SIMPLE_PINHOLE / OPENCV (``k1 k2 p1 p2``, optional ``k3``). DL3DV's
  frames are the raw video frames with OPENCV distortion, so they are undistorted with OpenCV to the
  same ``K`` before cropping; fisheye and other models are refused.
* ``frames[].file_path`` relative to the scene folder; ``image_subdir`` replaces its first folder
  (960P ships ``images_4/`` while the json says ``images/``).
* ``frames[].transform_matrix``: camera-to-world with OpenGL camera axes (x right, y up, looking
  down -z); the OpenCV world-to-camera is ``inv(c2w @ diag(1, -1, -1, 1))``. The world frame is
  nerfstudio's (COLMAP's world after its ``applied_transform``), kept as is.

One record per scene: ``views`` (seeded per scene id) frames, one in each equal stratum of the
frames sorted by ``file_path`` (time order for DL3DV's ``frame_00001.png ...``), so the views
span the whole capture. No captions unless a ``captions`` csv (``<scene id>,<caption>``) is given
(the paper captions one frame per scene with a VLM: that is the captioner's job).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from onegen.format import Sample
from onegen.portable_linalg import affine_inverse, matmul
from onegen.sources import SourceError
from onegen.sources.image_folder import one_line
from onegen.sources.scenes import (
    camera_view, check_pose, item_seed_for, load_image, pick_views, read_captions_csv, reader_record,
    rgb_on_white, safe_id, scale_intrinsics, scene_record, unique_ids,
)

SOURCE = "dl3dv"
VERSION = "2"  # 2: camera maths through portable_linalg
_GL_TO_CV_4 = np.diag([1.0, -1.0, -1.0, 1.0])
_PINHOLE_MODELS = (None, "PINHOLE", "SIMPLE_PINHOLE", "OPENCV")
_PATTERNS = ("*/transforms.json", "*/*/transforms.json", "*/*/*/transforms.json")  # up to 3 levels below root


class DL3DVSource:
    def __init__(self, root: Path, views: tuple[int, int] = (4, 12), resolution: int = 256,
                 captions: Path | None = None, image_subdir: str | None = None, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: DL3DV root does not exist or is not a directory")
        self.views, self.resolution, self.image_subdir, self.seed = views, resolution, image_subdir, seed
        found = {p for pattern in _PATTERNS for p in self.root.glob(pattern)}
        self.scenes = sorted((p.parent for p in found if p.is_file()
                              and not any(part.startswith(".") for part in p.relative_to(self.root).parts)),
                             key=lambda d: d.relative_to(self.root).as_posix())
        self.ids = unique_ids([safe_id(d.relative_to(self.root).as_posix()) for d in self.scenes], self.scenes,
                              "scene")
        self.captions = read_captions_csv(Path(captions), set(self.ids)) if captions is not None else {}

    def __len__(self) -> int:
        return len(self.scenes)

    def _choose(self, index: int) -> tuple[Path, dict, list[dict], int, list[int]]:
        """(transforms.json, its content, frames in time order, item seed, chosen frame indices)."""
        transforms = self.scenes[index] / "transforms.json"
        meta = _read_transforms(transforms)
        frames = sorted(meta["frames"], key=lambda f: f["file_path"])
        seed = item_seed_for(self.seed, SOURCE, self.ids[index])
        return transforms, meta, frames, seed, pick_views(len(frames), self.views, seed, str(transforms))

    def record_info(self, index: int) -> tuple[str, int, frozenset[str]]:
        """(kind, image views, modalities) of a record, without decoding an image."""
        return "scene", len(self._choose(range(len(self))[index])[4]), frozenset({"image"})

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        source_id = self.ids[index]
        transforms, meta, frames, seed, chosen = self._choose(index)
        views = [self._view(transforms, meta, frames[i]) for i in chosen]
        captions = {"original": self.captions[source_id]} if source_id in self.captions else {}
        return scene_record(SOURCE, source_id, seed, reader_record(f"onegen.sources.{SOURCE}", VERSION), views,
                            captions, {"scene": self.scenes[index].relative_to(self.root).as_posix(),
                                       "frame_count": len(frames), "frames": [frames[i]["file_path"] for i in chosen]})

    def _view(self, transforms: Path, meta: dict, frame: dict):
        where = f"{transforms} frame {frame['file_path']}"
        try:
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{where}: missing or non-numeric 'transform_matrix'") from e
        c2w = check_pose(c2w, where)
        path = transforms.parent / self._image_path(frame["file_path"])
        image = rgb_on_white(load_image(path))
        K, dist = _intrinsics(meta, frame, image.size, where)
        if np.any(dist != 0):
            image = _undistort(image, K, dist)
        return camera_view(image, K, affine_inverse(matmul(c2w, _GL_TO_CV_4)), self.resolution,
                           meta={"frame": frame["file_path"]})

    def _image_path(self, file_path: str) -> str:
        if self.image_subdir is None:
            return file_path
        parts = PurePosixPath(file_path).parts
        return str(PurePosixPath(self.image_subdir, *parts[1:])) if len(parts) > 1 else file_path

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _read_transforms(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: malformed transforms.json: {one_line(e)}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise SourceError(f"{path}: transforms.json must be an object with a non-empty 'frames' list")
    for i, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise SourceError(f"{path}: frames[{i}] has no 'file_path' string")
    return meta


def _intrinsics(meta: dict, frame: dict, size: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """K for the decoded ``size`` and OpenCV distortion ``(k1, k2, p1, p2, k3)`` of one frame."""

    def get(key: str, default=None):
        value = frame.get(key, meta.get(key, default))
        if value is not None and key != "camera_model" and not isinstance(value, (int, float)):
            raise SourceError(f"{where}: '{key}' must be a number, got {value!r}")
        return value

    model = get("camera_model")
    if model not in _PINHOLE_MODELS:
        raise SourceError(f"{where}: camera_model {model!r} is not supported (only {_PINHOLE_MODELS[1:]})")
    if get("k4", 0.0) != 0:
        raise SourceError(f"{where}: distortion coefficient k4 is not supported")
    width, height = size
    w, h = get("w", width), get("h", height)
    fx = get("fl_x")
    if fx is None:
        raise SourceError(f"{where}: no focal length 'fl_x' (top level or per frame)")
    if min(w, h, fx) <= 0:
        raise SourceError(f"{where}: w, h and fl_x must be positive, got {w}, {h}, {fx}")
    K = np.array([[fx, 0.0, get("cx", w / 2)], [0.0, get("fl_y", fx), get("cy", h / 2)], [0.0, 0.0, 1.0]])
    dist = np.array([get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")], dtype=np.float64)
    return scale_intrinsics(K, width / w, height / h), dist


def _undistort(image: Image.Image, K: np.ndarray, dist: np.ndarray) -> Image.Image:
    """The pinhole image with intrinsics ``K`` (OpenCV's radial-tangential model removed)."""
    import cv2  # here: only distorted frames need OpenCV

    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5  # OpenCV puts pixel centres at integers
    return Image.fromarray(cv2.undistort(np.asarray(image), K_cv, dist))
