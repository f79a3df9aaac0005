"""A folder of images with optional caption side files, read as source records.

For ``photos/cats/tom.jpg`` the reader looks beside it for

* ``photos/cats/tom.txt``: the plain-text caption -> ``captions["original"]``;
* ``photos/cats/tom.json``: an object with ``"caption": str`` (-> ``captions["original"]``)
  and/or ``"captions": {name: text}``; any other keys go to ``meta``.

Both side files may be present; their captions are merged, and the same caption name given two
different texts is an error rather than a silent choice. ``meta["file"]`` is the image's path
relative to the root.

``source_id`` is the relative path without its extension, with ``/`` and ``.`` replaced by
``_`` (``cats/tom.v2.jpg`` -> ``cats_tom_v2``): webdataset splits a key at its first dot and
we keep keys one path component. Two images mapping to one id (``a/b.jpg`` and ``a_b.png``) are
refused when the source is opened. Hidden files and folders (name starting with ``.``, e.g.
macOS ``._x.jpg`` resource forks) are skipped.

Images are decoded on access, so opening a large folder only lists it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from onegen.sources import SourceError

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def key_part(text: str) -> str:
    """``text`` made usable inside a webdataset key: path separators and dots become ``_``."""
    return text.replace("\\", "_").replace("/", "_").replace(".", "_")


def one_line(error: BaseException) -> str:
    """An exception as one line of text, for messages that name the item they are about."""
    return " ".join(str(error).split()) or type(error).__name__


def _load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` fully decoded as RGB, or SourceError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads the pixels, so truncation shows up here
    except Exception as e:  # Pillow raises many types on malformed files (OSError, SyntaxError, struct.error...)
        raise SourceError(f"{path}: cannot decode image: {one_line(e)}") from e


def read_side_files(image: Path) -> tuple[dict[str, str], dict]:
    captions: dict[str, str] = {}
    meta: dict = {}

    def add(name: str, text: str, origin: Path) -> None:
        if name in captions and captions[name] != text:
            raise SourceError(f"{origin}: caption {name!r} conflicts with another side file of {image.name}")
        captions[name] = text

    txt = image.with_suffix(".txt")
    if txt.is_file():
        try:
            add("original", txt.read_text(encoding="utf-8").strip(), txt)
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"{txt}: cannot read caption: {one_line(e)}") from e

    side = image.with_suffix(".json")
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{side}: malformed JSON side file: {one_line(e)}") from e
        if not isinstance(data, dict):
            raise SourceError(f"{side}: JSON side file must be an object, got {type(data).__name__}")
        meta = {k: v for k, v in data.items() if k not in ("caption", "captions")}
        if "caption" in data:
            if not isinstance(data["caption"], str):
                raise SourceError(f"{side}: 'caption' must be a string")
            add("original", data["caption"].strip(), side)
        named = data.get("captions", {})
        if not isinstance(named, dict) or not all(isinstance(v, str) for v in named.values()):
            raise SourceError(f"{side}: 'captions' must map names to strings")
        for name, text in named.items():
            add(str(name), text.strip(), side)
    return captions, meta


class ImageFolderSource:
    """Images under ``root`` (sorted by relative path) with their caption side files."""

    def __init__(self, root: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS, recursive: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: image folder does not exist or is not a directory")
        wanted = {e.lower() for e in extensions}
        candidates = self.root.rglob("*") if recursive else self.root.iterdir()
        self.paths = sorted(
            (p for p in candidates
             if p.suffix.lower() in wanted and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(self.root).parts)),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        self.ids = [key_part(p.relative_to(self.root).with_suffix("").as_posix()) for p in self.paths]
        seen: dict[str, Path] = {}
        for source_id, path in zip(self.ids, self.paths):
            if source_id in seen:
                raise SourceError(f"{path}: source id {source_id!r} is also the id of {seen[source_id]}")
            seen[source_id] = path

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        captions, meta = read_side_files(path)
        return {"source_id": self.ids[index], "image": _load_rgb(path), "captions": captions,
                "meta": {**meta, "file": path.relative_to(self.root).as_posix()}}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))
