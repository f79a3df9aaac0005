"""Task families: how source records become One-Gen training samples (SPEC "Tasks").

Every source gives records in the shape of the world stage's (``onegen.sources.world_records``):
a ``format.Sample`` of image views (with cameras where known), exact ``depth`` / ``instance``
views where the source has them, captions, and ``meta["kind"]``: ``"scene"`` (views of one
scene), ``"identity"`` (one subject in several images) or ``"photo"`` (one image, no ground
truth). A family enumerates its items up front from cheap record summaries (``RecordInfo``)
and builds item ``i`` from its record and the model annotators' outputs for it, a pure
function of ``i`` -- the contract of the shard writer. Views come out in the SPEC's order: the
image first, its condition second; multiview samples hold K images then their K Plücker-ray maps.

Exact ground truth wins: an image whose record has a depth (instance) view gets it; one without
needs a model annotator, and an item whose annotator is not configured is left out, counted,
and named with the params key that would enable it.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onegen import tasks
from onegen.annotators import degrade, maps
from onegen.format import Provenance, Sample, View
from onegen.plucker import rays_for_cameras
from onegen.seeding import item_seed
from onegen.sources.scenes import TASK_TOKEN_ONLY

if TYPE_CHECKING:
    from onegen.config import AnnotatorsConfig

# bump when the samples built from the same inputs change: it is part of the shard fingerprint. 3: camera maths
# through portable_linalg; 4: ray maps in camera 0's PyTorch3D frame, as the released code's; 5: Canny on the
# colour image (degrade.CANNY_VERSION)
VERSION = 5
SCENE, IDENTITY, PHOTO = "scene", "identity", "photo"
EDGE_OPS = ("canny", "blur", "downscale", "inpaint")  # + "hed" when annotators.edges.hed_path is set


class ItemError(ValueError):
    """An item that cannot become a sample (e.g. no caption); ``stage`` says where it failed."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


@dataclass(frozen=True)
class ModelAnnotator:
    """A model annotator as the build sees it: its params block and the paths it needs."""

    name: str
    block: str  # its block under ``annotators`` in params
    fields: tuple[str, ...]  # path fields that must all be set to switch it on
    what: str
    cls: str  # "module:Class", imported only when switched on

    @property
    def keys(self) -> str:
        return " + ".join(f"annotators.{self.block}.{f}" for f in self.fields)

    def configured(self, annotators: AnnotatorsConfig) -> bool:
        return all(getattr(getattr(annotators, self.block), f) is not None for f in self.fields)

    def load(self, annotators: AnnotatorsConfig):
        module, cls = self.cls.split(":")
        return getattr(importlib.import_module(module), cls).load(getattr(annotators, self.block), annotators.device)


# In the order they run on an item: filters drop images, and the pose model those without people, before any
# later model sees them (the VLM's captions are the build's largest cost); the segmenter asks the detector for the
# captioner's entities.
MODEL_ANNOTATORS = {a.name: a for a in (
    ModelAnnotator("filters", "filters", ("clip_path",), "CLIP NSFW/quality filter",
                   "onegen.annotators.filters:ClipFilter"),
    ModelAnnotator("pose", "pose", ("detector_path", "path"), "YOLO person boxes + ViTPose keypoints",
                   "onegen.annotators.pose:PoseAnnotator"),
    ModelAnnotator("captioner", "captioner", ("path",), "VLM captions and entity lists",
                   "onegen.annotators.captioner:Captioner"),
    ModelAnnotator("segmenter", "segmenter", ("detector_path", "sam_path"), "open-vocabulary boxes + SAM masks",
                   "onegen.annotators.segment:Segmenter"),
    ModelAnnotator("depth", "depth", ("path",), "Depth-Anything-V2", "onegen.annotators.depth:DepthAnnotator"),
    ModelAnnotator("hed", "edges", ("hed_path",), "HED soft edges", "onegen.annotators.edges:HED"),
)}


@dataclass(frozen=True)
class BuildOptions:
    """Params that shape samples (not which items exist)."""

    normalize_rays: bool = False
    canny_low: tuple[int, int] = (50, 150)  # ranges of the seeded Canny thresholds
    canny_high: tuple[int, int] = (150, 250)
    hed: bool = False  # HED joins the edges family's op cycle

    def edge_op(self, index: int) -> str:
        ops = EDGE_OPS + (("hed",) if self.hed else ())
        return ops[index % len(ops)]


