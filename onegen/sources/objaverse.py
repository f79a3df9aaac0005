"""Objaverse renders (one folder of rendered views with cameras per object) with Cap3D captions.

Every non-hidden folder ``<root>/<uid>/`` is one object; its layout is detected when it is read:

* **LGM** (the paper uses LGM's 80K filtered split): ``rgb/NNN.png`` (RGBA) and ``pose/NNN.txt``
  holding 16 numbers, the 4x4 camera-to-world in Blender's world with OpenCV camera axes (x right,
  y down, looking down +z) -- how LGM's ``core/provider_objaverse.py`` reads them before it
  converts to OpenGL. World-to-camera is ``inv(c2w)``.
* **Zero123** (``objaverse-rendering/scripts/blender_script.py``, its ``views_release``):
  ``NNN.png`` (RGBA) and ``NNN.npy``, the 3x4 world-to-camera ``[R|t]`` of Blender's camera
  (OpenGL axes: y up, looking down -z); OpenCV's is ``diag(1, -1, -1) [R|t]``.

Neither stores intrinsics: both renderers use a 35 mm lens on a 32 mm sensor, a 49.13 degree field
of view (LGM's loader rounds it to 49.1), set by ``render_fov_deg``; Blender's automatic sensor fit
spans the larger image side, and the principal point is the image centre. Views are composited on
white, as LGM trains on them.

Captions: Cap3D's csv (``Cap3D_automated_Objaverse*.csv``: ``uid,caption`` rows, no header) ->
``captions["original"]``; objects without one get no caption. One record per object: ``views``
(seeded per uid) of its renders sorted by name, one in each equal stratum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onegen.format import Sample
from onegen.portable_linalg import affine_inverse, matmul
from onegen.sources import SourceError
from onegen.sources.image_folder import one_line
from onegen.sources.scenes import (
    GL_TO_CV, camera_view, check_pose, item_seed_for, load_image, pick_views, read_captions_csv, reader_record,
    rgb_on_white, rigid, safe_id, scene_record, unique_ids,
)

SOURCE = "objaverse"
VERSION = "2"  # 2: camera maths through portable_linalg


class ObjaverseSource:
    def __init__(self, root: Path, views: tuple[int, int] = (4, 12), resolution: int = 256,
                 captions: Path | None = None, fov_deg: float = 49.1343, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: Objaverse renders root does not exist or is not a directory")
        self.views, self.resolution, self.fov_deg, self.seed = views, resolution, fov_deg, seed
        self.objects = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.ids = unique_ids([safe_id(p.name) for p in self.objects], self.objects, "object")
        self.captions = read_captions_csv(Path(captions), {p.name for p in self.objects}) if captions else {}

    def __len__(self) -> int:
        return len(self.objects)

    def _choose(self, index: int) -> tuple[str, list[Path], int, list[Path]]:
        """(layout, all renders sorted by name, item seed, chosen renders)."""
        folder = self.objects[index]
        layout, renders = _list_renders(folder)
        seed = item_seed_for(self.seed, SOURCE, self.ids[index])
        return layout, renders, seed, [renders[i] for i in pick_views(len(renders), self.views, seed, str(folder))]

    def record_info(self, index: int) -> tuple[str, int, frozenset[str]]:
        """(kind, image views, modalities) of a record, without decoding an image."""
        return "scene", len(self._choose(range(len(self))[index])[3]), frozenset({"image"})

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        folder, source_id = self.objects[index], self.ids[index]
        layout, renders, seed, chosen = self._choose(index)
        views = []
        for png in chosen:
            w2c = _lgm_pose(folder / "pose" / f"{png.stem}.txt") if layout == "lgm" else _zero123_pose(
                png.with_suffix(".npy"))
            image = rgb_on_white(load_image(png))
            views.append(camera_view(image, self._intrinsics(*image.size), w2c, self.resolution,
                                     meta={"frame": png.relative_to(folder).as_posix()}))
        captions = {"original": self.captions[folder.name]} if folder.name in self.captions else {}
        return scene_record(SOURCE, source_id, seed, reader_record(f"onegen.sources.{SOURCE}", VERSION), views,
                            captions, {"uid": folder.name, "layout": layout, "frame_count": len(renders),
                                       "frames": [v.meta["frame"] for v in views]})

    def _intrinsics(self, width: int, height: int) -> np.ndarray:
        f = 0.5 * max(width, height) / np.tan(np.deg2rad(self.fov_deg) / 2)
        return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _list_renders(folder: Path) -> tuple[str, list[Path]]:
    if (folder / "rgb").is_dir():
        layout, renders = "lgm", sorted((folder / "rgb").glob("*.png"))
    else:
        layout, renders = "zero123", sorted(folder.glob("*.png"))
    if not renders:
        raise SourceError(f"{folder}: no rendered views (expected rgb/NNN.png + pose/NNN.txt, or NNN.png + NNN.npy)")
    return layout, renders


def _lgm_pose(path: Path) -> np.ndarray:
    try:
        c2w = np.array(path.read_text(encoding="utf-8").split(), dtype=np.float64)
    except FileNotFoundError:
        raise SourceError(f"{path}: camera pose file is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path}: malformed camera pose: {one_line(e)}") from e
    if c2w.size != 16:
        raise SourceError(f"{path}: camera pose must hold 16 numbers (a 4x4 camera-to-world), got {c2w.size}")
    return affine_inverse(check_pose(c2w.reshape(4, 4), str(path)))


def _zero123_pose(path: Path) -> np.ndarray:
    try:
        RT = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SourceError(f"{path}: camera pose file is missing") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: malformed camera pose: {one_line(e)}") from e
    if RT.shape != (3, 4) or RT.dtype.kind not in "fiu":
        raise SourceError(f"{path}: camera pose must be a 3x4 numeric world-to-camera matrix, got {RT.dtype} "
                          f"{RT.shape}")
    blender = check_pose(np.vstack([RT.astype(np.float64), [0.0, 0.0, 0.0, 1.0]]), str(path))
    return rigid(matmul(GL_TO_CV, blender[:3, :3]), matmul(GL_TO_CV, blender[:3, 3]))
