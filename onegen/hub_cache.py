"""Model paths that name a Hugging Face repo in the local cache, never the network.

A weights key in params takes a local path, or ``hf:<org>/<name>[@<revision>][/<path in the repo>]``:
the snapshot of that repo already in the local Hugging Face cache (``HF_HUB_CACHE``, or
``HF_HOME``/hub), looked up with ``local_files_only`` -- what a data team has after
``hf download`` on a login node. The path inside the repo names one file of it (a ``.pt``,
``.pth`` or ``.onnx`` checkpoint) or a sub-folder (``vae``, ``text_encoder``).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "hf:"


def resolve_model_path(value: object) -> object:
    """``hf:...`` -> the cached snapshot path (``ValueError`` naming what is missing); else unchanged."""
    if not isinstance(value, (str, Path)) or not str(value).startswith(PREFIX):
        return value
    spec = str(value)[len(PREFIX):]
    org, _, rest = spec.partition("/")
    name_rev, _, inside = rest.partition("/")
    name, _, revision = name_rev.partition("@")
    if not org or not name:
        raise ValueError(f"{value!r}: expected hf:<org>/<name>[@revision][/path/in/repo]")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = f"{org}/{name}"
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, cache_dir=constants.HF_HUB_CACHE,
                                        local_files_only=True))
    except LocalEntryNotFoundError:
        raise ValueError(f"{value}: {repo}{'@' + revision if revision else ''} is not in the local Hugging Face "
                         f"cache {constants.HF_HUB_CACHE} (weights are never downloaded at run time: "
                         f"`hf download {repo}` beforehand)") from None
    target = folder / inside if inside else folder
    if not target.exists():
        raise ValueError(f"{value}: no {inside} in the cached snapshot {folder}")
    return target
