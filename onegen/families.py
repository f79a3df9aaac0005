"""Task families: how source records become One-Gen training samples (SPEC "Tasks").

A family enumerates its items up front (cheap references into its sources) and builds item
``i`` with ``build(i)``, a pure function of ``i`` -- the contract of the shard writer. Views
come out in the SPEC's order: the image first, its condition second; multiview samples hold
K images then their K Plücker-ray maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onegen import tasks
from onegen.annotators import degrade, maps
from onegen.format import Provenance, Sample, View
from onegen.plucker import rays_for_cameras
from onegen.seeding import item_seed



def _opencv_record() -> dict:
    import cv2  # here, not at the top: families without edge ops run where OpenCV is absent

    return {"name": "opencv", "version": cv2.__version__, "weights_sha256": None}
EDGE_OPS = ("canny", "blur", "downscale", "inpaint")


@dataclass(frozen=True)
class Ref:
    """One item: ``record`` of ``source`` (and, for per-view families, which camera ``view``)."""

    source: str
    record: int
    view: int = 0


@dataclass
class External:
    """A decoded external image with its captions (from an image folder or HF dataset)."""

    source_id: str
    image: np.ndarray  # HxWx3 uint8 at the family's resolution
    captions: dict[str, str]


def world_views(record: Sample, modality: str) -> list[View]:
    return [v for v in record.views if v.modality == modality]


def enumerate_items(family: str, world: list[Sample], external: dict[str, int]) -> list[Ref]:
    """All items of a family, in a fixed order (world records first, then external sources)."""
    scenes = [i for i, r in enumerate(world) if r.meta.get("kind") == "scene"]
    if family == "multiview":
        return [Ref("world", i) for i in scenes]
    if family == "id":
        return [Ref("world", i) for i, r in enumerate(world) if r.meta.get("kind") == "identity"]
    refs = [Ref("world", i, k) for i in scenes for k in range(len(world_views(world[i], "image")))]
    if family == "text2image":
        refs += [Ref(name, j) for name, n in sorted(external.items()) for j in range(n)]
    return refs


def _provenance(record: Sample, seed: int, *annotators: dict) -> Provenance:
    return Provenance(record.provenance.source, record.provenance.source_id, seed,
                      [*record.provenance.annotators, *annotators])


def build(family: str, ref: Ref, world: list[Sample], get_external, seed: int, index: int,
          normalize_rays: bool = False) -> Sample | None:
    s = item_seed(seed, f"family/{family}", index)
    rng = np.random.default_rng(s)
    if ref.source != "world":
        ext: External = get_external(ref.source, ref.record)
        caption = ext.captions.get("original") or next(iter(ext.captions.values()), "")
        if not caption:
            return None  # text-to-image without text teaches nothing; counted as skipped
        return Sample(key=f"{ref.source}/{ext.source_id}", task=tasks.TEXT2IMAGE, caption=caption,
                      views=[View("image", ext.image)], provenance=Provenance(ref.source, ext.source_id, s),
                      captions=ext.captions)
    record = world[ref.record]
    rid = record.provenance.source_id
    if family == "multiview":
        return _multiview(record, s, normalize_rays)
    if family == "id":
        return _identity(record, s)
    image = world_views(record, "image")[ref.view]
    caption = record.captions.get(f"view{ref.view}", record.caption)
    key = f"world/{rid}_v{ref.view}"
    common = dict(key=key, caption=caption, captions={"original": caption})
    img = View("image", image.data, camera=image.camera)
    if family == "text2image":
        return Sample(task=tasks.TEXT2IMAGE, views=[img], provenance=_provenance(record, s), **common)
    if family == "depth":
        depth = world_views(record, "depth")[ref.view]
        return Sample(task=tasks.DEPTH2IMAGE, views=[img, depth], provenance=_provenance(record, s), **common)
    if family in ("semantic", "bbox"):
        return _class_map(family, record, ref.view, img, rng, s, common)
    if family == "edges":
        return _edges(record, img, rng, s, index, common)
    raise ValueError(f"unknown family {family!r}")


def _class_map(family: str, record: Sample, view: int, img: View, rng, s: int, common: dict) -> Sample:
    inst = world_views(record, "instance")[view]
    labels = {int(k): v for k, v in record.meta["labels"].items()}
    boxes = {int(k): b for k, b in inst.meta["boxes"].items()}
    visible = [labels[k] for k in sorted(boxes) if k in labels]
    colors = maps.assign_palette(visible, rng)
    if family == "semantic":
        cond = maps.semantic_map(inst.data.astype(np.int64), labels, colors)
        kind, task = "mask", tasks.SEMANTIC2IMAGE
    else:
        cond = maps.box_map([(tuple(b), labels[k]) for k, b in boxes.items() if k in labels], colors,
                            *img.data.shape[:2])
        kind, task = "boundingbox", tasks.BBOX2IMAGE
    return Sample(task=task, views=[img, View(family, cond, role="condition")],
                  provenance=_provenance(record, s), palette=maps.palette_entries(colors, kind), **common)


def _edges(record: Sample, img: View, rng, s: int, index: int, common: dict) -> Sample:
    op = EDGE_OPS[index % len(EDGE_OPS)]
    rgb = img.data
    if op == "canny":
        cond, meta = degrade.canny(rgb)
        task = tasks.CANNY2IMAGE
    elif op == "blur":
        cond, meta = degrade.blur(rgb, rng)
        task = tasks.DEBLUR
    elif op == "downscale":
        cond, meta = degrade.downscale(rgb, rng)
        task = tasks.UPSCALE
    else:
        cond, meta = degrade.inpaint_mask(rgb, rng)
        task = tasks.INPAINT
    return Sample(task=task, views=[img, View(op, cond, role="condition", meta=meta)],
                  provenance=_provenance(record, s, _opencv_record()), **common)


def _multiview(record: Sample, s: int, normalize: bool) -> Sample:
    images = world_views(record, "image")
    rays = rays_for_cameras([v.camera for v in images], normalize=normalize).astype(np.float16)
    views = [View("image", v.data, camera=v.camera) for v in images]
    views += [View("rays", r, role="camera", camera=v.camera, meta={"normalized": normalize})
              for r, v in zip(rays, images)]
    return Sample(key=f"world/{record.provenance.source_id}", task=tasks.MULTIVIEW, caption=record.caption,
                  views=views, provenance=_provenance(record, s), captions=dict(record.captions))


def _identity(record: Sample, s: int) -> Sample:
    images = world_views(record, "image")
    captions = [record.captions[f"view{k}"] for k in range(len(images))]
    return Sample(key=f"world/{record.provenance.source_id}", task=tasks.FACEID,
                  caption=tasks.faceid_prompt(captions).removeprefix(tasks.FACEID).strip(),
                  views=[View("image", v.data, camera=v.camera) for v in images],
                  provenance=_provenance(record, s), captions=dict(record.captions),
                  meta={"identity": record.meta["identity"], "label": record.meta["label"]})
