"""The One-Gen sample format: a sequence of views plus text, as WebDataset members.

One sample is one tar member group with key ``<source>/<id>``:

* ``json`` -- task token, captions, per-view role/modality/camera, palette, provenance;
* ``<i>.<modality>.<ext>`` -- one file per view: 8-bit PNG for images and maps, 16-bit PNG
  for depth, ``.npy`` for everything else (Plücker rays, keypoints, latents).

Encoding is deterministic (sorted JSON, fixed PNG settings), so the same sample always gives
the same bytes -- the shard writer relies on that for byte-identical rebuilds.
``docs/format.md`` is the written reference.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.format import descr_to_dtype
from PIL import Image

from onegen.camera import Camera

FORMAT_VERSION = 1
ROLES = ("image", "condition", "camera", "text")
_NAME = re.compile(r"^[a-z0-9_]+$")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+$")


class FormatError(ValueError):
    """A sample or member that does not follow the format; the message names the item."""


@dataclass
class View:
    """One view: an image, a condition map derived from it, or a camera's ray map."""

    modality: str  # image, depth, semantic, bbox, pose, canny, blur, lowres, masked, rays, ...
    data: np.ndarray
    role: str = "image"
    camera: Camera | None = None
    meta: dict = field(default_factory=dict)  # e.g. depth_scale (metres per unit), palette use

    @property
    def ext(self) -> str:
        return "png" if self.data.dtype in (np.uint8, np.uint16) else "npy"



@dataclass
class Provenance:
    source: str
    source_id: str
    seed: int
    annotators: list[dict] = field(default_factory=list)  # {name, version, weights_sha256}


@dataclass
class Sample:
    key: str  # "<source>/<id>", no dots (WebDataset splits the extension at the first dot)
    task: str  # a token of onegen.tasks
    caption: str  # text after the token and palette tags; for faceid the whole [[imgK]] text
    views: list[View]
    provenance: Provenance
    captions: dict[str, str] = field(default_factory=dict)  # original / vlm / per-view captions
    palette: list[dict] = field(default_factory=list)  # {hex, name, label, kind}
    meta: dict = field(default_factory=dict)  # source metadata, e.g. the procedural scene graph

    def prompt(self) -> str:
        """The model's text input: task token, palette tags, caption."""
        from onegen.tasks import PaletteColor, palette_tag, task_prompt

        tags = [palette_tag(PaletteColor(p["hex"], p["name"]), p["label"], p["kind"]) for p in self.palette]
        return task_prompt(self.task, self.caption, tags)


def member_name(index: int, view: View) -> str:
    return f"{index}.{view.modality}.{view.ext}"


def _check_view(key: str, index: int, view: View) -> None:
    where = f"{key}: view {index} ({view.modality})"
    if not _NAME.match(view.modality):
        raise FormatError(f"{where}: modality must match [a-z0-9_]+")
    if view.role not in ROLES:
        raise FormatError(f"{where}: role {view.role!r} not in {ROLES}")
    d = view.data
    if d.dtype == np.uint8 and not (d.ndim == 2 or (d.ndim == 3 and d.shape[2] in (3, 4))):
        raise FormatError(f"{where}: 8-bit view must be HxW or HxWx{{3,4}}, got shape {d.shape}")
    if d.dtype == np.uint16 and d.ndim != 2:
        raise FormatError(f"{where}: 16-bit view must be HxW, got shape {d.shape}")
    if d.dtype.kind == "O":
        raise FormatError(f"{where}: object arrays cannot be stored")


