"""Human pose (paper §4): YOLO person boxes -> ViTPose COCO-17 keypoints -> OpenPose-style skeleton.

Top-down as ViTPose: each person box is enlarged (``box_padding``, 1.25) to the network's
aspect ratio, cropped with the unbiased affine warp of the transformers ViTPose processor
(``grid_sample`` here, all persons of a batch at once), and the heatmap peaks are refined with
DARK as its post-processing does (Gaussian sigma 0.8 over 11 px, log, one Newton step).
The skeleton is drawn as OpenPose maps for pose-conditioned models are: 18 joints with a neck between
the shoulders, ControlNet's limb order, colours and 4-px half-width at a 512-px short side, black
background; limbs at 60 % intensity under full-colour joints, as controlnet_aux's DWPose-era drawing
(ControlNet v1.1's own draws the joints first and blends each limb 60 % over them: the same lines,
joints a little dimmer where limbs cross them).

Every result is a pure function of its image: detector inputs are letterboxed to one square
size and crops are per person, so batch composition never changes a keypoint.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from onegen.annotators import batching
from onegen.annotators.base import (AnnotatorError, annotator_record, open_weights, require_path, resolve_device,
                                    weights_sha256)
from onegen.annotators.yolo import import_ultralytics

if TYPE_CHECKING:
    from onegen.config import PoseAnnotatorConfig

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle")
# OpenPose-18 body joints as COCO indices; the neck (joint 1) is the midpoint of the shoulders.
OPENPOSE_FROM_COCO = (0, (5, 6), 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# Limbs between OpenPose joints in ControlNet's drawing order; limb i takes colour i.
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
OPENPOSE_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                   (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
                   (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
DARK_SIGMA, DARK_RADIUS = 0.8, 5  # transformers' ViTPose post-processing, kernel_size=11


@dataclass
class PoseResult:
    keypoints: np.ndarray  # (P, 17, 3) float32: x, y in image pixels, heatmap score
    boxes: np.ndarray  # (P, 5) float32: x1, y1, x2, y2, detector score (1 for given boxes)
    skeleton: np.ndarray  # HxWx3 uint8, OpenPose-style on black
    threshold: float = 0.3  # joints scoring below it are not drawn (what redraws the skeleton at another size)


# --- drawing -----------------------------------------------------------------------------------

def openpose_joints(keypoints: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One person's COCO-17 (17, 3) -> OpenPose-18 positions (18, 2) and which are present."""
    xy = np.zeros((18, 2), np.float64)
    ok = np.zeros(18, bool)
    for j, src in enumerate(OPENPOSE_FROM_COCO):
        idx = src if isinstance(src, tuple) else (src,)
        if all(keypoints[i, 2] >= threshold for i in idx):
            xy[j] = keypoints[list(idx), :2].mean(axis=0)
            ok[j] = True
    return xy, ok


