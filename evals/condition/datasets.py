"""Real images with captions for the UniCon condition benchmark (UniCon: 6K random OpenImages).

Layout -- the Hugging Face ``imagefolder`` convention::

    <root>/
      metadata.jsonl      one JSON object per line: {"file_name": "<relative path>", "text": "<caption>"}
      <the images>        any PIL-readable format, in any sub-folders metadata.jsonl names

Items follow metadata.jsonl's order; ``id`` is ``file_name`` without its extension, ``/``
replaced by ``__``. Images are centre-cropped to a square and resized (bicubic) to the
benchmark resolution, as the generators are asked for square images. A missing, unsafe or
unreadable file, or a malformed line, raises :class:`ConditionDataError` naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from evals.identity.datasets import READER_VERSION, IdentityDataError, read_rgb


class ConditionDataError(ValueError):
    """A benchmark file that is missing, unsafe or unreadable; the message names it."""


def square(image: np.ndarray, side: int) -> np.ndarray:
    """Centre crop to a square, then resize to ``side`` x ``side``."""
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[y : y + s, x : x + s])
    return np.asarray(crop if s == side else crop.resize((side, side), Image.BICUBIC))


class CaptionedImages:
    def __init__(self, root: Path | str, resolution: int):
        self.root = Path(root)
        meta = self.root / "metadata.jsonl"
        if not meta.is_file():
            raise ConditionDataError(f"{meta}: not found (expected one {{\"file_name\", \"text\"}} object per line)")
        self.resolution = resolution
        self.entries: list[tuple[str, str]] = []
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConditionDataError(f"{meta}:{n}: expected {{\"file_name\": str, \"text\": str}} ({e})") from None
            if not isinstance(name, str) or not isinstance(text, str):
                raise ConditionDataError(f"{meta}:{n}: file_name and text must be strings")
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                raise ConditionDataError(f"{meta}:{n}: unsafe file_name {name!r}")
            self.entries.append((p.as_posix(), text))
        if not self.entries:
            raise ConditionDataError(f"{meta}: no entries")
        ids = [self._id(name) for name, _ in self.entries]
        if len(set(ids)) != len(ids):
            raise ConditionDataError(f"{meta}: two file names give the same item id")

    @staticmethod
    def _id(name: str) -> str:
        return str(PurePosixPath(name).with_suffix("")).replace("/", "__")

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[dict]:
        for name, text in self.entries:
            try:
                rgb, data = read_rgb(self.root / name)
            except IdentityDataError as e:
                raise ConditionDataError(str(e)) from None
            yield {"id": self._id(name), "image": square(rgb, self.resolution), "prompt": text,
                   "hash_fields": [name, hashlib.sha256(data).hexdigest()[:16], text, self.resolution, READER_VERSION]}
