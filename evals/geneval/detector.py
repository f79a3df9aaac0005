"""Detectors for GenEval: any callable ``detector(images) -> per image {class name: [{"box", "score", "mask"}]}``.

``images`` are HxWx3 uint8 RGB arrays; boxes ``[x1, y1, x2, y2]`` in the image's pixels, masks
HxW bool (or None). A detector returns every instance it finds, whatever its score: ``rules.judge``
applies GenEval's thresholds and its 16-per-class cap itself.

The default is an ``ultralytics`` YOLO segmentation model from a local checkpoint. The original
GenEval runs mmdet's Mask2Former, a set predictor: each object comes out once, and GenEval adds no
NMS of its own. A YOLO model is a dense predictor whose built-in NMS is what makes each object
come out once (turning it off, ``iou=1``, leaves a duplicate for every neighbouring anchor and
breaks every count), so the adapter keeps the model's own NMS at its default IoU (0.7; end-to-end
YOLO models have none) and adds nothing; its confidence floor is low (0.05), below both GenEval
thresholds, so nothing a threshold would keep is lost.

Scores differ in kind: Mask2Former's are class probability times mask confidence, a YOLOv8
score is trained towards its box's IoU, so GenEval's 0.9 counting threshold is stricter with a
YOLO model (small objects rarely get boxes that tight). Numbers comparable with the paper's need
GenEval's detector, which plugs in as any callable of the interface above.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from onegen.annotators.base import require_path, weights_sha256
from onegen.annotators.yolo import import_ultralytics

Detections = dict[str, list[dict]]
Detector = Callable[[list[np.ndarray]], list[Detections]]

OBJECT_NAMES = Path(__file__).with_name("data") / "object_names.txt"  # GenEval's names, in COCO class order


def geneval_names() -> list[str]:
    return OBJECT_NAMES.read_text().splitlines()


class YoloDetector:
    """An ultralytics YOLO segmentation checkpoint as a GenEval detector.

    ``names`` renames the model's classes by index (GenEval spells three COCO classes differently:
    "computer mouse", "tv remote", "computer keyboard"); default: the model's own names.
    ``calibration`` ``(a, b)`` reports ``sigmoid(a * logit(score) + b)`` instead of the raw score
    (the world detector's Platt scaling, see ``world_detector``).
    """

    CONF = 0.05

    def __init__(self, model, names: list[str] | None = None, device: str = "auto", weights: str | None = None,
                 calibration: tuple[float, float] | None = None):
        self.model, self.calibration = model, calibration
        own = [model.names[i] for i in range(len(model.names))]
        if names is not None and len(names) != len(own):
            raise ValueError(f"detector has {len(own)} classes, {len(names)} names given")
        self.names = list(names) if names is not None else own
        self.device = None if device == "auto" else device
        self.weights_sha256 = weights

    @classmethod
    def load(cls, path: Path | None, key: str, names: list[str] | None = None, device: str = "auto",
             calibration: tuple[float, float] | None = None) -> "YoloDetector":
        path = require_path(key, path, "ultralytics YOLO segmentation checkpoint (.pt)")
        YOLO = import_ultralytics().YOLO
        model = YOLO(str(path), task="segment")
        if model.task != "segment":
            raise ValueError(f"{key}: {path} is a YOLO {model.task} model; GenEval needs a segmentation model")
        return cls(model, names, device, weights_sha256(path), calibration)

    @classmethod
    def load_coco(cls, path: Path | None, device: str = "auto") -> "YoloDetector":
        """A COCO-trained checkpoint, its classes renamed to GenEval's object names."""
        return cls.load(path, "evals.geneval.detector_path", geneval_names(), device)

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        # ultralytics reads numpy images as OpenCV BGR
        results = self.model.predict([np.ascontiguousarray(im[..., ::-1]) for im in images], conf=self.CONF,
                                     retina_masks=True, verbose=False, device=self.device)
        out = []
        for im, r in zip(images, results):
            dets: Detections = {}
            if r.boxes is not None and len(r.boxes):
                boxes = r.boxes.xyxy.cpu().numpy().astype(np.float64)
                scores = r.boxes.conf.cpu().numpy().astype(np.float64)
                if self.calibration is not None:
                    a, b = self.calibration
                    logit = np.log(np.clip(scores, 1e-6, 1 - 1e-6) / np.clip(1 - scores, 1e-6, 1))
                    scores = 1 / (1 + np.exp(-(a * logit + b)))
                classes = r.boxes.cls.cpu().numpy().astype(int)
                masks = r.masks.data.cpu().numpy() > 0.5 if r.masks is not None else [None] * len(boxes)
                for box, score, c, m in zip(boxes, scores, classes, masks):
                    if m is not None and m.shape != im.shape[:2]:
                        raise ValueError(f"detector mask {m.shape} differs from the image's {im.shape[:2]}")
                    dets.setdefault(self.names[c], []).append({"box": box.tolist(), "score": float(score), "mask": m})
            out.append(dets)
        return out
