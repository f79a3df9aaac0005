"""GenEval's decision rules (Ghosh et al. 2023), as its ``evaluation/evaluate_images.py`` applies them.

An image is judged from its detections, per class a list of ``{"box": [x1, y1, x2, y2], "score",
"color"}`` in pixels (y down). The rules, in the original's order:

1. **Keep** (the original does this in its detection step; here ``judge`` does it, so callers pass
   raw detections): per class, scores strictly above 0.3 -- 0.9 when the prompt's tag is
   ``counting`` (its option ``counting_threshold``, which a judge with another detector sets to
   suit that detector's scores) --, most confident first, at most 16. Nothing else is suppressed
   (the original's extra NMS is off: ``max_overlap`` 1.0). Scores are compared as float32, the
   dtype of mmdet's result arrays (a score of exactly float32(0.3) is not above 0.3). Equal scores
   come in the order of the original's ``argsort(...)[::-1]`` under its pinned numpy 1.23.1, which
   newer numpy (SIMD sorts) does not keep: the later detection first while the class has at most
   16 detections in all (kept or not), an introsort's order beyond (``quicksort_order``).
2. **include** clauses, ANDed: a clause holds if at least ``count`` objects of its class are kept;
   then, if it names a ``color``, its ``count`` most confident objects must all have that colour;
   then, if it names a ``position`` ``[relation, k]``, every one of those objects must stand in
   ``relation`` to every object that include clause ``k`` matched (``k`` must have held).
3. **exclude** clauses, ORed: ``{"class", "count": n}`` fails when ``n`` or more are kept -- with
   ``include`` at least ``n - 1`` this makes counting exact.

Position compares box centres: the offset of A's centre from B's, each component shrunk towards
zero by 0.1 x (A's size + B's size) along that axis, divided by the unshrunk offset's length; A
is "left of" B when the x part is below -0.5, "right of" above 0.5, "above"/"below" likewise in y
(down). If both shrunk parts are (near) zero, A and B stand in no relation at all. All of it in
float32, as the original computes on mmdet's boxes: float64 rounds differently at the boundaries.
"""

from __future__ import annotations

import math

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def threshold(tag: str, counting_threshold: float = COUNTING_THRESHOLD) -> float:
    return counting_threshold if tag == "counting" else THRESHOLD


def keep_detections(detections: dict[str, list[dict]], tag: str,
                    counting_threshold: float = COUNTING_THRESHOLD) -> dict[str, list[dict]]:
    """Per class, the detections GenEval keeps for a prompt of ``tag`` (the same dicts, not copies),
    most confident first; classes with none kept are left out."""
    kept = {}
    for name, dets in detections.items():
        scores = np.array([_score(name, d) for d in dets], dtype=np.float32)
        order = np.array(quicksort_order(scores.tolist()), dtype=np.intp)[::-1]
        order = order[scores[order] > np.float32(threshold(tag, counting_threshold))][:MAX_OBJECTS]
        if order.size:
            kept[name] = [dets[i] for i in order]
    return kept