@dataclass(frozen=True)
class RecordInfo:
    """What enumeration needs to know about a record, without its pixels."""

    kind: str  # scene, identity, photo
    images: int  # image views
    modalities: frozenset[str]
    # False where the source trains on the task token alone (CO3D, paper §4): no VLM caption is made
    prompted: bool = True

    @classmethod
    def of(cls, record: Sample) -> RecordInfo:
        return cls(record.meta.get("kind", PHOTO), len(record_views(record, "image")),
                   frozenset(v.modality for v in record.views), not record.meta.get(TASK_TOKEN_ONLY, False))


PHOTO_INFO = RecordInfo(PHOTO, 1, frozenset({"image"}))


@dataclass(frozen=True)
class Ref:
    """One item: ``record`` of ``source`` (and, for per-view families, which image ``view``)."""

    source: str
    record: int
    view: int = 0


@dataclass
class Annotation:
    """One model annotator's output for an item's image, and the provenance entries it adds."""

    output: object
    records: list[dict]


def record_views(record: Sample, modality: str) -> list[View]:
    return [v for v in record.views if v.modality == modality]


def filter_keeps(output) -> bool:
    """A filter's verdict on an item: one image's, or (identities) every image's."""
    return all(v.keep for v in output) if isinstance(output, list) else bool(output.keep)


def dropped(annotations: dict[str, Annotation]) -> bool:
    """Whether an item is left out on purpose by what its annotators said so far (``build`` then gives None):
    a filter said no, or the pose model found nobody."""
    if "filters" in annotations and not filter_keeps(annotations["filters"].output):
        return True
    return "pose" in annotations and not len(annotations["pose"].output.keypoints)


def annotators_for(family: str, source: str, info: RecordInfo,
                   edge_op: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) model annotators of an item: without a required one the item cannot
    be built; an optional one adds to it when configured (filters, VLM captions of outside images)."""
    external = source != "world"
    required: tuple[str, ...] = ()
    if family == "depth" and "depth" not in info.modalities:
        required = ("depth",)
    elif family in ("semantic", "bbox") and "instance" not in info.modalities:
        required = ("captioner", "segmenter")  # entities to look for, then boxes and masks
    elif family == "edges" and edge_op == "hed":
        required = ("hed",)
    elif family == "pose":  # no source has ground-truth keypoints
        required = ("pose",)
    optional: tuple[str, ...] = ()
    if external and family in ("text2image", "id") and info.kind in (PHOTO, IDENTITY):
        optional += ("filters",)
    # paper §4: photos, Hypersim frames, identities and one view of each DL3DV scene are captioned by the VLM;
    # which items of a read record it sees is `record_annotators`'s call
    if external and info.prompted and "captioner" not in required:
        optional += ("captioner",)
    return required, optional


# families whose items the VLM sees whether or not the source captions them: text2image keeps both captions
# (paper §4), semantic and box maps need its entities
VLM_ON_EVERY_ITEM = ("text2image", "semantic", "bbox")


def wants_vlm_caption(family: str, record: Sample, view: int) -> bool:
    """Whether the VLM captions an item: always in ``VLM_ON_EVERY_ITEM``, in the other families only where the
    source gives no caption (Cap3D's objects, a DL3DV csv's scenes and captioned photos keep theirs)."""
    if family in VLM_ON_EVERY_ITEM:
        return True
    if family == "multiview":
        return not record.caption
    if family == "id":
        return not all(record.captions.get(f"view{k}") for k in range(len(record_views(record, "image"))))
    return not (record.captions.get(f"view{view}") or record.captions.get("original"))


def record_annotators(family: str, source: str, record: Sample, view: int,
                      edge_op: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``annotators_for`` an item of a read record, the VLM only where its caption would be used."""
    required, optional = annotators_for(family, source, RecordInfo.of(record), edge_op)
    if "captioner" in optional and not wants_vlm_caption(family, record, view):
        optional = tuple(a for a in optional if a != "captioner")
    return required, optional


def _views_of(family: str, info: RecordInfo) -> range:
    if family == "multiview":
        return range(1 if info.kind == SCENE else 0)
    if family == "id":
        return range(1 if info.kind == IDENTITY else 0)
    return range(info.images if info.kind in (SCENE, PHOTO) else 0)


def enumerate_items(family: str, infos: dict[str, Sequence[RecordInfo]],
                    available: AbstractSet[str] = frozenset()) -> tuple[list[Ref], Counter]:
    """All items of a family in a fixed order (world first, then the other sources by name), and
    the items left out for want of a model annotator: ``{(source, kind, annotators): count}``."""
    refs: list[Ref] = []
    left_out: Counter = Counter()
    for source in sorted(infos, key=lambda s: (s != "world", s)):
        for j, info in enumerate(infos[source]):
            views = _views_of(family, info)
            if not views:
                continue
            lacking = tuple(a for a in annotators_for(family, source, info)[0] if a not in available)
            if lacking:
                left_out[(source, info.kind, lacking)] += len(views)
                continue
            refs += [Ref(source, j, k) for k in views]
    return refs, left_out


