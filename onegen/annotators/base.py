"""What every model annotator shares: where its weights come from and how it is recorded.

An annotator is a class with ``load(cfg, device)`` (a classmethod building it from its params
block) and a batched ``__call__(images) -> outputs``. It never reaches the hub: weights come
from the local path its params key names (or an ``hf:`` repo already in the local Hugging Face
cache), and a missing one fails with that key and the path.
``record`` (name, version, weights hash) goes into the provenance of every sample it touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch

from onegen.hub_cache import resolve_model_path

T = TypeVar("T")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".npz")


class AnnotatorError(RuntimeError):
    """An annotator cannot run: missing weights, wrong layout; the message names the params key."""


def require_path(key: str, path: Path | None, kind: str = "checkpoint") -> Path:
    """``path`` if it exists, else a one-line error naming the params key that should point at it."""
    if path is None:
        raise AnnotatorError(f"{key} is not set: point it at a local {kind} (weights are never downloaded)")
    try:
        path = Path(resolve_model_path(path, key))
    except (OSError, ValueError) as e:
        raise AnnotatorError(str(e)) from None
    if not path.exists():
        raise AnnotatorError(f"{key}: {kind} not found at {path}")
    return path


def open_weights(key: str, path: Path, load: Callable[[], T]) -> T:
    """``load()``, with a failure to read the weights at ``path`` (a folder missing its safetensors,
    a truncated file) as one line naming the params ``key``, not the library's traceback."""
    try:
        return load()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AnnotatorError(f"{key}: cannot load {path}: {first}") from None


def _hash_files(files: tuple[Path, ...]) -> str:
    # Keyed by each file's stat too: a checkpoint rewritten in place (a retrained model under the same
    # path) must not get the hash of the bytes it replaced.
    return _hash_stated_files(tuple((f, *_stat_key(f.stat())) for f in files))


def _stat_key(st) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@lru_cache(maxsize=64)
def _hash_stated_files(stated: tuple[tuple, ...]) -> str:
    h = hashlib.sha256()
    for f, *_ in stated:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 over a weight file, or over a folder's weight files in name order."""
    path = Path(path)
    files = (path,) if path.is_file() else tuple(sorted(
        f for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)))
    if not files:
        raise AnnotatorError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {path}")
    return _hash_files(files)


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (for models built in memory, e.g. tests' seeded tiny ones)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def annotator_record(name: str, version: str, weights_sha256: str | None) -> dict:
    """The provenance entry of one annotator (the shape ``format.Provenance.annotators`` holds)."""
    return {"name": name, "version": version, "weights_sha256": weights_sha256}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
