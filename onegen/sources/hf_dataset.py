"""A Hugging Face ``datasets`` dataset saved with ``save_to_disk``, read as source records.

Local only: ``datasets.load_from_disk`` reads the Arrow files, nothing is downloaded. The path
may hold a ``Dataset`` or a ``DatasetDict`` (then ``split`` picks one). Rows keep the dataset's
order.

* ``image``: the ``image_column`` value (a ``datasets.Image`` feature decodes to PIL), as RGB.
* ``captions``: of ``caption_columns``, those the dataset has; in that order, the first with a
  non-empty value is ``captions["original"]``, any further ones are kept under their column
  names.
* ``source_id``: the ``id_column`` value made key-safe (see ``image_folder.key_part``; ids must
  be unique), or the row index zero-padded to 8 digits.
* ``meta``: ``{"row": index}`` plus ``"split"`` when a split was chosen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import datasets
from PIL import Image

from onegen.sources import SourceError
from onegen.sources.image_folder import key_part, one_line


class HFDatasetSource:
    def __init__(self, path: Path, split: str | None = None, image_column: str = "image",
                 caption_columns: tuple[str, ...] = ("caption", "text"), id_column: str | None = None):
        self.path = Path(path)
        self.split = split
        if not self.path.exists():
            raise SourceError(f"{self.path}: dataset directory does not exist")
        try:
            loaded = datasets.load_from_disk(str(self.path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise SourceError(f"{self.path}: not a dataset saved with save_to_disk: {one_line(e)}") from e
        self.dataset = self._pick_split(loaded, split)

        available = list(self.dataset.column_names)
        for role, column in (("image_column", image_column), ("id_column", id_column)):
            if column is not None and column not in available:
                raise SourceError(f"{self.path}: {role} {column!r} is not a column; available: {available}")
        self.image_column = image_column
        self.caption_columns = [c for c in caption_columns if c in available]
        self.ids = self._make_ids(id_column)

    def _pick_split(self, loaded, split: str | None) -> datasets.Dataset:
        if isinstance(loaded, datasets.DatasetDict):
            splits = sorted(loaded)
            if split is None or split not in loaded:
                what = "a split is required" if split is None else f"no split {split!r}"
                raise SourceError(f"{self.path}: dataset has several splits, {what}; available: {splits}")
            return loaded[split]
        if split is not None:
            raise SourceError(f"{self.path}: split {split!r} given but the dataset has no splits")
        return loaded

    def _make_ids(self, id_column: str | None) -> list[str]:
        if id_column is None:
            return [f"{i:08d}" for i in range(len(self.dataset))]
        ids = [key_part(str(v)) for v in self.dataset[id_column]]
        seen: dict[str, int] = {}
        for row, source_id in enumerate(ids):
            if source_id in seen:
                raise SourceError(f"{self.path}: rows {seen[source_id]} and {row} share the id {source_id!r} "
                                  f"(column {id_column!r})")
            seen[source_id] = row
        return ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = range(len(self))[index]  # normalises negative indices, IndexError past the end
        where = f"{self.path} row {index}"
        try:
            row = self.dataset[index]
            image = row[self.image_column]
            if isinstance(image, Image.Image):
                image = image.convert("RGB")  # Image features open lazily: this is where pixels decode
        except Exception as e:  # Pillow raises many types on malformed image bytes
            raise SourceError(f"{where}: cannot decode image: {one_line(e)}") from e
        if not isinstance(image, Image.Image):
            raise SourceError(f"{where}: column {self.image_column!r} holds {type(image).__name__}, not an image")
        texts = [(c, row[c]) for c in self.caption_columns if row[c] not in (None, "")]
        captions = {("original" if k == 0 else c): str(t).strip() for k, (c, t) in enumerate(texts)}
        meta = {"row": index} | ({"split": self.split} if self.split is not None else {})
        return {"source_id": self.ids[index], "image": image, "captions": captions, "meta": meta}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))
