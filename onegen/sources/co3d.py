"""CO3D (v2) sequences as multiview scene records, without captions (paper: task token only).

Each ``<root>/<category>/frame_annotations.jgz`` is a gzipped JSON list of frames:
``sequence_name``, ``frame_number``, ``image {path, size}`` (path relative to ``root``, size
``[H, W]``) and ``viewpoint {R, T, focal_length, principal_point, intrinsics_format}`` in
PyTorch3D's conventions, read as ``pytorch3d.implicitron``'s ``JsonIndexDataset`` reads them:

* extrinsics act on row vectors, ``X_cam = X_world @ R + T``, with camera axes +X left, +Y up,
  +Z forward. OpenCV's world-to-camera is ``R_cv = diag(-1, -1, 1) R^T``, ``t_cv = diag(-1, -1, 1) T``.
* intrinsics are in NDC. With ``half = (W/2, H/2)`` and ``rescale = half`` for
  ``"ndc_norm_image_bounds"`` or ``min(W, H)/2`` on both axes for ``"ndc_isotropic"``:
  ``f_px = f * rescale`` and ``c_px = half - p * rescale`` (NDC +x/+y point left/up, pixels
  right/down). PyTorch3D puts pixel centres at +0.5, as we do, so no half-pixel shift.

``size`` is the annotated image size; ``K`` is rescaled if the decoded file differs. One record
per sequence: ``views`` (seeded per sequence) frames, one in each equal stratum of the sequence in
``frame_number`` order. Opening parses every category's annotations once to list sequences; a
record's category is re-read when needed and kept until another category is asked for (records are
sorted by category, so a sequential pass reads each file about once).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from onegen.format import Sample
from onegen.portable_linalg import matmul
from onegen.sources import SourceError
from onegen.sources.image_folder import one_line
from onegen.sources.scenes import (
    TASK_TOKEN_ONLY, camera_view, check_pose, item_seed_for, load_image, pick_views, reader_record, rgb_on_white,
    rigid, safe_id, scale_intrinsics, scene_record, unique_ids,
)

SOURCE = "co3d"
VERSION = "3"  # 2: camera maths through portable_linalg; 3: records say they train on the task token alone
ANNOTATIONS = "frame_annotations.jgz"
_P3D_TO_CV = np.diag([-1.0, -1.0, 1.0])  # PyTorch3D camera (+X left, +Y up) -> OpenCV (+X right, +Y down)


class CO3DSource:
    def __init__(self, root: Path, views: tuple[int, int] = (4, 12), resolution: int = 256,
                 categories: list[str] | None = None, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: CO3D root does not exist or is not a directory")
        self.views, self.resolution, self.seed = views, resolution, seed
        if categories is None:
            categories = sorted(p.parent.name for p in self.root.glob(f"*/{ANNOTATIONS}")
                                if not p.parent.name.startswith("."))
        for c in categories:
            if not (self.root / c / ANNOTATIONS).is_file():
                raise SourceError(f"{self.root / c / ANNOTATIONS}: category {c!r} has no frame annotations")
        self.sequences: list[tuple[str, str]] = []  # (category, sequence_name), sorted
        self.frame_counts: list[int] = []
        for c in sorted(categories):
            for name, frames in sorted(self._read_category(c).items()):
                self.sequences.append((c, name))
                self.frame_counts.append(len(frames))
        self.ids = unique_ids([safe_id(f"{c}_{s}") for c, s in self.sequences], self.sequences, "sequence")
        self._cached: tuple[str, dict[str, list[dict]]] | None = None

    def _read_category(self, category: str) -> dict[str, list[dict]]:
        path = self.root / category / ANNOTATIONS
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                frames = json.load(f)
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{path}: malformed frame annotations: {one_line(e)}") from e
        if not isinstance(frames, list):
            raise SourceError(f"{path}: frame annotations must be a JSON list, got {type(frames).__name__}")
        sequences: dict[str, list[dict]] = {}
        for i, fr in enumerate(frames):
            if not (isinstance(fr, dict) and isinstance(fr.get("sequence_name"), str)
                    and isinstance(fr.get("frame_number"), int)):
                raise SourceError(f"{path}: frame {i} lacks a 'sequence_name' string or 'frame_number' integer")
            sequences.setdefault(fr["sequence_name"], []).append(fr)
        return {name: sorted(fs, key=lambda fr: fr["frame_number"]) for name, fs in sequences.items()}

    def _frames(self, category: str, sequence: str) -> list[dict]:
        if self._cached is None or self._cached[0] != category:
            self._cached = (category, self._read_category(category))
        return self._cached[1][sequence]

    def __len__(self) -> int:
        return len(self.sequences)

    def _choose(self, index: int) -> tuple[int, list[int], str]:
        """(item seed, chosen positions in the sequence, where the sequence is described)."""
        category, sequence = self.sequences[index]
        seed = item_seed_for(self.seed, SOURCE, self.ids[index])
        where = f"{self.root / category / ANNOTATIONS} sequence {sequence}"
        return seed, pick_views(self.frame_counts[index], self.views, seed, where), where

    def record_info(self, index: int) -> tuple[str, int, frozenset[str], bool]:
        """(kind, image views, modalities, prompted) of a record, without reading annotations or images."""
        return "scene", len(self._choose(range(len(self))[index])[1]), frozenset({"image"}), False

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        (category, sequence), source_id = self.sequences[index], self.ids[index]
        frames = self._frames(category, sequence)
        seed, picks, where = self._choose(index)
        chosen = [frames[i] for i in picks]
        views = [self._view(fr, f"{where} frame {fr['frame_number']}") for fr in chosen]
        return scene_record(SOURCE, source_id, seed, reader_record(f"onegen.sources.{SOURCE}", VERSION), views, {},
                            {"category": category, "sequence": sequence, "frame_count": len(frames),
                             "frames": [fr["frame_number"] for fr in chosen], TASK_TOKEN_ONLY: True})

    def _view(self, frame: dict, where: str):
        try:
            image_info, vp = frame["image"], frame["viewpoint"]
            rel, (h, w) = str(image_info["path"]), map(float, image_info["size"])
            R = np.asarray(vp["R"], dtype=np.float64)
            T = np.asarray(vp["T"], dtype=np.float64)
            focal = np.asarray(vp["focal_length"], dtype=np.float64)
            principal = np.asarray(vp["principal_point"], dtype=np.float64)
            fmt = vp.get("intrinsics_format", "ndc_norm_image_bounds")
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{where}: malformed image/viewpoint annotation: {one_line(e)}") from e
        if R.shape != (3, 3) or T.shape != (3,) or focal.shape != (2,) or principal.shape != (2,) \
                or not all(np.all(np.isfinite(a)) for a in (R, T, focal, principal)):
            raise SourceError(f"{where}: viewpoint needs finite R 3x3, T 3, focal_length 2, principal_point 2")
        K = _intrinsics(focal, principal, w, h, fmt, where)
        image = rgb_on_white(load_image(self.root / rel))
        K = scale_intrinsics(K, image.size[0] / w, image.size[1] / h)
        w2c = check_pose(rigid(matmul(_P3D_TO_CV, R.T), matmul(_P3D_TO_CV, T)), where)
        return camera_view(image, K, w2c, self.resolution, meta={"frame": frame["frame_number"], "file": rel})

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _intrinsics(focal: np.ndarray, principal: np.ndarray, w: float, h: float, fmt: str, where: str) -> np.ndarray:
    half = np.array([w / 2, h / 2])
    if fmt == "ndc_norm_image_bounds":
        rescale = half
    elif fmt == "ndc_isotropic":
        rescale = np.full(2, min(w, h) / 2)
    else:
        raise SourceError(f"{where}: unknown intrinsics_format {fmt!r}")
    f, c = focal * rescale, half - principal * rescale
    return np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
