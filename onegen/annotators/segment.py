"""Segmenter (paper §4): entity names -> boxes -> SAM masks -> semantic map and box map.

The captioner lists up to 10 entities per image. An open-vocabulary detector from transformers
(Grounding DINO, or OWLv2) finds boxes for them, and segment-anything turns each box into a
mask. A ``Segmentation`` keeps every instance (label, box, score, mask) and an instance-id map;
``class_map_view`` colours it with the seeded palette, as the families colour the procedural
world's exact instance maps.

Overlaps: the instance map paints larger masks first, so a part lying on a whole (a shirt on a
person) stays visible -- the rule ``maps.box_map`` uses for boxes; equal areas paint the higher
score last. Batches are formed by image size only (``batching.shape_batches``): no image is
padded for another's sake, so a result never depends on its batch-mates beyond float noise.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onegen.annotators import maps
from onegen.annotators.base import (AnnotatorError, annotator_record, require_path, resolve_device,
                                    weights_sha256)
from onegen.annotators.batching import autocast, check_images, normalize, shape_batches, upload
from onegen.config import SegmenterConfig
from onegen.format import View

KEY = "annotators.segmenter"
OWL_QUERY = "a photo of a {}"  # the query form of the OWL-ViT/OWLv2 papers' examples


@dataclass
class Segmentation:
    """The instances found in one image, highest detector score first; instance ``k`` is id ``k + 1``."""

    entities: list[str]  # the names the detector was asked for (cleaned, at most max_entities)
    labels: list[str]  # per instance, one of ``entities``
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels
    scores: np.ndarray  # (N,) float32 detector scores
    mask_scores: np.ndarray  # (N,) float32 SAM's predicted mask IoU
    masks: np.ndarray  # (N, H, W) bool
    instance: np.ndarray  # (H, W) uint16, 0 = background

    @property
    def instance_labels(self) -> dict[int, str]:
        return {k + 1: label for k, label in enumerate(self.labels)}

    @classmethod
    def empty(cls, entities: list[str], height: int, width: int) -> Segmentation:
        return cls(entities, [], np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, height, width), bool), np.zeros((height, width), np.uint16))


def clean_entities(entities: list[str], limit: int) -> list[str]:
    """Lower-case, whitespace-collapsed, de-duplicated names, at most ``limit``.

    Grounding DINO reads '.' and '?' as phrase delimiters, so they are removed from names.
    """
    out: list[str] = []
    for e in entities:
        name = " ".join(re.sub(r"[.?]", " ", str(e)).lower().split())
        if name and name not in out:
            out.append(name)
    return out[:limit]


@dataclass
class Detections:
    """One image's kept boxes on the device, highest score first."""

    boxes: torch.Tensor  # (N, 4) float32 pixels
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) long, index into the image's entities


def _select(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, height: int, width: int,
            cfg: SegmenterConfig) -> Detections:
    """Clip to the image, drop boxes under a pixel wide, per-entity NMS, keep the best max_instances."""
    from torchvision.ops import batched_nms

    boxes = boxes.float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    boxes, scores, labels = boxes[ok], scores[ok].float(), labels[ok]
    if cfg.nms_iou < 1:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)
    else:
        keep = torch.argsort(scores, descending=True, stable=True)
    keep = keep[: cfg.max_instances]
    return Detections(boxes[keep], scores[keep], labels[keep])


