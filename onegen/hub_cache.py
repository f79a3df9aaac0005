"""Model paths that name a Hugging Face repo in the local cache, never the network.

A weights key in params takes a local path, or ``hf:<org>/<name>[@<revision>][/<path in the repo>]``:
the snapshot of that repo already in the local Hugging Face cache (``HF_HUB_CACHE``, or
``HF_HOME``/hub) -- what a data team has after ``hf download`` on a login node
(``--include "vae/*"`` for one part of it). The path inside the repo names one file of it (a
``.pt``, ``.pth`` or ``.onnx`` checkpoint) or a sub-folder (``vae``, ``text_encoder``). A revision
is a branch, tag or commit without ``/`` (a pull request's ``refs/pr/N``: use its commit).

Params validation checks only the form (:func:`check_model_path`); the cache is looked up where
the weights are opened (:func:`resolve_model_path`), on the machine that opens them: a stage
that never loads a model never needs its snapshot, and Ray workers resolve in their own cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

PREFIX = "hf:"
COMMIT = re.compile(r"[0-9a-f]{40}")


class HubSpec(NamedTuple):
    repo: str
    revision: str | None
    inside: str


def parse_hub_spec(value: object) -> HubSpec | None:
    """``hf:...`` -> its parts (``ValueError`` when malformed); anything else -> None."""
    if not isinstance(value, (str, Path)) or not str(value).startswith(PREFIX):
        return None
    org, _, rest = str(value)[len(PREFIX):].partition("/")
    name_rev, _, inside = rest.partition("/")
    name, at, revision = name_rev.partition("@")
    if not org or not name or (at and not revision):
        raise ValueError(f"{value}: expected hf:<org>/<name>[@revision][/path/in/repo]")
    return HubSpec(f"{org}/{name}", revision or None, inside)


def check_model_path(value: object) -> object:
    """Params validation: an ``hf:`` value must be well formed; the value itself is kept."""
    parse_hub_spec(value)
    return value


def resolve_model_path(value: object, key: str = "") -> object:
    """``hf:...`` -> the cached snapshot path; else unchanged. Not cached: ``FileNotFoundError`` naming
    ``key`` (the params key), the repo and the ``hf download`` that fetches it beforehand.

    The lookup reads the cache's documented layout (``models--<org>--<name>/refs/<revision>`` holds a
    commit, ``snapshots/<commit>/`` its files) and nothing else: no hub client, so nothing can reach
    the network.
    """
    spec = parse_hub_spec(value)
    if spec is None:
        return value
    from huggingface_hub import constants

    where = f"{key}: {value}" if key else str(value)
    cache = Path(constants.HF_HUB_CACHE)
    repo_dir = cache / f"models--{spec.repo.replace('/', '--')}"
    revision = spec.revision or "main"
    ref = repo_dir / "refs" / revision
    commit = revision.lower() if COMMIT.fullmatch(revision.lower()) else (ref.read_text().strip() if ref.is_file() else None)
    folder = repo_dir / "snapshots" / commit if commit else None
    fetch = f"hf download {spec.repo}" + (f" --revision {spec.revision}" if spec.revision else "") + \
        (f' --include "{spec.inside}*"' if spec.inside else "")
    if folder is None or not folder.is_dir():
        at = f"@{spec.revision}" if spec.revision else ""
        raise FileNotFoundError(f"{where}: {spec.repo}{at} is not in the local Hugging Face cache {cache} "
                                f"(weights are never downloaded at run time: `{fetch}` beforehand)")
    target = folder / spec.inside if spec.inside else folder
    links = [target] if target.is_symlink() else list(target.rglob("*")) if target.is_dir() else []
    broken = [p for p in links if p.is_symlink() and not p.exists()]  # a snapshot file is a link to its blob
    if broken:
        raise FileNotFoundError(f"{where}: the cached snapshot {folder} is incomplete ({len(broken)} file(s) without "
                                f"their blob, e.g. {broken[0].relative_to(folder)}): `{fetch}` again beforehand")
    if not target.exists():
        raise FileNotFoundError(f"{where}: no {spec.inside} in the cached snapshot {folder}")
    return target