def quicksort_order(values: list[float]) -> list[int]:
    """The indices that sort ``values`` ascending, in the order numpy 1.23's default ``argsort``
    (introsort: median-of-three quicksort, insertion sort on stretches of at most 16, heapsort when
    too deep) leaves equal values."""
    v, idx = values, list(range(len(values)))
    lo, hi, depth = 0, len(v) - 1, 2 * max(len(v).bit_length() - 1, 0)
    stack = []
    while True:
        if depth < 0:
            _heapsort(v, idx, lo, hi)
        else:
            while hi - lo > 15:
                mid = lo + ((hi - lo) >> 1)
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                if v[idx[hi]] < v[idx[mid]]:
                    idx[hi], idx[mid] = idx[mid], idx[hi]
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                pivot = v[idx[mid]]
                i, j = lo, hi - 1
                idx[mid], idx[j] = idx[j], idx[mid]
                while True:
                    i += 1
                    while v[idx[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < v[idx[j]]:
                        j -= 1
                    if i >= j:
                        break
                    idx[i], idx[j] = idx[j], idx[i]
                idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
                depth -= 1
                if i - lo < hi - i:  # go on with the smaller side, the larger waits
                    stack.append((i + 1, hi, depth))
                    hi = i - 1
                else:
                    stack.append((lo, i - 1, depth))
                    lo = i + 1
            for i in range(lo + 1, hi + 1):
                k, j = idx[i], i
                while j > lo and v[k] < v[idx[j - 1]]:
                    idx[j] = idx[j - 1]
                    j -= 1
                idx[j] = k
        if not stack:
            return idx
        lo, hi, depth = stack.pop()


def _heapsort(v: list[float], idx: list[int], lo: int, hi: int) -> None:
    """numpy's heapsort of ``idx[lo..hi]`` by ``v``, its heap numbered from 1."""
    n = hi - lo + 1

    def sift(item: int, i: int, n: int) -> None:
        j = 2 * i
        while j <= n:
            if j < n and v[idx[lo + j - 1]] < v[idx[lo + j]]:
                j += 1
            if not v[item] < v[idx[lo + j - 1]]:
                break
            idx[lo + i - 1] = idx[lo + j - 1]
            i, j = j, 2 * j
        idx[lo + i - 1] = item

    for top in range(n >> 1, 0, -1):
        sift(idx[lo + top - 1], top, n)
    while n > 1:
        last = idx[lo + n - 1]
        idx[lo + n - 1] = idx[lo]
        n -= 1
        sift(last, 1, n)


def relations(box_a, box_b) -> set[str]:
    """Where box A stands relative to box B (a subset of ``RELATIONS``)."""
    corners = np.array([box_a, box_b], dtype=np.float32).reshape(2, 2, 2)  # per box [[x1, y1], [x2, y2]]
    center_a, center_b = corners.mean(axis=1)
    size_a, size_b = np.abs(corners[:, 1] - corners[:, 0])
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - np.float32(POSITION_MARGIN) * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < np.float32(1e-3)):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def judge(metadata: dict, detections: dict, height: int, width: int,
          counting_threshold: float = COUNTING_THRESHOLD) -> tuple[bool, str]:
    """GenEval's verdict on one image and the reasons it failed ("" when correct).

    ``metadata`` is one line of ``evaluation_metadata.jsonl``; ``detections`` maps a class name to
    the detector's raw ``{"box", "score", "color"}`` list (``color`` needed only where a colour
    clause looks at it); ``height``, ``width`` are the image's size, in whose pixels boxes are;
    ``counting_threshold`` the score a counting prompt's detections must pass (GenEval's 0.9).
    """
    tag = metadata.get("tag")
    if not isinstance(tag, str):
        raise ValueError(f"GenEval metadata has no tag: {metadata!r}")
    for name, dets in detections.items():
        for d in dets:
            _check_box(name, d, height, width)
    objects = keep_detections(detections, tag, counting_threshold)
    correct = True
    reasons: list[str] = []
    matched: list[list[dict] | None] = []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = objects.get(name, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [_color(name, d) for d in found]
                if colors.count(req["color"]) < count:
                    ok = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {req['color']} {name}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {seen}")
            if "position" in req and ok:
                relation, k = req["position"]
                if not 0 <= k < len(matched):
                    raise ValueError(f"GenEval metadata: position of {name!r} refers to include clause {k}, "
                                     f"which does not come before it")
                if matched[k] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for target in matched[k]:
                            rels = relations(obj["box"], target["box"])
                            if relation not in rels:
                                ok = False
                                # the original joins a set, in an order that varies run to run
                                named = " and ".join(r for r in RELATIONS if r in rels)
                                reasons.append(f"expected {name} {relation} target, found {named} target")
                                break
                        if not ok:
                            break
        correct &= ok
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        name, count = req["class"], req["count"]
        n = len(objects.get(name, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {n}")
    return correct, "\n".join(reasons)


def _score(name: str, d: dict) -> float:
    s = d.get("score") if isinstance(d, dict) else None
    if not isinstance(s, (int, float, np.floating, np.integer)) or not math.isfinite(s):
        raise ValueError(f"detection of {name!r} has no finite score: {d!r}")
    return float(s)


def _check_box(name: str, d: dict, height: int, width: int) -> None:
    box = d.get("box")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"detection of {name!r}: box must be [x1, y1, x2, y2], got {box!r}") from None
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 < x1 or y2 < y1:
        raise ValueError(f"detection of {name!r}: box {box!r} is not finite with x1 <= x2, y1 <= y2")
    if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
        raise ValueError(f"detection of {name!r}: box {box!r} lies outside the {width}x{height} image")


def _color(name: str, d: dict) -> str:
    c = d.get("color")
    if not isinstance(c, str):
        raise ValueError(f"detection of {name!r} needs a classified colour for a colour clause: {d!r}")
    return c
