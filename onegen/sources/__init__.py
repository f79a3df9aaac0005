"""Data sources: readers that yield plain records for the task families.

A source has ``__len__`` and ``__getitem__`` / ``__iter__`` over records in a deterministic
(sorted) order; a record is a dict ``{"source_id": str, "image": PIL.Image.Image (RGB),
"captions": dict[str, str], "meta": dict}`` -- webdataset-style, ``source_id`` usable as a key
part (no dots, no slashes).
"""


class SourceError(ValueError):
    """A source item (or the source itself) cannot be read; the message names the item."""