def _corners(cxcywh: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = cxcywh.float().unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _load_detector_folder(cfg: SegmenterConfig, model_type: str, model_cls):
    from transformers import AutoProcessor

    path = require_path(f"{KEY}.detector_path", cfg.detector_path, f"{cfg.detector} model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AnnotatorError(f"{KEY}.detector_path: no config.json in {path} (expected a transformers model folder)")
    found = json.loads(config_file.read_text()).get("model_type")
    if found != model_type:
        raise AnnotatorError(f"{KEY}.detector_path: {path} holds a {found!r} model, but "
                             f"{KEY}.detector={cfg.detector!r} expects {model_type!r}")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = model_cls.from_pretrained(path, local_files_only=True)
    return path, processor, model


class GroundingDinoBoxes:
    """Boxes for entity names with Grounding DINO; the text prompt is ``"a. b. c."``."""

    name = "grounding_dino"

    def __init__(self, model, tokenizer, image_processor, cfg: SegmenterConfig, device: torch.device, sha: str):
        self.model, self.tokenizer, self.cfg, self.device = model.to(device).eval(), tokenizer, cfg, device
        size = image_processor.size
        if not (getattr(size, "shortest_edge", None) and getattr(size, "longest_edge", None)):
            raise AnnotatorError(f"{KEY}.detector_path: image processor size {size} lacks shortest_edge/longest_edge")
        self.shortest, self.longest = size.shortest_edge, size.longest_edge
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self.record = annotator_record(self.name, importlib.metadata.version("transformers"), sha)
        # a Rust tokenizer called with padding options mutates itself: one caller at a time
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def load(cls, cfg: SegmenterConfig, device: torch.device) -> GroundingDinoBoxes:
        from transformers import GroundingDinoForObjectDetection

        path, processor, model = _load_detector_folder(cfg, "grounding-dino", GroundingDinoForObjectDetection)
        return cls(model, processor.tokenizer, processor.image_processor, cfg, device, weights_sha256(path))

    def tokens(self, entities: list[list[str]]) -> tuple[dict, torch.Tensor]:
        """Tokenised prompts and, per image, a (tokens x entities) membership matrix from char offsets."""
        texts, spans = [], []
        for names in entities:
            text, image_spans = "", []
            for name in names:
                image_spans.append((len(text), len(text) + len(name)))
                text += name + ". "
            texts.append(text.strip())
            spans.append(image_spans)
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.model.config.max_text_len,
                                 return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        member = torch.zeros((len(texts), offsets.shape[1], max(map(len, spans))), dtype=torch.bool)
        for b, image_spans in enumerate(spans):
            start, end = offsets[b, :, 0], offsets[b, :, 1]
            for e, (s, t) in enumerate(image_spans):
                member[b, :, e] = (start >= s) & (end <= t) & (end > start)
        return {k: v.to(self.device) for k, v in enc.items()}, member.to(self.device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> the processor's aspect-kept resize (shortest/longest edge), normalised."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        size = get_size_with_aspect_ratio(tuple(x.shape[-2:]), self.shortest, self.longest)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return normalize(x, self.mean, self.std)

    def __call__(self, x: torch.Tensor, entities: list[list[str]]) -> list[Detections]:
        """``x``: Bx3xHxW in [0, 1] on the device (one size); ``entities``: non-empty names per image."""
        height, width = x.shape[-2:]
        pixels = self.preprocess(x)
        enc, member = self.tokens(entities)
        pixel_mask = torch.ones((len(x), *pixels.shape[-2:]), dtype=torch.long, device=x.device)
        out = self.model(pixel_values=pixels, pixel_mask=pixel_mask, **enc)
        tokens = member.shape[1]
        probs = out.logits[..., :tokens].float().sigmoid()  # (B, queries, tokens)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=x.device)
        results = []
        for b, names in enumerate(entities):
            per_entity = (probs[b, :, :, None] * member[b, None, :, : len(names)]).amax(dim=1)  # (queries, E)
            best, label = per_entity.max(dim=-1)
            score = probs[b].amax(dim=-1)  # Grounding DINO's box score: its best token, any token
            keep = (score > self.cfg.box_threshold) & (best > self.cfg.text_threshold)
            boxes = _corners(out.pred_boxes[b][keep]) * scale
            results.append(_select(boxes, score[keep], label[keep], height, width, self.cfg))
        return results


class Owlv2Boxes:
    """Boxes for entity names with OWLv2; one text query per entity."""

    name = "owlv2"

    def __init__(self, model, tokenizer, image_processor, cfg: SegmenterConfig, device: torch.device, sha: str):
        self.model, self.tokenizer, self.cfg, self.device = model.to(device).eval(), tokenizer, cfg, device
        self.size = image_processor.size.height
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self.text_len = model.config.text_config.max_position_embeddings
        self.record = annotator_record(self.name, importlib.metadata.version("transformers"), sha)
        self._tokenizer_lock = threading.Lock()  # see GroundingDinoBoxes

    @classmethod
    def load(cls, cfg: SegmenterConfig, device: torch.device) -> Owlv2Boxes:
        from transformers import Owlv2ForObjectDetection

        path, processor, model = _load_detector_folder(cfg, "owlv2", Owlv2ForObjectDetection)
        return cls(model, processor.tokenizer, processor.image_processor, cfg, device, weights_sha256(path))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Pad bottom/right to a square with grey (as the original OWLv2), Gaussian anti-alias, resize."""
        from torchvision.transforms.v2.functional import gaussian_blur

        height, width = x.shape[-2:]
        side = max(height, width)
        x = F.pad(x, (0, side - width, 0, side - height), value=0.5)
        sigma = (side / self.size - 1) / 2
        if sigma > 0:
            k = 2 * math.ceil(3 * sigma) + 1
            x = gaussian_blur(x, [k, k], [sigma, sigma])
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return normalize(x, self.mean, self.std)

    def __call__(self, x: torch.Tensor, entities: list[list[str]]) -> list[Detections]:
        height, width = x.shape[-2:]
        queries = max(map(len, entities))
        ids = torch.zeros((len(entities), queries, self.text_len), dtype=torch.long)
        attention = torch.zeros_like(ids)
        attention[..., 0] = 1  # padded queries (all-zero ids, masked by the model) still attend to one token
        for b, names in enumerate(entities):
            with self._tokenizer_lock:
                enc = self.tokenizer([OWL_QUERY.format(n) for n in names], padding="max_length", truncation=True,
                                     max_length=self.text_len, return_tensors="pt")
            ids[b, : len(names)], attention[b, : len(names)] = enc["input_ids"], enc["attention_mask"]
        out = self.model(input_ids=ids.flatten(0, 1).to(self.device), pixel_values=self.preprocess(x),
                         attention_mask=attention.flatten(0, 1).to(self.device))
        side = float(max(height, width))  # boxes are relative to the padded square
        results = []
        for b, names in enumerate(entities):
            score, label = out.logits[b, :, : len(names)].float().sigmoid().max(dim=-1)
            keep = score > self.cfg.score_threshold
            boxes = _corners(out.pred_boxes[b][keep]) * side
            results.append(_select(boxes, score[keep], label[keep], height, width, self.cfg))
        return results


DETECTORS = {"grounding_dino": GroundingDinoBoxes, "owlv2": Owlv2Boxes}


def sam_architecture(sam_model: str):
    """segment-anything's network for a registry type (vit_b/l/h); build it under torch.device("meta")
    to skip the random initialisation that a checkpoint overwrites anyway."""
    from segment_anything import sam_model_registry

    return sam_model_registry[sam_model]()


class SamMasks:
    """segment-anything masks for box prompts: SamPredictor's steps, batched on the device.

    The image encoder runs once per batch of same-size images; the prompt encoder and mask
    decoder take all boxes of one image in one call (single-mask output, thresholded at 0).
    """

    def __init__(self, sam, device: torch.device, record: dict):
        self.sam, self.device, self.record = sam.to(device).eval(), device, record
        self.side = sam.image_encoder.img_size

    @classmethod
    def load(cls, cfg: SegmenterConfig, device: torch.device,
             build: Callable[[], torch.nn.Module] | None = None) -> SamMasks:
        """``build`` makes the architecture (default: segment-anything's ``cfg.sam_model``); it is
        built on the meta device and takes the checkpoint's tensors, so nothing is initialised twice."""
        path = require_path(f"{KEY}.sam_path", cfg.sam_path, "segment-anything checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file, not a checkpoint, pickled objects
            raise AnnotatorError(f"{KEY}.sam_path: cannot read {path}: {type(e).__name__}: {e}") from e
        with torch.device("meta"):
            sam = (build or (lambda: sam_architecture(cfg.sam_model)))()
        try:
            sam.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split("\n", 1)[-1].split())[:200]
            raise AnnotatorError(
                f"{KEY}.sam_path: {path} does not fit {KEY}.sam_model={cfg.sam_model!r}: {detail}") from e
        left = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
        if left:
            raise AnnotatorError(f"{KEY}.sam_path: {path} leaves {left[:3]} uninitialised")
        name = f"segment_anything_{cfg.sam_model}" if build is None else "segment_anything_custom"
        record = annotator_record(name, importlib.metadata.version("segment-anything"), weights_sha256(path))
        return cls(sam, device, record)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide.get_preprocess_shape(height, width, self.side)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> longest side resized to the encoder's size, normalised, padded square."""
        new_h, new_w = self.input_size(*x.shape[-2:])
        x = F.interpolate(x * 255, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        return F.pad((x - self.sam.pixel_mean) / self.sam.pixel_std, (0, self.side - new_w, 0, self.side - new_h))

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embedding (C x h x w) and its (N, 4) boxes in the encoder's input frame -> low-res
        mask logits (N, 1, h', w') and predicted IoU (N,): all boxes in one decoder call."""
        prompts = self.sam.prompt_encoder
        sparse, dense = prompts(points=None, boxes=boxes, masks=None)
        low, iou = self.sam.mask_decoder(image_embeddings=embedding[None], image_pe=prompts.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
        return low, iou[:, 0]

    def __call__(self, x: torch.Tensor, boxes: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``x``: Bx3xHxW in [0, 1] (one size); ``boxes[b]``: (N, 4) pixels -> (N, H, W) bool masks, (N,) IoU."""
        height, width = x.shape[-2:]
        new_h, new_w = self.input_size(height, width)
        results = [(torch.zeros((0, height, width), dtype=torch.bool, device=x.device),
                    torch.zeros(0, device=x.device)) for _ in boxes]
        todo = [b for b, bx in enumerate(boxes) if len(bx)]
        if not todo:
            return results
        embeddings = self.sam.image_encoder(self.preprocess(x[todo]))
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32, device=x.device)
        for b, emb in zip(todo, embeddings):
            low, iou = self.decode(emb, boxes[b] * scale)
            # as Sam.postprocess_masks: up to the padded input, crop the padding, resize to the image
            logits = F.interpolate(low.float(), (self.side, self.side), mode="bilinear", align_corners=False)
            logits = F.interpolate(logits[..., :new_h, :new_w], (height, width), mode="bilinear", align_corners=False)
            results[b] = (logits[:, 0] > self.sam.mask_threshold, iou.float())
        return results


def paint_instances(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (H, W) instance ids (k + 1 for mask k): larger masks first, smaller on top;
    equal areas paint the higher score last, then the lower index."""
    instance = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    areas = masks.flatten(1).sum(1).cpu().numpy()
    order = np.lexsort((-np.arange(len(areas)), scores.cpu().numpy(), -areas))
    for k in order.tolist():
        instance.masked_fill_(masks[k], k + 1)
    return instance


class Segmenter:
    """Entities -> boxes (open-vocabulary detector) -> masks (segment-anything), batched."""

    def __init__(self, detector, masker: SamMasks, cfg: SegmenterConfig):
        self.detector, self.masker, self.cfg = detector, masker, cfg
        self.device = masker.device

    @classmethod
    def load(cls, cfg: SegmenterConfig, device: str = "auto",
             sam_build: Callable[[], torch.nn.Module] | None = None) -> Segmenter:
        """``sam_build`` overrides the SAM architecture (default: segment-anything's ``cfg.sam_model``)."""
        dev = resolve_device(device)
        return cls(DETECTORS[cfg.detector].load(cfg, dev), SamMasks.load(cfg, dev, sam_build), cfg)

    @property
    def records(self) -> list[dict]:
        """Provenance entries: the detector's and SAM's."""
        return [self.detector.record, self.masker.record]

    def __call__(self, images: list[np.ndarray], entities: list[list[str]]) -> list[Segmentation]:
        check_images(images, "segmenter")
        if len(entities) != len(images):
            raise AnnotatorError(f"segmenter: {len(images)} images but {len(entities)} entity lists")
        names = [clean_entities(e, self.cfg.max_entities) for e in entities]
        out: list[Segmentation | None] = [None] * len(images)
        with torch.inference_mode(), autocast(self.device, self.cfg.amp):
            for batch in shape_batches(images, self.cfg.batch_size):
                todo = [i for i in batch if names[i]]
                for i in batch:
                    if not names[i]:
                        out[i] = Segmentation.empty([], *images[i].shape[:2])
                if not todo:
                    continue
                x = upload([images[i] for i in todo], self.device)
                found = self.detector(x, [names[i] for i in todo])
                masks = self.masker(x, [d.boxes for d in found])
                for i, det, (m, iou) in zip(todo, found, masks):
                    out[i] = Segmentation(
                        entities=names[i], labels=[names[i][k] for k in det.labels.tolist()],
                        boxes=_f32(det.boxes), scores=_f32(det.scores), mask_scores=_f32(iou), masks=m.cpu().numpy(),
                        instance=paint_instances(m, det.scores).cpu().numpy().astype(np.uint16))
        return out  # type: ignore[return-value]


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def pixel_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Float box -> the integer pixel rectangle covering it (x1, y1, x2, y2; end-exclusive)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2)))


def class_map_view(seg: Segmentation, family: str, rng: np.random.Generator) -> tuple[View, list[dict]]:
    """The condition view of a ``semantic`` or ``bbox`` sample and its palette entries, coloured
    with seeded palette colours as ``families._class_map`` does for the world's exact maps.

    The semantic palette names only the classes visible in the instance map; the box palette
    every detected class.
    """
    height, width = seg.instance.shape
    labels = seg.instance_labels
    if family == "semantic":
        visible = [labels[int(k)] for k in np.unique(seg.instance) if k]
        colors = maps.assign_palette(visible, rng)
        cond, kind = maps.semantic_map(seg.instance.astype(np.int64), labels, colors), "mask"
    elif family == "bbox":
        colors = maps.assign_palette(seg.labels, rng)
        boxes = [(pixel_box(b, height, width), label) for b, label in zip(seg.boxes, seg.labels)]
        cond, kind = maps.box_map(boxes, colors, height, width), "boundingbox"
    else:
        raise ValueError(f"class_map_view: family must be 'semantic' or 'bbox', got {family!r}")
    return View(family, cond, role="condition"), maps.palette_entries(colors, kind)
