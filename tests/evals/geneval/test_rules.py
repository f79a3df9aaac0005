"""GenEval's decision rules on hand-built detections. Every expected verdict and reason below is
worked out by hand from the original evaluate_images.py (thresholds, cap, clause logic, position
arithmetic), not computed by code."""

from __future__ import annotations

import pytest

from evals.geneval import judge
from evals.geneval.rules import keep_detections, quicksort_order, relations

H = W = 100


def d(box, score=0.95, color=None):
    return {"box": list(box), "score": score, "color": color}


SINGLE = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
TWO = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
       "prompt": "a photo of a cat and a dog"}
COUNT2 = {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
          "prompt": "a photo of two clocks"}
COUNT4 = {"tag": "counting", "include": [{"class": "clock", "count": 4}], "exclude": [{"class": "clock", "count": 5}],
          "prompt": "a photo of four clocks"}
COUNT16 = {"tag": "counting", "include": [{"class": "cat", "count": 16}], "exclude": [{"class": "cat", "count": 17}],
           "prompt": "sixteen cats"}
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
RED_APPLES = {"tag": "colors", "include": [{"class": "apple", "count": 2, "color": "red"}], "prompt": "two red apples"}
ATTR = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "green"},
                                         {"class": "microwave", "count": 1, "color": "purple"}],
        "prompt": "a photo of a green bus and a purple microwave"}


