"""The world edition's detector: YOLOv8n-seg trained on procedural renders (``onegen world-detector``).

Random scenes seen from random cameras are exported in YOLO's segmentation format -- one
``<class> x1 y1 x2 y2 ...`` line per visible instance, its outline polygon from the exact instance
mask, normalised to 0..1 -- with the world's four shapes as classes. The training and held-out
sets come from separate seed streams. Training is a real, seeded CPU run (``amp=False``,
offline) from the architecture's yaml, no pretrained weights; the held-out mAP50 of the final
weights is written beside them (``metrics.json``) and reported by ``world_geneval``.

Score calibration: GenEval's thresholds (0.3, and 0.9 for counting) are probabilities -- its
Mask2Former scores an instance by class probability times mask confidence. A YOLOv8 score is
trained towards the IoU of its box, and on objects ten to twenty pixels wide a box rarely reaches
IoU 0.9, so raw scores would fail every counting prompt however right the detections. The stage
therefore fits a Platt scaling on the held-out renders, ``p = sigmoid(a * logit(score) + b)``, the
probability that a detection is a true object of its class (box IoU >= 0.5, greedy matching), and
the world edition's detector reports ``p``. It is monotone (``a > 0``), so rankings and mAP are
unchanged.

Counting threshold: GenEval keeps a counting prompt's detections only above 0.9 (0.3 for every
other tag), a level set for its Mask2Former. Even calibrated, this small detector rarely says 0.9
of each of three small objects: at 0.9 the oracle's exact renders of counting prompts pass 5% of
the time (41% at 0.3; the default profile's detector), so the tag would score every model near 0
and say nothing. The stage therefore picks, within GenEval's own range (0.3 to 0.9), the threshold
under which the most held-out oracle renders of counting prompts pass, and ``world_geneval``
counts at it; ``metrics.json`` reports it and the pass rate at each candidate.

Negatives: a detector that has only seen clean renders finds confident shapes in noise, so a
generator that paints garbage would pass GenEval's presence tags. Training therefore adds
background images with empty labels (``negatives_fraction`` of the renders: smooth colour noise,
pixel noise and renders cut into shuffled patches), the calibration counts detections on held-out
negatives as false, and ``metrics.json`` reports ``negative_fp_rate``: the share of held-out
negatives on which any detection clears GenEval's 0.3.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from evals.geneval.detector import YoloDetector
from evals.geneval.rules import COUNTING_THRESHOLD, THRESHOLD, judge
from evals.geneval.world_prompts import make_prompt, oracle_scene
from onegen.annotators.yolo import import_ultralytics
from onegen.config import Params, WorldGenEvalConfig
from onegen.seeding import item_rng, item_seed
from onegen.shards.writer import atomic_write_bytes, write_json
from onegen.sources import procedural as world

ARCH = "yolov8n-seg.yaml"
CLASSES = world.SHAPES
# Objects per scene: crowded training scenes give more instances per image of compute; the
# held-out scenes spread like the world's own (and the prompts': 1-4 objects).
OBJECTS = {"train": (2, 8), "val": (1, 6)}
# Counting thresholds tried: GenEval's general one to its counting one, on held-out oracle renders.
COUNTING_THRESHOLDS = tuple(np.round(np.arange(THRESHOLD, COUNTING_THRESHOLD + 0.01, 0.05), 2).tolist())
COUNTING_SCENES = 128
# Fitted to 128-pixel renders on 2 CPU cores: one optimizer step per batch (nbs = batch), no
# mosaic (it halves already small objects), mild scale jitter, colour jitter kept small because
# colour is judged separately.
TRAIN_ARGS = dict(optimizer="AdamW", lr0=0.006, warmup_epochs=1, mosaic=0.0, scale=0.25, hsv_s=0.2, hsv_v=0.2,
                  workers=0, amp=False, deterministic=True, plots=False, val=False, verbose=False)


def detector_dir(params: Params) -> Path:
    return params.paths.data / "world_detector"


def settings(cfg: WorldGenEvalConfig, size: int) -> dict:
    """What a detector's ``metrics.json`` records of how it was trained, for renders of ``size``² pixels."""
    return {"train_images": cfg.train_images, "val_images": cfg.val_images, "epochs": cfg.epochs, "imgsz": cfg.imgsz,
            "render_size": size, "seed": cfg.seed, "arch": ARCH}