def _provenance(record: Sample, seed: int, *annotators: dict) -> Provenance:
    return Provenance(record.provenance.source, record.provenance.source_id, seed,
                      [*record.provenance.annotators, *annotators])


def _opencv_record() -> dict:
    import cv2  # here, not at the top: families without edge ops run where OpenCV is absent

    return {"name": "opencv", "version": cv2.__version__, "weights_sha256": None}


def _prompt_caption(own: str, answer, where: str = "") -> str:
    """An image's caption in its prompt: its own, else the VLM's ``answer``. An image with neither because the
    VLM's answer was rejected fails its item; one the VLM was not asked about (none configured) has none."""
    if own:
        return own
    if answer is not None and not answer.ok:
        raise ItemError("caption", f"{where}no caption: the source gives none and the VLM's answer was rejected "
                                   f"({answer.error})")
    return answer.caption if answer is not None else ""


def _view_captions(record: Sample, view: int, vlm: Annotation | None) -> tuple[str, dict[str, str]]:
    """The caption of one image of a record, and every caption kept beside it (a rejected VLM answer never)."""
    if record.provenance.source == "world":  # exact captions, one per camera
        caption = record.captions.get(f"view{view}", record.caption)
        return caption, {"original": caption}
    captions = {k: v for k, v in record.captions.items() if not k.startswith("view")}
    if f"view{view}" in record.captions:
        captions["original"] = record.captions[f"view{view}"]
    answer = vlm.output if vlm is not None else None
    if answer is not None and answer.ok:
        captions["vlm"] = answer.caption
    return _prompt_caption(captions.get("original", ""), answer), captions


def _answered(output) -> bool:
    """Whether a captioner's output (an identity's: a list) holds an answer that was kept."""
    return any(o.ok for o in output) if isinstance(output, list) else output.ok


def build(family: str, ref: Ref, record: Sample, seed: int, index: int,
          annotations: dict[str, Annotation] | None = None, options: BuildOptions = BuildOptions()) -> Sample | None:
    """Item ``index`` of ``family``: ``ref`` into ``record``, with its annotators' outputs.

    ``None`` drops the item on purpose (a filter said no); an ``ItemError`` is a failed item.
    """
    annotations = annotations or {}
    s = item_seed(seed, f"family/{family}", index)
    rng = np.random.default_rng(s)
    meta = {}
    if "filters" in annotations:
        verdict = annotations["filters"].output
        if not filter_keeps(verdict):
            return None
        meta["filters"] = [v.to_json() for v in verdict] if isinstance(verdict, list) else verdict.to_json()
    vlm = annotations.get("captioner")
    used = [r for name, a in annotations.items() if name != "captioner" or _answered(a.output) for r in a.records]
    if family == "multiview":
        return _multiview(record, s, options.normalize_rays, vlm, used)
    if family == "id":
        return _identity(record, s, used, meta, vlm)
    image = record_views(record, "image")[ref.view]
    caption, captions = _view_captions(record, ref.view, vlm)
    if record.meta.get("kind") == PHOTO:
        key = record.key
    else:
        key = f"{record.provenance.source}/{record.provenance.source_id}_v{ref.view}"
    common = dict(key=key, caption=caption, captions=captions)
    img = View("image", image.data, camera=image.camera)
    if family == "text2image":
        if not caption.strip():
            raise ItemError("caption", "no caption: the source gives none and annotators.captioner.path is not set")
        return Sample(task=tasks.TEXT2IMAGE, views=[img], provenance=_provenance(record, s, *used), meta=meta,
                      **common)
    if family == "depth":
        depth = annotations["depth"].output if "depth" in annotations else record_views(record, "depth")[ref.view]
        return Sample(task=tasks.DEPTH2IMAGE, views=[img, depth], provenance=_provenance(record, s, *used), **common)
    if family in ("semantic", "bbox"):
        if "segmenter" in annotations:
            from onegen.annotators.segment import class_map_view

            cond, palette = class_map_view(annotations["segmenter"].output, family, rng)
            return Sample(task=tasks.SEMANTIC2IMAGE if family == "semantic" else tasks.BBOX2IMAGE,
                          views=[img, cond], provenance=_provenance(record, s, *used), palette=palette, **common)
        return _class_map(family, record, ref.view, img, rng, s, used, common)
    if family == "edges":
        return _edges(record, img, rng, s, options.edge_op(index), options, annotations, used, common)
    if family == "pose":
        return _pose(record, img, annotations["pose"], s, used, common)
    raise ValueError(f"unknown family {family!r}")