def pos(rel):
    return {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                           {"class": "dog", "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of a dog {rel} a teddy bear"}


BOX = (10, 10, 30, 30)
TEDDY = d((10, 40, 30, 60))  # centre (20, 50)

CASES = [
    # --- single object: score must be strictly above 0.3
    ("single: one cat", SINGLE, {"cat": [d(BOX)]}, True, ""),
    ("single: nothing", SINGLE, {}, False, "expected cat>=1, found 0"),
    ("single: only a dog", SINGLE, {"dog": [d(BOX)]}, False, "expected cat>=1, found 0"),
    ("single: score 0.31 kept", SINGLE, {"cat": [d(BOX, 0.31)]}, True, ""),
    ("single: score 0.29 dropped", SINGLE, {"cat": [d(BOX, 0.29)]}, False, "expected cat>=1, found 0"),
    ("single: score exactly 0.3 dropped", SINGLE, {"cat": [d(BOX, 0.3)]}, False, "expected cat>=1, found 0"),
    # mmdet's scores are float32: float32(0.3) = 0.30000001192... is not above float32(0.3)
    ("single: score float32(0.3) dropped", SINGLE, {"cat": [d(BOX, 0.30000001192092896)]}, False,
     "expected cat>=1, found 0"),
    ("single: more cats are fine (at least)", SINGLE, {"cat": [d(BOX)] * 5}, True, ""),
    # --- two objects: clauses ANDed, every failure reported in clause order
    ("two: both", TWO, {"cat": [d(BOX, 0.5)], "dog": [d(BOX, 0.5)]}, True, ""),
    ("two: dog below threshold", TWO, {"cat": [d(BOX, 0.5)], "dog": [d(BOX, 0.2)]}, False,
     "expected dog>=1, found 0"),
    ("two: neither", TWO, {}, False, "expected cat>=1, found 0\nexpected dog>=1, found 0"),
    ("two: 0.5 passes outside counting", TWO, {"cat": [d(BOX, 0.5)], "dog": [d(BOX, 0.35)]}, True, ""),
    # --- counting: threshold 0.9, exact count through exclude
    ("count: 0.95 and 0.91", COUNT2, {"clock": [d(BOX, 0.95), d(BOX, 0.91)]}, True, ""),
    ("count: 0.89 is not counted", COUNT2, {"clock": [d(BOX, 0.95), d(BOX, 0.89)]}, False,
     "expected clock>=2, found 1"),
    ("count: exactly 0.9 is not counted", COUNT2, {"clock": [d(BOX, 0.95), d(BOX, 0.9)]}, False,
     "expected clock>=2, found 1"),
    ("count: a third at 0.89 is ignored", COUNT2, {"clock": [d(BOX, 0.95), d(BOX, 0.91), d(BOX, 0.89)]}, True, ""),
    ("count: a third at 0.905 breaks the exact count", COUNT2,
     {"clock": [d(BOX, 0.95), d(BOX, 0.91), d(BOX, 0.905)]}, False, "expected clock<3, found 3"),
    ("count: 0.5 detections never count", COUNT2, {"clock": [d(BOX, 0.5)] * 6 + [d(BOX, 0.92)] * 2}, True, ""),
    ("count: 20 confident clocks, capped at 16", COUNT4, {"clock": [d(BOX, 0.99)] * 20}, False,
     "expected clock<5, found 16"),
    ("count: the cap hides extras beyond 16", COUNT16, {"cat": [d(BOX, 0.99)] * 20}, True, ""),
    ("count: 0.31 is far below the counting threshold", COUNT2, {"clock": [d(BOX, 0.92), d(BOX, 0.31)]}, False,
     "expected clock>=2, found 1"),
    # --- colours: the top `count` objects by score are classified
    ("colour: red car", RED_CAR, {"car": [d(BOX, 0.8, "red")]}, True, ""),
    ("colour: blue car", RED_CAR, {"car": [d(BOX, 0.8, "blue")]}, False,
     "expected red car>=1, found 0 red; and 1 blue"),
    ("colour: a more confident blue car hides the red one", RED_CAR,
     {"car": [d(BOX, 0.6, "red"), d(BOX, 0.8, "blue")]}, False, "expected red car>=1, found 0 red; and 1 blue"),
    ("colour: the most confident car is red", RED_CAR, {"car": [d(BOX, 0.8, "red"), d(BOX, 0.6, "blue")]}, True, ""),
    # equal scores: numpy's argsort(...)[::-1] puts the later detection first
    ("colour: score tie, the later (blue) one is top", RED_CAR,
     {"car": [d(BOX, 0.7, "red"), d(BOX, 0.7, "blue")]}, False, "expected red car>=1, found 0 red; and 1 blue"),
    ("colour: score tie, the later (red) one is top", RED_CAR,
     {"car": [d(BOX, 0.7, "blue"), d(BOX, 0.7, "red")]}, True, ""),
    # 17 detections in all (the 15 below threshold count too): numpy 1.23's argsort partitions, and
    # its order puts the earlier tied car on top (see test_quicksort_order)
    ("colour: score tie among 17 detections, the earlier (red) one is top", RED_CAR,
     {"car": [d(BOX, 0.7, "red"), d(BOX, 0.7, "blue")] + [d(BOX, 0.2)] * 15}, True, ""),
    ("colour: wrong colour on the 2nd instance", RED_APPLES,
     {"apple": [d(BOX, 0.9, "red"), d(BOX, 0.8, "green"), d(BOX, 0.7, "red")]}, False,
     "expected red apple>=2, found 1 red; and 1 red, 1 green"),
    ("colour: a red third instance does not help", RED_APPLES,
     {"apple": [d(BOX, 0.7, "red"), d(BOX, 0.8, "green"), d(BOX, 0.9, "red")]}, False,
     "expected red apple>=2, found 1 red; and 1 red, 1 green"),
    ("colour: two red apples", RED_APPLES, {"apple": [d(BOX, 0.9, "red"), d(BOX, 0.8, "red"), d(BOX, 0.7, "blue")]},
     True, ""),
    ("colour: too few apples, colour not asked", RED_APPLES, {"apple": [d(BOX, 0.9, "red")]}, False,
     "expected apple>=2, found 1"),
    # --- colour attribution
    ("attr: both right", ATTR, {"bus": [d(BOX, 0.9, "green")], "microwave": [d(BOX, 0.9, "purple")]}, True, ""),
    ("attr: microwave white", ATTR, {"bus": [d(BOX, 0.9, "green")], "microwave": [d(BOX, 0.9, "white")]}, False,
     "expected purple microwave>=1, found 0 purple; and 1 white"),
    ("attr: colours swapped", ATTR, {"bus": [d(BOX, 0.9, "purple")], "microwave": [d(BOX, 0.9, "green")]}, False,
     "expected green bus>=1, found 0 green; and 1 purple\nexpected purple microwave>=1, found 0 purple; and 1 green"),
    ("attr: bus missing", ATTR, {"microwave": [d(BOX, 0.9, "purple")]}, False, "expected bus>=1, found 0"),
    # --- position: A (the clause with `position`) relative to B (clause 0), y down
    ("pos: dog well right", pos("right of"), {"teddy bear": [TEDDY], "dog": [d((60, 40, 80, 60))]}, True, ""),
    ("pos: dog left, asked right", pos("right of"), {"teddy bear": [TEDDY], "dog": [d((0, 40, 5, 60))]}, False,
     "expected dog right of target, found left of target"),
    # touching boxes: centres 20 apart, shrunk by 0.1*(20+20) = 4 -> 16/20 = 0.8
    ("pos: touching boxes", pos("right of"), {"teddy bear": [d((20, 40, 40, 60))], "dog": [d((40, 40, 60, 60))]},
     True, ""),
    # overlapping: x offset 10 < 0.1*(60+60) = 12, y offset 0 -> no relation at all
    ("pos: overlapping boxes stand in no relation", pos("right of"),
     {"teddy bear": [d((20, 20, 80, 80))], "dog": [d((30, 20, 90, 80))]}, False,
     "expected dog right of target, found  target"),
    ("pos: dog above (y down)", pos("above"), {"teddy bear": [d((40, 60, 60, 80))], "dog": [d((40, 10, 60, 30))]},
     True, ""),
    ("pos: dog above, asked below", pos("below"), {"teddy bear": [d((40, 60, 60, 80))], "dog": [d((40, 10, 60, 30))]},
     False, "expected dog below target, found above target"),
    # offset (6, 8), widths 5+5 -> shrunk x 6 - 1 = 5, dx = 5/10 = 0.5: not > 0.5
    ("pos: dx exactly 0.5 is not 'right of'", pos("right of"),
     {"teddy bear": [d((20, 30, 25, 30))], "dog": [d((26, 38, 31, 38))]}, False,
     "expected dog right of target, found below target"),
    # offset (6.2, 8): shrunk 5.2 / 10.12 = 0.514 > 0.5
    ("pos: dx just above 0.5", pos("right of"),
     {"teddy bear": [d((20, 30, 25, 30))], "dog": [d((26.2, 38, 31.2, 38))]}, True, ""),
    # exactly -0.6 / 1.2 = -0.5 in decimals, but on float32 boxes (20.8 -> 20.799999, 21.8 -> 21.799999) the
    # offset is -1.2000008, shrunk -0.60000074: dx = -0.5000003 < -0.5
    ("pos: float32 rounding decides an exact boundary", pos("left of"),
     {"teddy bear": [d((20, 30, 25, 30))], "dog": [d((20.8, 30, 21.8, 30))]}, True, ""),
    ("pos: diagonal holds both relations", pos("below"),
     {"teddy bear": [d((10, 10, 20, 20))], "dog": [d((40, 40, 50, 50))]}, True, ""),
    ("pos: no reference", pos("right of"), {"dog": [d((60, 40, 80, 60))]}, False,
     "expected teddy bear>=1, found 0\nno target for dog to be right of"),
    ("pos: reference below threshold", pos("right of"),
     {"teddy bear": [d((10, 40, 30, 60), 0.25)], "dog": [d((60, 40, 80, 60))]}, False,
     "expected teddy bear>=1, found 0\nno target for dog to be right of"),
    ("pos: no dog", pos("right of"), {"teddy bear": [TEDDY]}, False, "expected dog>=1, found 0"),
    ("pos: only the most confident dog is placed", pos("right of"),
     {"teddy bear": [TEDDY], "dog": [d((60, 40, 80, 60), 0.9), d((0, 40, 5, 60), 0.5)]}, True, ""),
    ("pos: the most confident dog is on the wrong side", pos("right of"),
     {"teddy bear": [TEDDY], "dog": [d((60, 40, 80, 60), 0.5), d((0, 40, 5, 60), 0.9)]}, False,
     "expected dog right of target, found left of target"),
    ("pos: only the most confident teddy is the reference", pos("right of"),
     {"teddy bear": [d((0, 40, 10, 60), 0.9), d((90, 40, 100, 60), 0.5)], "dog": [d((45, 40, 55, 60))]}, True, ""),
    ("pos: a stray dog class below threshold does not matter", pos("left of"),
     {"teddy bear": [TEDDY], "dog": [d((0, 40, 5, 60), 0.9), d((60, 40, 80, 60), 0.29)]}, True, ""),
]


@pytest.mark.parametrize("metadata, detections, correct, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_agrees_with_hand_derived_verdicts(metadata, detections, correct, reason):
    assert judge(metadata, detections, H, W) == (correct, reason)


def test_two_relations_are_both_named():
    ok, reason = judge(pos("above"), {"teddy bear": [d((10, 10, 20, 20))], "dog": [d((40, 40, 50, 50))]}, H, W)
    assert not ok and reason == "expected dog above target, found right of and below target"


def test_relations_arithmetic():
    assert relations((60, 40, 80, 60), (10, 40, 30, 60)) == {"right of"}
    assert relations((10, 40, 30, 60), (60, 40, 80, 60)) == {"left of"}
    assert relations((40, 40, 50, 50), (10, 10, 20, 20)) == {"right of", "below"}
    assert relations((0, 0, 10, 10), (0, 0, 10, 10)) == set()


def test_quicksort_order():
    """numpy 1.23's argsort (GenEval's pinned numpy) on ties: insertion sort up to 16 values, a
    median-of-three partition beyond (traced by hand for the 17-value cases)."""
    assert quicksort_order([]) == []
    assert quicksort_order([0.5, 0.7, 0.5, 0.7]) == [0, 2, 1, 3]
    # pivot 0.2 (the median of v[0], v[8], v[16] after swaps); partition swaps outside-in, then the
    # two halves are insertion-sorted
    assert quicksort_order([0.7, 0.7] + [0.2] * 15) == [8, 14, 13, 12, 11, 10, 9, 15, 16, 6, 5, 4, 3, 2, 7, 1, 0]
    assert quicksort_order([0.7] * 17) == [0, 14, 13, 12, 11, 10, 9, 15, 8, 6, 5, 4, 3, 2, 1, 7, 16]
    # a median-of-three killer (Musser) with ties: deep enough to fall back to heapsort; the order
    # numpy 1.23.5's np.argsort gives
    killer = [1, 20, 3, 22, 5, 24, 7, 26, 9, 28, 11, 30, 13, 32, 15, 34, 17, 36, 19, 38,
              4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 0]
    assert quicksort_order(killer) == [38, 0, 2, 20, 4, 21, 6, 22, 8, 23, 10, 24, 12, 25, 14, 26, 16, 27, 18, 1,
                                       28, 3, 29, 30, 5, 7, 31, 32, 9, 11, 33, 34, 13, 35, 15, 36, 17, 37, 19]


def test_keep_detections_sorts_thresholds_caps_and_returns_the_same_dicts():
    dets = {"cat": [d(BOX, s) for s in (0.2, 0.5, 0.95, 0.31, 0.3)] + [d(BOX, 0.6)] * 20, "dog": [d(BOX, 0.1)]}
    kept = keep_detections(dets, "two_object")
    assert set(kept) == {"cat"}  # no dog survives
    assert len(kept["cat"]) == 16
    scores = [x["score"] for x in kept["cat"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == 0.95 and min(scores) > 0.3
    assert kept["cat"][0] is dets["cat"][2]
    assert [x["score"] for x in keep_detections(dets, "counting")["cat"]] == [0.95]
    # a judge with another detector counts at its own threshold; the other tags keep GenEval's 0.3
    assert len(keep_detections(dets, "counting", 0.55)["cat"]) == 16
    assert [x["score"] for x in keep_detections(dets, "counting", 0.6)["cat"]] == [0.95]
    assert keep_detections(dets, "two_object", 0.99) == kept


def test_counting_threshold_decides_an_exact_count():
    three = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
             "prompt": "a photo of three cats"}
    cats = {"cat": [d((10 * k, 10, 10 * k + 8, 18), s) for k, s in enumerate((0.95, 0.8, 0.6, 0.35))]}
    assert judge(three, cats, H, W)[1] == "expected cat>=3, found 1"  # GenEval's 0.9
    assert judge(three, cats, H, W, counting_threshold=0.5) == (True, "")
    assert not judge(three, cats, H, W, counting_threshold=0.3)[0]  # four kept: the exclude clause fails


@pytest.mark.parametrize("detections, message", [
    ({"cat": [{"box": [1, 2, 3], "score": 0.9}]}, "box must be"),
    ({"cat": [{"box": [10, 10, 5, 20], "score": 0.9}]}, "x1 <= x2"),
    ({"cat": [{"box": [1, 2, 3, float("nan")], "score": 0.9}]}, "not finite"),
    ({"cat": [{"box": [200, 200, 210, 210], "score": 0.9}]}, "outside the 100x100 image"),
    ({"cat": [{"box": [1, 2, 3, 4], "score": float("nan")}]}, "no finite score"),
    ({"cat": [{"box": [1, 2, 3, 4]}]}, "no finite score"),
])
def test_malformed_detections_name_the_class(detections, message):
    with pytest.raises(ValueError, match=message) as e:
        judge(SINGLE, detections, H, W)
    assert "'cat'" in str(e.value)


def test_colour_clause_needs_a_classified_colour():
    with pytest.raises(ValueError, match="colour"):
        judge(RED_CAR, {"car": [d(BOX, 0.9)]}, H, W)
    # an unclassified object outside the clause's top `count` is never looked at
    assert judge(RED_CAR, {"car": [d(BOX, 0.9, "red"), d(BOX, 0.5)]}, H, W) == (True, "")


def test_shipped_metadata_is_judged_without_errors():
    from evals.geneval.benchmark import load_metadata

    rows = load_metadata()
    assert len(rows) == 553
    for m in rows:  # nothing detected: every prompt fails, on its first include clause
        ok, reason = judge(m, {}, H, W)
        assert not ok and reason.startswith(f"expected {m['include'][0]['class']}>=")
