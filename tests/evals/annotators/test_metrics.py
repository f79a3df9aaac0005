"""Annotator-quality metrics, each against a hand-derived case."""

import numpy as np
import pytest

from evals.annotators import metrics


def test_box_iou_hand_checked():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(metrics.box_iou(a, b), [[50 / 150, 0.0, 1.0]])


def test_matching_is_greedy_by_score_within_a_class():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [20, 0, 30, 10]])
    got = metrics.match_detections(boxes, ["cube", "cube", "cone", "cube"], np.array([0.5, 0.9, 0.8, 0.1]), gt,
                                   ["cube", "cone"])
    # 0.9 takes the cube (IoU 9/11 >= 0.5); 0.5 finds it taken; the cone matches; a cube box on the cone is wrong.
    assert got == [(0.9, "cube", True), (0.8, "cone", True), (0.5, "cube", False), (0.1, "cube", False)]


def test_average_precision_hand_checked():
    # hits at ranks 1 and 3 of 3 predictions, 2 ground-truth boxes: precision 1, 1/2, 2/3 at recall .5, .5, 1
    # -> envelope 1 on [0, .5], 2/3 on (.5, 1] -> AP = .5 + .5 * 2/3
    assert metrics.average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 1 / 3)
    assert metrics.average_precision([], [], 3) == 0.0
    assert metrics.average_precision([0.3, 0.2], [True, True], 4) == pytest.approx(0.5)  # half the boxes found
    with pytest.raises(ValueError):
        metrics.average_precision([0.1], [True], 0)


def test_mean_ap_averages_the_classes_with_ground_truth():
    matches = [(0.9, "cube", True), (0.5, "cone", False), (0.4, "sphere", False)]
    assert metrics.mean_ap(matches, {"cube": 1, "cone": 1, "sphere": 0}) == pytest.approx(0.5)


def test_best_mask_iou_per_instance():
    inst = np.zeros((4, 4), int)
    inst[:2, :2], inst[2:, 2:] = 1, 2
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True  # instance 1 exactly
    masks[1, 2:, 2:3] = True  # half of instance 2
    assert metrics.best_mask_iou(masks, inst) == [1.0, 0.5]
    assert metrics.best_mask_iou(np.zeros((0, 4, 4), bool), inst) == [0.0, 0.0]


def test_noun_recall_accepts_plurals_only_of_the_same_noun():
    assert metrics.noun_recall(["cube", "sphere"], ["red cubes", "table"]) == 0.5
    assert metrics.noun_recall(["box"], "Two boxes on grass.") == 1.0
    assert metrics.noun_recall(["cone"], "a conical hat") == 0.0
