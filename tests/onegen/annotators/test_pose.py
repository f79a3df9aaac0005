import re

import numpy as np
import pytest
import torch
from transformers import VitPoseImageProcessor
from transformers.models.vitpose.image_processing_vitpose import box_to_center_and_scale

from onegen.annotators.base import AnnotatorError
from onegen.annotators.pose import (
    OPENPOSE_COLORS, PoseAnnotator, box_to_center_scale, crop_persons, heatmap_peaks, render_skeleton,
)
from onegen.config import PoseAnnotatorConfig
from tests.tiny_annotators import POSE_CROP as CROP
from tests.tiny_annotators import save_tiny_vitpose, save_tiny_yolo


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose")
    return save_tiny_yolo(root / "yolo.pt"), save_tiny_vitpose(root / "vitpose")


def _cfg(folders, **kw) -> PoseAnnotatorConfig:
    det, vit = folders
    return PoseAnnotatorConfig(detector_path=det, path=vit, detector_size=128, max_persons=3, batch_size=2, **kw)


@pytest.fixture(scope="module")
def annotator(folders):
    return PoseAnnotator.load(_cfg(folders, keypoint_threshold=-1e9), device="cpu")  # draw every joint


def _images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 120, 3), dtype=np.uint8),
            rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)]


BOXES = [np.array([[10, 5, 50, 90], [40, 30, 78, 60]], np.float32), np.zeros((0, 4), np.float32),
         np.array([[0, 0, 80, 96, 0.7]], np.float32)]


def test_keypoints_from_given_boxes(annotator):
    results = annotator(_images(), boxes=BOXES)
    for res, img, boxes in zip(results, _images(), BOXES):
        p = len(boxes)
        assert res.keypoints.shape == (p, 17, 3) and res.keypoints.dtype == np.float32
        assert res.boxes.shape == (p, 5) and res.skeleton.shape == img.shape and res.skeleton.dtype == np.uint8
        for kp, box in zip(res.keypoints, res.boxes):
            c, s = box_to_center_scale(torch.from_numpy(box[None]), CROP[1] / CROP[0], 1.25)
            cell = (s[0] / torch.tensor([CROP[1] / 4 - 1, CROP[0] / 4 - 1])).numpy()  # one heatmap cell, in px
            lo, hi = (c - s / 2)[0].numpy() - cell, (c + s / 2)[0].numpy() + cell
            assert (kp[:, :2] >= lo).all() and (kp[:, :2] <= hi).all()  # in its crop window (+ DARK's step)
    assert results[2].boxes[0, 4] == pytest.approx(0.7) and results[0].boxes[0, 4] == 1.0
    assert results[0].skeleton.any() and not results[1].skeleton.any()  # nobody, nothing drawn


def test_full_path_detects_then_poses(annotator):
    results = annotator(_images())
    for res, img in zip(results, _images()):
        assert 1 <= len(res.boxes) <= 3 and res.keypoints.shape == (len(res.boxes), 17, 3)
        h, w = img.shape[:2]
        b = res.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        assert (np.diff(b[:, 4]) <= 0).all() and (b[:, 4] >= 0.25).all()  # NMS order, box threshold
        assert res.skeleton.any()
    rec = annotator.record
    assert rec["name"] == "yolo-vitpose" and re.fullmatch(r"[0-9a-f]{64}", rec["weights_sha256"])


def test_deterministic_and_batch_independent(annotator):
    imgs = _images()
    a, b = annotator(imgs), annotator(imgs)
    for x, y in zip(a, b):
        assert np.array_equal(x.keypoints, y.keypoints) and np.array_equal(x.skeleton, y.skeleton)
    for i, img in enumerate(imgs):
        alone = annotator([img])[0]
        np.testing.assert_allclose(alone.boxes, a[i].boxes, atol=1e-3)
        np.testing.assert_allclose(alone.keypoints, a[i].keypoints, atol=1e-2)  # DARK amplifies float noise


def test_crop_matches_the_transformers_vitpose_warp():
    img = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    box = np.array([[20.3, 15.7, 50.2, 70.9]], np.float32)  # its padded crop stays inside the image
    proc = VitPoseImageProcessor(size={"height": CROP[0], "width": CROP[1]}, do_rescale=False, do_normalize=False)
    coco = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], axis=1)
    ref = proc(img, boxes=[coco.tolist()], return_tensors="pt")["pixel_values"].float()
    c, s = box_to_center_scale(torch.from_numpy(box), CROP[1] / CROP[0], 1.25)
    ours = crop_persons(torch.from_numpy(img).permute(2, 0, 1).float(), c, s, CROP)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 0.5 + 1e-3  # the processor rounds to uint8


