"""Annotator quality metrics against exact ground truth: pure numpy, no IO.

* boxes: AP at IoU 0.5 per class, averaged over the classes that have ground truth. Predictions
  are taken by score and each matches the best *unmatched* ground-truth box of its class (COCO's
  rule; VOC instead fails a prediction whose best box is taken), and precision is interpolated at
  every recall step (VOC 2010's all-point AP; COCO samples 101 points). So it equals neither
  pycocotools nor the VOC devkit to the last digit, and ranks annotators the same way;
* masks: for each ground-truth instance, the best IoU any predicted mask reaches (class-agnostic,
  so a mislabelled but well-cut mask still scores), averaged over all instances of all images;
* entities: the share of the visible object nouns that the entity list names (a plural counts).
"""

from __future__ import annotations

import re

import numpy as np

IOU_THRESHOLD = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes as x1, y1, x2, y2 (end-exclusive) -> (N, M) IoU."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(boxes: np.ndarray, labels: list[str], scores: np.ndarray, gt_boxes: np.ndarray,
                     gt_labels: list[str], threshold: float = IOU_THRESHOLD) -> list[tuple[float, str, bool]]:
    """One image: (score, label, true positive) per prediction, highest score first; a ground-truth
    box matches at most one prediction of its own class."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    iou = box_iou(boxes, gt_boxes)
    taken = np.zeros(len(gt_labels), bool)
    out = []
    for i in order:
        same = np.array([g == labels[i] for g in gt_labels], bool) & ~taken
        j = int(np.argmax(np.where(same, iou[i], -1.0))) if same.any() else -1
        hit = j >= 0 and iou[i, j] >= threshold
        if hit:
            taken[j] = True
        out.append((float(scores[i]), labels[i], bool(hit)))
    return out


def average_precision(scores: list[float], hits: list[bool], n_ground_truth: int) -> float:
    """All-point interpolated AP of one class from its pooled predictions; 0 without predictions."""
    if n_ground_truth <= 0:
        raise ValueError("average precision needs at least one ground-truth box")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, np.float64)[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_ground_truth
    # The precision envelope (max precision at any recall >= r), integrated over recall's steps.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def mean_ap(matches: list[tuple[float, str, bool]], gt_counts: dict[str, int]) -> float:
    """AP averaged over the classes with ground truth, from every image's ``match_detections``."""
    aps = []
    for cls, n in sorted(gt_counts.items()):
        if n > 0:
            mine = [(s, h) for s, label, h in matches if label == cls]
            aps.append(average_precision([s for s, _ in mine], [h for _, h in mine], n))
    if not aps:
        raise ValueError("mean AP needs ground truth in at least one class")
    return float(np.mean(aps))


def best_mask_iou(masks: np.ndarray, instance: np.ndarray) -> list[float]:
    """Per ground-truth instance (ids > 0 of ``instance``), the best IoU of any predicted mask."""
    masks = np.asarray(masks, bool).reshape(-1, *instance.shape)
    out = []
    for k in np.unique(instance[instance > 0]):
        gt = instance == k
        inter = (masks & gt).sum(axis=(1, 2))
        union = (masks | gt).sum(axis=(1, 2))
        out.append(float((inter / np.maximum(union, 1)).max()) if len(masks) else 0.0)
    return out


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def noun_recall(nouns: list[str], named: list[str] | str) -> float:
    """Share of ``nouns`` that ``named`` (entity names, or free text) mentions, singular or plural."""
    if not nouns:
        raise ValueError("noun recall needs at least one noun")
    words = _words(named if isinstance(named, str) else " ".join(named))
    return float(np.mean([bool({n, n + "s", n + "es"} & words) for n in nouns]))
