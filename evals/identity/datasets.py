"""Unsplash-50 (OneDiffusion Table 3, from LCM-Lookahead): reference faces and prompts on local disk.

Layout (one folder per subject; the folder name is the subject id)::

    <root>/
      prompts.txt                  shared prompts, one per line (optional if every subject has its own)
      <subject>/
        ref.jpg | ref.jpeg | ref.png | ref.webp    the reference face (exactly one)
        prompts.txt                this subject's prompts, replacing the shared ones (optional)
        caption.txt                a caption of the reference (optional; default DEFAULT_CAPTION)

Blank lines and lines starting with ``#`` in prompt files are ignored. Items are (subject,
prompt) pairs in sorted subject order, ``id = "<subject>_<k:03d>"``; each is a plain dict::

    {"id", "subject", "reference": [HxWx3 uint8], "reference_captions": [str], "prompt": str,
     "size": (H, W), "hash_fields": [...]}

A missing or unreadable file raises :class:`IdentityDataError` naming it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REFERENCE_NAMES = ("ref.jpg", "ref.jpeg", "ref.png", "ref.webp")
DEFAULT_CAPTION = "a photo of a person"


class IdentityDataError(ValueError):
    """A benchmark file that is missing or unreadable; the message names it."""


def read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IdentityDataError(f"{path}: unreadable ({e})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# In every item's hash_fields beside the file's bytes, which do not change when the reading of them does.
# 2: EXIF orientation applied.
READER_VERSION = "2"


def read_rgb(path: Path) -> tuple[np.ndarray, bytes]:
    """An image file as HxWx3 uint8 RGB, upright as its EXIF orientation says (photos from phones and
    Unsplash store their rotation there, as insightface's cv2.imread applies it), with its bytes (for hashing)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB")), data
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise IdentityDataError(f"{path}: unreadable image ({' '.join(str(e).split())})") from None


class Unsplash50:
    def __init__(self, root: Path | str, resolution: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise IdentityDataError(f"{self.root}: Unsplash-50 folder not found")
        self.resolution = resolution
        shared = self.root / "prompts.txt"
        self.shared_prompts = read_prompts(shared) if shared.is_file() else []
        self.subjects = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.subjects:
            raise IdentityDataError(f"{self.root}: no subject folders")
        self.prompts = {s.name: self._prompts(s) for s in self.subjects}

    def _prompts(self, subject: Path) -> list[str]:
        own = subject / "prompts.txt"
        prompts = read_prompts(own) if own.is_file() else self.shared_prompts
        if not prompts:
            raise IdentityDataError(f"{subject}: no prompts (neither {own} nor {self.root / 'prompts.txt'})")
        return prompts

    def __len__(self) -> int:
        return sum(len(p) for p in self.prompts.values())

    def _reference(self, subject: Path) -> tuple[np.ndarray, str]:
        found = [subject / n for n in REFERENCE_NAMES if (subject / n).is_file()]
        if len(found) != 1:
            raise IdentityDataError(f"{subject}: expected exactly one of {', '.join(REFERENCE_NAMES)}, "
                                    f"found {len(found)}")
        rgb, data = read_rgb(found[0])
        return rgb, hashlib.sha256(data).hexdigest()[:16]

    def __iter__(self) -> Iterator[dict]:
        for subject in self.subjects:
            rgb, digest = self._reference(subject)
            cap = subject / "caption.txt"
            caption = cap.read_text(encoding="utf-8").strip() if cap.is_file() else DEFAULT_CAPTION
            for k, prompt in enumerate(self.prompts[subject.name]):
                yield {"id": f"{subject.name}_{k:03d}", "subject": subject.name, "reference": [rgb],
                       "reference_captions": [caption or DEFAULT_CAPTION], "prompt": prompt,
                       "size": (self.resolution, self.resolution),
                       "hash_fields": [subject.name, digest, caption, prompt, self.resolution, READER_VERSION]}