def test_heatmap_decoding_matches_transformers_dark():
    rng = np.random.default_rng(0)
    n, k, h, w = 3, 17, 16, 12
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(1, w - 2, (n, k)), rng.uniform(1, h - 2, (n, k))
    heat = np.exp(-((xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2) / 4.5).astype(np.float32)
    heat *= rng.uniform(0.5, 1, (n, k, 1, 1)).astype(np.float32)
    boxes = np.array([[10.3, 5.7, 50.2, 80.9], [0, 0, 70, 90], [30, 40, 35, 60]], np.float32)
    coco = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    centers, scales = zip(*[box_to_center_and_scale(b, CROP[1], CROP[0]) for b in coco])
    proc = VitPoseImageProcessor(size={"height": CROP[0], "width": CROP[1]})
    ref, ref_scores = proc.keypoints_from_heatmaps(heat.copy(), np.array(centers), np.array(scales), kernel=11)
    xy, scores = heatmap_peaks(torch.from_numpy(heat))
    c, s = box_to_center_scale(torch.from_numpy(boxes), CROP[1] / CROP[0], 1.25)
    ours = xy * torch.stack([s[:, 0] / (w - 1), s[:, 1] / (h - 1)], 1)[:, None] + (c - s / 2)[:, None]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores[..., 0])


def test_skeleton_line_width_goes_by_the_short_side():
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, [5, 7], 2] = 0.9  # left shoulder and elbow: one limb, vertical
    kp[0, 5, :2], kp[0, 7, :2] = (200, 100), (200, 400)
    square, wide = render_skeleton(kp, 512, 512), render_skeleton(kp, 512, 1536)
    assert np.array_equal(wide[:, :512], square)  # 4 px at 512 on the short side, however long the other
    assert 7 <= (square[250].any(axis=1)).sum() <= 11


def test_skeleton_drawing_follows_openpose_conventions():
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, :, 2] = 0.9
    kp[0, :, :2] = [[50, 20], [45, 15], [55, 15], [40, 18], [60, 18], [35, 40], [65, 40], [30, 60], [70, 60],
                    [28, 80], [72, 80], [40, 80], [60, 80], [40, 100], [60, 100], [40, 120], [60, 120]]
    kp[0, 16, 2] = 0.1  # right ankle below the threshold: not drawn
    img = render_skeleton(kp, 128, 100, threshold=0.3)
    assert tuple(img[20, 50]) == OPENPOSE_COLORS[0]  # nose joint: red
    assert tuple(img[40, 50]) == OPENPOSE_COLORS[1]  # neck = shoulders' midpoint
    assert tuple(img[40, 65]) == OPENPOSE_COLORS[2]  # right shoulder (COCO 6)
    assert tuple(img[50, 68]) == tuple(round(c * 0.6) for c in OPENPOSE_COLORS[2])  # limb 2 at 60 %: right upper arm
    assert not img[118:123, 58:63].any() and img[118:123, 38:43].any()
    assert not img[0:5].any()  # black background
    assert np.array_equal(img, render_skeleton(kp, 128, 100, threshold=0.3))


def test_weights_hash_follows_the_weights(tmp_path, folders, annotator):
    other = PoseAnnotator.load(_cfg((folders[0], save_tiny_vitpose(tmp_path / "v2", seed=1))), device="cpu")
    assert other.record["weights_sha256"] != annotator.record["weights_sha256"]


def test_missing_checkpoints_name_the_params_key(folders, tmp_path):
    with pytest.raises(AnnotatorError, match=r"annotators\.pose\.detector_path is not set"):
        PoseAnnotator.load(PoseAnnotatorConfig(path=folders[1]), device="cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.pose\.path: .* not found at .*missing"):
        PoseAnnotator.load(PoseAnnotatorConfig(detector_path=folders[0], path=tmp_path / "missing"), device="cpu")


def test_bad_input_is_named(annotator):
    with pytest.raises(AnnotatorError, match=r"image 0: expected an HxWx3 uint8 RGB array, got uint8 \[10, 10\]"):
        annotator([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match=r"boxes for image 1: expected \(P, 4\) or \(P, 5\)"):
        annotator(_images()[:2], boxes=[BOXES[0], np.zeros((2, 3), np.float32)])