def _class_map(family: str, record: Sample, view: int, img: View, rng, s: int, used: list[dict],
               common: dict) -> Sample:
    inst = record_views(record, "instance")[view]
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
                  provenance=_provenance(record, s, *used), palette=maps.palette_entries(colors, kind), **common)


def _edges(record: Sample, img: View, rng, s: int, op: str, options: BuildOptions,
           annotations: dict[str, Annotation], used: list[dict], common: dict) -> Sample:
    """``used``: the item's model annotators' records (the VLM's, HED's)."""
    rgb = img.data
    if op in ("canny", "hed"):
        if op == "canny":
            from onegen.annotators.edges import Canny  # thresholds drawn from the item seed, recorded

            canny = Canny(options.canny_low, options.canny_high)
            cond, used = canny([rgb], seeds=[s])[0], [*used, canny.record]
        else:
            cond = annotations["hed"].output
        return Sample(task=tasks.CANNY2IMAGE if op == "canny" else tasks.HED2IMAGE, views=[img, cond],
                      provenance=_provenance(record, s, *used), **common)
    if op == "blur":
        cond, meta = degrade.blur(rgb, rng)
        task = tasks.DEBLUR
    elif op == "downscale":
        cond, meta = degrade.downscale(rgb, rng)
        task = tasks.UPSCALE
    else:
        cond, meta = degrade.inpaint_mask(rgb, rng)
        task = tasks.INPAINT
    return Sample(task=task, views=[img, View(op, cond, role="condition", meta=meta)],
                  provenance=_provenance(record, s, *used, _opencv_record()), **common)


def pose_view(result) -> View:
    """A pose annotator's result as the family stores it: the OpenPose-style skeleton, with each person's COCO-17
    keypoints (x, y in the image's pixels, heatmap score) and box in the view's meta."""
    meta = {"keypoints": np.round(result.keypoints, 2).tolist(), "boxes": np.round(result.boxes, 2).tolist(),
            "format": "coco17", "threshold": result.threshold}
    return View("pose", result.skeleton, role="condition", meta=meta)


def _pose(record: Sample, img: View, pose: Annotation, s: int, used: list[dict], common: dict) -> Sample | None:
    """The image and its skeleton; an image where the detector finds no one is dropped (counted as skipped)."""
    if not len(pose.output.keypoints):
        return None
    return Sample(task=tasks.POSE2IMAGE, views=[img, pose_view(pose.output)],
                  provenance=_provenance(record, s, *used), **common)


def _multiview(record: Sample, s: int, normalize: bool, vlm: Annotation | None, used: list[dict]) -> Sample:
    """A scene's views then their ray maps; the prompt is the scene's own caption, else the VLM's of its first
    view (DL3DV, paper §4)."""
    images = record_views(record, "image")
    rays = rays_for_cameras([v.camera for v in images], normalize=normalize).astype(np.float16)
    views = [View("image", v.data, camera=v.camera) for v in images]
    views += [View("rays", r, role="camera", camera=v.camera, meta={"normalized": normalize})
              for r, v in zip(rays, images)]
    captions = dict(record.captions)
    answer = vlm.output if vlm is not None else None
    if answer is not None and answer.ok:
        captions["vlm"] = answer.caption
    return Sample(key=record.key, task=tasks.MULTIVIEW, caption=_prompt_caption(record.caption, answer),
                  views=views, provenance=_provenance(record, s, *used), captions=captions)


def _identity(record: Sample, s: int, used: list[dict], meta: dict, vlm: Annotation | None) -> Sample:
    """The subject's images; each image's caption (its own, else the VLM's: paper §4 captions them all) joins
    the prompt after its ``[[imgK]]`` token."""
    images = record_views(record, "image")
    captions = dict(record.captions)
    answers = vlm.output if vlm is not None else [None] * len(images)
    captions.update({f"vlm_view{k}": a.caption for k, a in enumerate(answers) if a is not None and a.ok})
    per_image = [_prompt_caption(captions.get(f"view{k}", ""), a, f"image {k}: ") for k, a in enumerate(answers)]
    return Sample(key=record.key, task=tasks.FACEID,
                  caption=tasks.faceid_prompt(per_image).removeprefix(tasks.FACEID).strip(),
                  views=[View("image", v.data, camera=v.camera) for v in images],
                  provenance=_provenance(record, s, *used), captions=captions,
                  meta={**{k: record.meta[k] for k in ("identity", "label") if k in record.meta}, **meta})