def render_skeleton(keypoints: np.ndarray, height: int, width: int, threshold: float = 0.3) -> np.ndarray:
    """(P, 17, 3) keypoints -> HxWx3 uint8 skeleton; limbs' half-width scales as ControlNet's 4 px, drawn on
    images whose short side it resized to 512."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    stick = max(1, round(4 * min(height, width) / 512))
    for person in keypoints:
        xy, ok = openpose_joints(person, threshold)
        for limb, (a, b) in enumerate(OPENPOSE_LIMBS):
            if not (ok[a] and ok[b]):
                continue
            (xa, ya), (xb, yb) = xy[a], xy[b]
            length = math.hypot(xb - xa, yb - ya) / 2
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            poly = cv2.ellipse2Poly((round((xa + xb) / 2), round((ya + yb) / 2)), (round(length), stick),
                                    round(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [round(c * 0.6) for c in OPENPOSE_COLORS[limb]])
        for j in np.flatnonzero(ok):
            cv2.circle(canvas, (round(xy[j, 0]), round(xy[j, 1])), stick, OPENPOSE_COLORS[j], thickness=-1)
    return canvas


# --- geometry ----------------------------------------------------------------------------------

def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """Scale, resized (h, w) and top/left padding that fit an image into a size x size square."""
    r = min(size / height, size / width)
    h, w = max(1, round(height * r)), max(1, round(width * r))
    return r, h, w, (size - h) // 2, (size - w) // 2


def box_to_center_scale(boxes: torch.Tensor, aspect: float, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy boxes -> centres and crop sizes (px) at the network's aspect (w/h), enlarged by ``padding``."""
    center = (boxes[:, :2] + boxes[:, 2:4]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    w, h = torch.where(w > aspect * h, w, h * aspect), torch.where(w > aspect * h, w / aspect, h)
    return center, torch.stack([w, h], dim=1) * padding


def crop_persons(image: torch.Tensor, center: torch.Tensor, size: torch.Tensor,
                 out_hw: tuple[int, int]) -> torch.Tensor:
    """One 3xHxW image -> Px3xhxw crops; output pixel u maps to x = c - s/2 + u s/(w-1) (ViTPose's warp)."""
    (H, W), (h, w) = image.shape[1:], out_hw
    u = torch.arange(w, device=image.device, dtype=torch.float32) / max(w - 1, 1)
    v = torch.arange(h, device=image.device, dtype=torch.float32) / max(h - 1, 1)
    x = center[:, 0, None] - size[:, 0, None] / 2 + u[None] * size[:, 0, None]  # P x w
    y = center[:, 1, None] - size[:, 1, None] / 2 + v[None] * size[:, 1, None]  # P x h
    gx = (2 * x / max(W - 1, 1) - 1)[:, None, :].expand(-1, h, -1)
    gy = (2 * y / max(H - 1, 1) - 1)[:, :, None].expand(-1, -1, w)
    grid = torch.stack([gx, gy], dim=-1)
    src = image[None].expand(len(center), -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _symmetric_index(n: int, r: int, device) -> torch.Tensor:
    i = torch.arange(-r, n + r, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i).clamp(0, n - 1)


def heatmap_peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NxKxhxw heatmaps -> peak (x, y) in heatmap cells, DARK-refined (NxKx2), and peak values (NxK)."""
    n, k, h, w = heatmaps.shape
    scores, idx = heatmaps.flatten(2).max(dim=-1)
    px, py = idx % w, torch.div(idx, w, rounding_mode="floor")
    # Gaussian blur with scipy's 'reflect' borders (edge sample repeated), then the log-likelihood
    t = torch.arange(-DARK_RADIUS, DARK_RADIUS + 1, device=heatmaps.device, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / DARK_SIGMA) ** 2)
    g = g / g.sum()
    m = heatmaps.float().reshape(n * k, 1, h, w)
    m = m.index_select(2, _symmetric_index(h, DARK_RADIUS, m.device))
    m = F.conv2d(m, g.view(1, 1, -1, 1))
    m = m.index_select(3, _symmetric_index(w, DARK_RADIUS, m.device))
    m = F.conv2d(m, g.view(1, 1, 1, -1))
    logm = F.pad(m.clamp(0.001, 50).log(), (1, 1, 1, 1), mode="replicate").reshape(n, k, h + 2, w + 2)

    def at(dx: int, dy: int) -> torch.Tensor:
        flat = (py + 1 + dy) * (w + 2) + (px + 1 + dx)
        return logm.flatten(2).gather(2, flat[..., None])[..., 0]

    c = at(0, 0)
    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    hxx, hyy = at(1, 0) - 2 * c + at(-1, 0), at(0, 1) - 2 * c + at(0, -1)
    hxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * c - at(-1, 0) - at(0, -1) + at(-1, -1))
    eps = torch.finfo(torch.float32).eps
    hxx, hyy = hxx + eps, hyy + eps
    det = hxx * hyy - hxy * hxy
    # a Newton step beyond one cell means the local quadratic fit failed: keep it inside the cell
    dx = ((hyy * gx - hxy * gy) / det).nan_to_num(0.0).clamp(-1, 1)
    dy = ((hxx * gy - hxy * gx) / det).nan_to_num(0.0).clamp(-1, 1)
    return torch.stack([px - dx, py - dy], dim=-1), scores


# --- the annotator -----------------------------------------------------------------------------

class PoseAnnotator:
    """``annotator(images[, boxes]) -> [PoseResult]``; with ``boxes`` the detector is skipped."""

    name = "yolo-vitpose"
    version = "2"  # 2: limb width from the short side

    def __init__(self, detector: torch.nn.Module, pose_model, weights_sha256: str, device: torch.device, *,
                 detector_size: int = 640, person_class: int = 0, box_threshold: float = 0.25,
                 nms_iou: float = 0.7, max_persons: int = 20, box_padding: float = 1.25,
                 keypoint_threshold: float = 0.3, batch_size: int = 16, amp: batching.Amp = "fp16",
                 mean=batching.IMAGENET_MEAN, std=batching.IMAGENET_STD):
        self.detector = detector.eval().to(device)
        self.pose_model = pose_model.eval().to(device)
        self.device = device
        self.detector_size, self.person_class = detector_size, person_class
        self.box_threshold, self.nms_iou, self.max_persons = box_threshold, nms_iou, max_persons
        self.box_padding, self.keypoint_threshold = box_padding, keypoint_threshold
        self.batch_size, self.amp, self.mean, self.std = batch_size, amp, mean, std
        if pose_model.config.num_labels != len(COCO_KEYPOINTS):
            raise AnnotatorError(f"{self.name}: the ViTPose model predicts {pose_model.config.num_labels} "
                                 f"keypoints; COCO-17 is expected")
        bb = pose_model.config.backbone_config
        self.crop_hw = tuple(bb.image_size)
        self.moe = getattr(bb, "num_experts", 1) > 1
        self.record = annotator_record(self.name, self.version, weights_sha256)

    @classmethod
    def load(cls, cfg: PoseAnnotatorConfig, device: str = "auto") -> PoseAnnotator:
        from transformers import VitPoseForPoseEstimation

        det_path = require_path("annotators.pose.detector_path", cfg.detector_path, "ultralytics YOLO .pt")
        pose_path = require_path("annotators.pose.path", cfg.path, "ViTPose folder")
        YOLO = import_ultralytics().YOLO

        # ultralytics .pt files are pickled modules, loaded by ultralytics itself: trust the path
        detector = open_weights("annotators.pose.detector_path", det_path,
                                lambda: YOLO(str(det_path)).model.fuse(verbose=False))
        pose_model = open_weights("annotators.pose.path", pose_path,
                                  lambda: VitPoseForPoseEstimation.from_pretrained(pose_path, local_files_only=True))
        mean, std = batching.processor_stats(pose_path)
        both = hashlib.sha256((weights_sha256(det_path) + weights_sha256(pose_path)).encode()).hexdigest()
        return cls(detector, pose_model, both, resolve_device(device), detector_size=cfg.detector_size,
                   person_class=cfg.person_class, box_threshold=cfg.box_threshold, nms_iou=cfg.nms_iou,
                   max_persons=cfg.max_persons, box_padding=cfg.box_padding,
                   keypoint_threshold=cfg.keypoint_threshold, batch_size=cfg.batch_size, amp=cfg.amp,
                   mean=mean, std=std)

    def letterbox(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> the detector's square input, grey (114) padding as ultralytics."""
        s = self.detector_size
        _, h, w, top, left = letterbox_geometry(x.shape[2], x.shape[3], s)
        if (h, w) != tuple(x.shape[2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        out = x.new_full((x.shape[0], 3, s, s), 114 / 255)
        out[:, :, top : top + h, left : left + w] = x
        return out

    def _detect(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bx3xHxW in [0, 1] -> per image a Px5 tensor of person boxes (xyxy, score) in its pixels."""
        from ultralytics.utils.nms import non_max_suppression

        r, _, _, top, left = letterbox_geometry(x.shape[2], x.shape[3], self.detector_size)
        with batching.autocast(self.device, self.amp):
            pred = self.detector(self.letterbox(x))
        pred = pred[0] if isinstance(pred, (list, tuple)) else pred
        dets = non_max_suppression(pred.float(), self.box_threshold, self.nms_iou, classes=[self.person_class],
                                   max_det=self.max_persons, nc=len(self.detector.names),
                                   max_time_img=math.inf)  # its default time limit would drop boxes under load
        out = []
        for d in dets:
            boxes = (d[:, :4] - d.new_tensor([left, top, left, top])) / r
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, x.shape[3])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, x.shape[2])
            out.append(torch.cat([boxes, d[:, 4:5]], dim=1))
        return out

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Person boxes only: per image (P, 5) float32 xyxy + score, most confident first."""
        batching.check_images(images, self.name)
        out: list[np.ndarray | None] = [None] * len(images)
        with torch.inference_mode():
            for idx in batching.shape_batches(images, self.batch_size):
                for i, d in zip(idx, self._detect(batching.upload([images[i] for i in idx], self.device))):
                    out[i] = d.cpu().numpy().astype(np.float32)
        return out

    def _keypoints(self, crops: torch.Tensor, center: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Px3xhxw crops in [0, 1] -> Px17x3 keypoints in image pixels."""
        chunks = []
        for s in range(0, len(crops), 4 * self.batch_size):
            x = batching.normalize(crops[s : s + 4 * self.batch_size], self.mean, self.std)
            kwargs = {"dataset_index": torch.zeros(len(x), dtype=torch.long, device=x.device)} if self.moe else {}
            with batching.autocast(self.device, self.amp):
                chunks.append(self.pose_model(pixel_values=x, **kwargs).heatmaps.float())
        heat = torch.cat(chunks)
        xy, scores = heatmap_peaks(heat)
        hh, hw = heat.shape[2:]
        cell = torch.stack([size[:, 0] / (hw - 1), size[:, 1] / (hh - 1)], dim=1)[:, None]
        xy = xy * cell + (center - size / 2)[:, None]
        return torch.cat([xy, scores[..., None]], dim=-1)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray], boxes: list[np.ndarray] | None = None) -> list[PoseResult]:
        batching.check_images(images, self.name)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{self.name}: {len(boxes)} box lists for {len(images)} images")
        aspect = self.crop_hw[1] / self.crop_hw[0]
        found: dict[int, torch.Tensor] = {}
        first: dict[int, int] = {}  # image -> index of its first person among the crops
        crops, centers, sizes, n = [], [], [], 0
        for idx in batching.shape_batches(images, self.batch_size):
            x = batching.upload([images[i] for i in idx], self.device)
            dets = self._detect(x) if boxes is None else [_given_boxes(boxes[i], i, x.device) for i in idx]
            for k, i in enumerate(idx):
                found[i], first[i] = dets[k], n
                if len(dets[k]):
                    c, s = box_to_center_scale(dets[k], aspect, self.box_padding)
                    crops.append(crop_persons(x[k], c, s, self.crop_hw))
                    centers.append(c)
                    sizes.append(s)
                    n += len(dets[k])
        kps = (self._keypoints(torch.cat(crops), torch.cat(centers), torch.cat(sizes)).cpu().numpy()
               if crops else np.zeros((0, 17, 3), np.float32))
        results = []
        for i, img in enumerate(images):
            b = found[i].cpu().numpy().astype(np.float32)
            k = kps[first[i] : first[i] + len(b)].astype(np.float32)
            skeleton = render_skeleton(k, img.shape[0], img.shape[1], self.keypoint_threshold)
            results.append(PoseResult(keypoints=k, boxes=b, skeleton=skeleton, threshold=self.keypoint_threshold))
        return results


def _given_boxes(b, i: int, device: torch.device) -> torch.Tensor:
    """Caller's boxes for image ``i``: (P, 4) xyxy or (P, 5) xyxy + score (score 1 when absent)."""
    b = np.asarray(b, np.float32)
    if b.size == 0:
        return torch.zeros((0, 5), device=device)
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise ValueError(f"boxes for image {i}: expected (P, 4) or (P, 5) xyxy, got shape {list(b.shape)}")
    if b.shape[1] == 4:
        b = np.concatenate([b, np.ones((len(b), 1), np.float32)], axis=1)
    return torch.from_numpy(b).to(device)
