"""ID folders: one folder per subject, read as identity records (the ``[[faceid]]`` family).

``<root>/<subject>/*.{jpg,jpeg,png,webp}`` (not recursive; hidden files and folders skipped), each
image with optional caption side files as in ``image_folder`` (``tom.txt``, ``tom.json``).
Subjects with fewer than ``min_images`` images are skipped (the paper keeps subjects with at least
four) and listed in ``skipped``.

Records: a subject's images, shuffled (seeded per subject), are cut into consecutive groups of
``id_views[0]..id_views[1]`` images, each size drawn uniformly among those that leave either
nothing or at least ``id_views[0]`` images, so every image is used exactly once (``SourceConfig``
guarantees such a cut exists). A record is one group: ``kind: "identity"``, its images turned
upright (EXIF orientation) and centre-cropped to ``resolution`` (no cameras),
``captions["view<k>"]`` for each image that has an original caption, ``meta`` with the subject as
``identity`` and ``label``. Opening lists the folders; images are decoded when a record is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageOps

from onegen.format import Provenance, Sample, View
from onegen.sources import SourceError
from onegen.sources.image_folder import DEFAULT_EXTENSIONS, read_side_files
from onegen.sources.scenes import (
    item_seed_for, load_image, reader_record, rgb_on_white, safe_id, square_crop, unique_ids,
)
from onegen.sources.world_records import RECORD_TASK

SOURCE = "id_folder"
VERSION = "1"


def split_groups(count: int, id_views: tuple[int, int], rng: np.random.Generator) -> list[int]:
    """Group sizes in ``[lo, hi]`` summing to ``count`` (needs ``count >= lo`` and ``hi >= 2 lo - 1``)."""
    lo, hi = id_views
    sizes, left = [], count
    while left:
        allowed = [s for s in range(lo, min(hi, left) + 1) if left - s == 0 or left - s >= lo]
        sizes.append(int(rng.choice(allowed)))
        left -= sizes[-1]
    return sizes


class IDFolderSource:
    def __init__(self, root: Path, min_images: int = 4, id_views: tuple[int, int] = (2, 5), resolution: int = 256,
                 seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: ID folder root does not exist or is not a directory")
        self.resolution, self.seed = resolution, seed
        self.records: list[tuple[str, list[Path]]] = []  # (subject, images of one group)
        self.skipped: list[str] = []
        ids, seeds = [], []
        for subject in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = sorted(p for p in subject.iterdir() if p.suffix.lower() in DEFAULT_EXTENSIONS
                            and p.is_file() and not p.name.startswith("."))
            if len(images) < min_images:
                self.skipped.append(subject.name)
                continue
            seed_s = item_seed_for(seed, SOURCE, safe_id(subject.name))
            rng = np.random.default_rng(seed_s)
            order = [images[i] for i in rng.permutation(len(images))]
            start = 0
            for k, size in enumerate(split_groups(len(order), id_views, rng)):
                self.records.append((subject.name, order[start:start + size]))
                ids.append(f"{safe_id(subject.name)}_g{k:03d}")
                seeds.append(seed_s)
                start += size
        self.ids = unique_ids(ids, [r[1][0].parent for r in self.records], "group")
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.records)

    def record_info(self, index: int) -> tuple[str, int, frozenset[str]]:
        """(kind, image views, modalities) of a record, without decoding an image."""
        return "identity", len(self.records[index][1]), frozenset({"image"})

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        subject, images = self.records[index]
        views, captions = [], {}
        for k, path in enumerate(images):
            side_captions, side_meta = read_side_files(path)
            if side_captions.get("original"):
                captions[f"view{k}"] = side_captions["original"]
            upright = ImageOps.exif_transpose(load_image(path))  # phone photos store their rotation in EXIF
            rgb, _ = square_crop(rgb_on_white(upright), np.eye(3), self.resolution)
            views.append(View("image", np.asarray(rgb, dtype=np.uint8), role="image",
                              meta={**side_meta, "file": path.relative_to(self.root).as_posix()}))
        source_id = self.ids[index]
        return Sample(key=f"{SOURCE}/{source_id}", task=RECORD_TASK, caption=captions.get("view0", ""), views=views,
                      provenance=Provenance(SOURCE, source_id, self.seeds[index],
                                            [reader_record(f"onegen.sources.{SOURCE}", VERSION)]),
                      captions=captions, meta={"kind": "identity", "identity": subject, "label": subject})

    def __iter__(self):
        return (self[i] for i in range(len(self)))