def settings_mismatch(metrics: dict, cfg: WorldGenEvalConfig, size: int) -> str | None:
    """None when a trained detector's metrics say it was trained as ``cfg`` asks, else what differs."""
    diff = [f"{k} {metrics.get(k)!r} (params: {v!r})" for k, v in settings(cfg, size).items() if metrics.get(k) != v]
    return ", ".join(diff) or None


def instance_polygon(mask: np.ndarray) -> np.ndarray:
    """One closed outline (K, 2) of pixel-centre coordinates covering a possibly split mask.

    YOLO takes one polygon per instance; an instance cut in pieces by an occluder keeps all of
    them, joined by zero-width bridges (out along a segment and back) between nearest points.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c.reshape(-1, 2) for c in contours), key=lambda c: -cv2.contourArea(c.astype(np.float32)))
    if not parts:
        raise ValueError("empty mask has no outline")
    path = parts[0]
    for part in parts[1:]:
        d = ((path[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        path = np.concatenate([path[: i + 1], part[j:], part[: j + 1], path[i:]])
    return path.astype(np.float64)


def label_lines(render: world.Render, scene: world.Scene) -> list[str]:
    """YOLO segmentation label lines for every visible object of ``render``."""
    h, w = render.instance.shape
    lines = []
    for o in scene.objects:
        if o.instance_id not in render.boxes:
            continue
        poly = instance_polygon(render.instance == o.instance_id)
        if len(poly) < 3:  # a sliver of one or two pixels: no polygon to learn from
            continue
        # contours run through pixel centres; +0.5 puts them in image coordinates
        xy = (poly + 0.5) / np.array([w, h])
        lines.append(" ".join([str(CLASSES.index(o.shape)), *(f"{v:.6f}" for v in np.clip(xy, 0, 1).ravel())]))
    return lines


def negative_image(split: str, i: int, seed: int, size: int) -> np.ndarray:
    """Image ``i`` of a split's negatives: no object a judge should find, in three kinds of texture."""
    s = item_seed(seed, f"world_detector/{split}/negative", i)
    rng = np.random.default_rng(s)
    kind = i % 3
    if kind == 0:  # smooth colour noise, the look of an undertrained generator
        coarse = rng.integers(0, 256, (int(rng.integers(3, 12)),) * 2 + (3,), dtype=np.uint8)
        return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    if kind == 1:  # pixel noise
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    # a render cut into shuffled patches: the world's colours and textures, no whole object
    _, r = render_split(split, 10_000 + i, seed, size)  # past the split's renders: a scene of its own
    p = size // 8
    tiles = [r.rgb[y : y + p, x : x + p] for y in range(0, size, p) for x in range(0, size, p)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[k] for k in order[j : j + size // p]], 1) for j in range(0, len(tiles), size // p)]
    return np.concatenate(rows, 0)


def render_split(split: str, i: int, seed: int, size: int) -> tuple[world.Scene, world.Render]:
    """Image ``i`` of a split: a random scene from a random camera."""
    s = item_seed(seed, f"world_detector/{split}", i)
    scene = world.sample_scene(s, *OBJECTS[split])
    return scene, world.render(scene, world.random_camera(s, size, size))


def export_split(root: Path, split: str, n: int, seed: int, size: int, negatives: int = 0) -> None:
    """``n`` renders of random scenes, then ``negatives`` background images with empty labels, into
    ``root/images/<split>`` and ``root/labels/<split>``."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene, r = render_split(split, i, seed, size)
        cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), r.rgb[..., ::-1])
        (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(label_lines(r, scene)))
    for i in range(negatives):
        cv2.imwrite(str(root / "images" / split / f"neg{i:05d}.png"), negative_image(split, i, seed, size)[..., ::-1])
        (root / "labels" / split / f"neg{i:05d}.txt").write_text("")


def export_dataset(root: Path, cfg: WorldGenEvalConfig, size: int) -> Path:
    """The training and held-out sets in YOLO layout; returns the dataset yaml."""
    export_split(root, "train", cfg.train_images, cfg.seed, size, round(cfg.negatives_fraction * cfg.train_images))
    export_split(root, "val", cfg.val_images, cfg.seed, size)  # mAP on renders alone, as before
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    (root / "data.yaml").write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return root / "data.yaml"


def _box_iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih)


def match_detections(dets: dict[str, list[dict]], scene: world.Scene, render: world.Render,
                     iou: float = 0.5) -> list[tuple[float, bool]]:
    """(score, is a true object) per detection: per class, most confident first, each matched to
    the free ground-truth box of its class it overlaps most, if by ``iou`` or more."""
    out = []
    for name, found in dets.items():
        truth = [render.boxes[o.instance_id] for o in scene.objects
                 if o.shape == name and o.instance_id in render.boxes]
        free = set(range(len(truth)))
        for d in sorted(found, key=lambda d: -d["score"]):
            best = max(free, key=lambda j: _box_iou(d["box"], truth[j]), default=None)
            hit = best is not None and _box_iou(d["box"], truth[best]) >= iou
            if hit:
                free.discard(best)
            out.append((d["score"], hit))
    return out


def fit_platt(scores: np.ndarray, correct: np.ndarray, prior: float = 1.0) -> tuple[float, float]:
    """``(a, b)`` of ``sigmoid(a * logit(score) + b)`` by Newton's method on the logistic loss, with a
    weak Gaussian prior at the identity (a = 1, b = 0) so a small or one-sided set stays finite."""
    s = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    x, y = np.log(s / (1 - s)), np.asarray(correct, np.float64)
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * x + b)))
        grad = np.array([((p - y) * x).sum() + prior * (a - 1), (p - y).sum() + prior * b])
        w = p * (1 - p)
        hess = np.array([[(w * x * x).sum() + prior, (w * x).sum()], [(w * x).sum(), w.sum() + prior]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    if not a > 0:
        raise ValueError(f"score calibration is not increasing (a = {a:.3g}): the detector's scores carry no signal")
    return float(a), float(b)


def counting_pass_rates(prompts: list[dict], detections: list[dict], size: int) -> dict[float, float]:
    """Per candidate of ``COUNTING_THRESHOLDS``, the share of images (one per counting prompt, with
    its raw detections) that GenEval's rules pass when counting at that threshold."""
    return {t: float(np.mean([judge(m, d, size, size, t)[0] for m, d in zip(prompts, detections, strict=True)]))
            for t in COUNTING_THRESHOLDS}


def counting_oracle_renders(seed: int, size: int, scenes: int) -> list[tuple[dict, world.Scene, world.Render]]:
    """``scenes`` counting prompts, each with the oracle's scene for it and its render, in streams of
    their own (held out from the benchmark's prompts and the detector's training renders)."""
    out = []
    for i in range(scenes):
        metadata = make_prompt("counting", item_rng(seed, "world_detector/counting/prompt", i))
        scene, _, render = oracle_scene(metadata, item_seed(seed, "world_detector/counting/scene", i), size)
        out.append((metadata, scene, render))
    return out


def fit_counting_threshold(detector, seed: int, size: int, scenes: int = COUNTING_SCENES) -> dict:
    """The score threshold of counting prompts for ``detector``: the candidate under which the most
    of ``scenes`` held-out oracle renders of counting prompts pass (the highest of equals, nearest
    GenEval's own); with the pass rate at each candidate."""
    held_out = counting_oracle_renders(seed, size, scenes)
    rates = counting_pass_rates([m for m, _, _ in held_out], detector([r.rgb for _, _, r in held_out]), size)
    return {"counting_threshold": max(rates, key=lambda t: (rates[t], t)), "counting_scenes": scenes,
            "counting_oracle_pass": {f"{t:.2f}": r for t, r in rates.items()}}


def write_weights(trained: Path, out: Path) -> None:
    """``trained``, an ultralytics checkpoint, at ``out`` with only what loading it needs: the model, its
    training arguments and the ultralytics version. Left out is what says when and where it was trained (the
    date, the git state, per-epoch timings, the temporary dataset and run folders, also inside the model's
    own arguments), so that the same training writes the same bytes, and DVC sees the same detector, on every
    run and checkout."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    args = {k: v for k, v in ckpt["train_args"].items() if k not in ("data", "project", "save_dir")}
    ckpt["model"].args = dict(args)
    buffer = io.BytesIO()
    torch.save({"version": ckpt["version"], "model": ckpt["model"], "train_args": args}, buffer)
    atomic_write_bytes(out, buffer.getvalue())


def train(cfg: WorldGenEvalConfig, size: int, out_dir: Path) -> dict:
    """Export, train, evaluate on the held-out renders; writes ``weights.pt`` and ``metrics.json``."""
    ultralytics = import_ultralytics()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="world_detector_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data = export_dataset(tmp / "data", cfg, size)
        t_export = time.perf_counter() - t0
        model = ultralytics.YOLO(ARCH, task="segment")
        model.train(data=str(data), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, nbs=cfg.batch,
                    seed=cfg.seed, device="cpu", project=str(tmp / "runs"), name="train", exist_ok=True, **TRAIN_ARGS)
        t_train = time.perf_counter() - t0 - t_export
        tmp_weights = tmp / "runs" / "train" / "weights" / "last.pt"
        val = ultralytics.YOLO(str(tmp_weights), task="segment").val(
            data=str(data), split="val", imgsz=cfg.imgsz, batch=cfg.batch, device="cpu", plots=False, verbose=False,
            project=str(tmp / "runs"), name="val", exist_ok=True)
        detector = YoloDetector.load(tmp_weights, "world detector")
        pairs = []
        for i in range(cfg.val_images):
            scene, r = render_split("val", i, cfg.seed, size)
            pairs += match_detections(detector([r.rgb])[0], scene, r)
        n_neg = max(1, round(cfg.negatives_fraction * cfg.val_images))
        negatives = [negative_image("val", i, cfg.seed, size) for i in range(n_neg)]
        pairs += [(d["score"], False) for dets in detector(negatives) for found in dets.values() for d in found]
        scores, correct = np.array(pairs, dtype=np.float64).reshape(-1, 2).T
        a, b = fit_platt(scores, correct)
        calibrated = YoloDetector.load(tmp_weights, "world detector", calibration=(a, b))
        fp_images = sum(any(d["score"] > THRESHOLD for found in dets.values() for d in found)
                        for dets in calibrated(negatives))
        counting = fit_counting_threshold(calibrated, cfg.seed, size)
        write_weights(tmp_weights, out_dir / "weights.pt")
    m = val.results_dict
    metrics = {
        "map50_box": float(m["metrics/mAP50(B)"]), "map50_95_box": float(m["metrics/mAP50-95(B)"]),
        "map50_mask": float(m["metrics/mAP50(M)"]), "map50_95_mask": float(m["metrics/mAP50-95(M)"]),
        "precision_box": float(m["metrics/precision(B)"]), "recall_box": float(m["metrics/recall(B)"]),
        "per_class_map50_box": {CLASSES[c]: float(v) for c, v in zip(val.box.ap_class_index, val.box.ap50)},
        "score_calibration": {"a": a, "b": b, "detections": len(scores), "correct": int(correct.sum())},
        "negative_fp_rate": fp_images / n_neg, "val_negatives": n_neg, **counting,
        **settings(cfg, size), "ultralytics": ultralytics.__version__,
    }
    # the evaluations depend on metrics.json: it holds what a training makes, the same bytes each time, and the
    # seconds it took are returned beside it
    write_json(out_dir / "metrics.json", metrics)
    return {**metrics, "export_seconds": round(t_export, 1), "train_seconds": round(t_train, 1)}


def run(params: Params) -> dict:
    """The ``world_detector`` stage: ``data/world_detector/{weights.pt, metrics.json}``, its timings in
    ``reports/logs/world_detector.json``."""
    result = train(params.evals.geneval.world, params.world.resolution, detector_dir(params))
    write_json(params.paths.reports / "logs" / "world_detector.json",
               {k: result[k] for k in ("export_seconds", "train_seconds")})
    return result