def _encode_png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(a)
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: Sample) -> dict[str, bytes | str]:
    """Sample -> ``{"__key__": key, "json": bytes, "<i>.<modality>.<ext>": bytes, ...}``."""
    if not _KEY.match(sample.key):
        raise FormatError(f"{sample.key}: key must be '<source>/<id>' of [A-Za-z0-9_-] (no dots)")
    members: dict[str, bytes | str] = {"__key__": sample.key}
    views_json = []
    for i, view in enumerate(sample.views):
        _check_view(sample.key, i, view)
        name = member_name(i, view)
        members[name] = _encode_png(view.data) if view.ext == "png" else _encode_npy(view.data)
        views_json.append({
            "member": name,
            "role": view.role,
            "modality": view.modality,
            "shape": list(view.data.shape),
            "dtype": str(view.data.dtype),
            "camera": view.camera.to_json() if view.camera is not None else None,
            "meta": view.meta,
        })
    doc = {
        "format_version": FORMAT_VERSION,
        "task": sample.task,
        "caption": sample.caption,
        "captions": sample.captions,
        "palette": sample.palette,
        "meta": sample.meta,
        "views": views_json,
        "provenance": {
            "source": sample.provenance.source,
            "source_id": sample.provenance.source_id,
            "seed": sample.provenance.seed,
            "annotators": sample.provenance.annotators,
        },
    }
    members["json"] = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return members


def _decode_png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    a = np.asarray(img)
    if img.mode in ("I", "I;16", "I;16B"):
        a = a.astype(np.uint16)
    return a


_NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=128)
def _npy_header(header: bytes, encoding: str) -> tuple[np.dtype, str, tuple[int, ...]]:
    d = ast.literal_eval(header.decode(encoding))
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"malformed .npy header {header[:80]!r}")
    dtype = descr_to_dtype(d["descr"])
    if dtype.hasobject:
        raise ValueError("object arrays cannot be loaded without pickle")
    shape = d["shape"]
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"malformed .npy shape {shape!r}")
    return dtype, "F" if d["fortran_order"] else "C", shape


def _decode_npy(data: bytes) -> np.ndarray:
    """What ``np.load`` gives for one ``.npy`` member, its header parsed once per distinct header: a
    shard's members share a few, and parsing them was three quarters of ``np.load``'s time on a latent."""
    if data[:6] != _NPY_MAGIC:
        raise ValueError("not an .npy file")
    major = data[6]
    if major == 1:
        start, size = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, size = 12, int.from_bytes(data[8:12], "little")
    else:
        raise ValueError(f".npy format version {major} is unknown")
    dtype, order, shape = _npy_header(bytes(data[start:start + size]), "utf8" if major == 3 else "latin1")
    offset, count = start + size, math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{len(data) - offset} data bytes for a {dtype} array of shape {shape}")
    return np.frombuffer(data, dtype, count, offset).reshape(shape, order=order).copy(order="K")


def decode_member(key: str, name: str, data: bytes) -> np.ndarray:
    """Bytes of one view member -> array; a corrupt member raises FormatError naming it."""
    try:
        if name.endswith(".png"):
            return _decode_png(data)
        if name.endswith(".npy"):
            return _decode_npy(data)
    except Exception as e:  # noqa: BLE001 -- any decoder failure is a corrupt member
        raise FormatError(f"{key}: member {name}: cannot decode ({type(e).__name__}: {e})") from e
    raise FormatError(f"{key}: member {name}: unknown extension")


def decode_sample(members: dict) -> Sample:
    """Inverse of :func:`encode_sample`; checks every member the json lists is present and sane."""
    key = members.get("__key__", "<no key>")
    try:
        doc = json.loads(members["json"])
    except KeyError:
        raise FormatError(f"{key}: missing json member") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{key}: member json: invalid JSON ({e})") from e
    views = []
    for i, vj in enumerate(doc.get("views", [])):
        name = vj.get("member", "")
        if name not in members:
            raise FormatError(f"{key}: member {name or f'view {i}'} listed in json but missing")
        data = decode_member(key, name, members[name])
        if str(data.dtype) != vj["dtype"] or list(data.shape) != vj["shape"]:
            raise FormatError(f"{key}: member {name}: got {data.dtype} {list(data.shape)}, json says {vj['dtype']} {vj['shape']}")
        cam = Camera.from_json(vj["camera"]) if vj.get("camera") else None
        views.append(View(modality=vj["modality"], data=data, role=vj["role"], camera=cam, meta=vj.get("meta", {})))
    prov = doc["provenance"]
    return Sample(
        key=key,
        task=doc["task"],
        caption=doc["caption"],
        views=views,
        provenance=Provenance(prov["source"], prov["source_id"], int(prov["seed"]), prov.get("annotators", [])),
        captions=doc.get("captions", {}),
        palette=doc.get("palette", []),
        meta=doc.get("meta", {}),
    )

