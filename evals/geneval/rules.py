"""GenEval's decision rules (Ghosh et al. 2023), as its ``evaluation/evaluate_images.py`` applies them.

An image is judged from its detections, per class a list of ``{"box": [x1, y1, x2, y2], "score",
"color"}`` in pixels (y down). The rules, in the original's order:

1. **Keep** (the original does this in its detection step; here ``judge`` does it, so callers pass
   raw detections): per class, scores strictly above 0.3 -- 0.9 when the prompt's tag is
   ``counting`` --, most confident first, at most 16. Nothing else is suppressed (the original's
   extra NMS is off: ``max_overlap`` 1.0). Equal scores keep numpy's ``argsort(...)[::-1]`` order
   on these machines: the later detection first.
2. **include** clauses, ANDed: a clause holds if at least ``count`` objects of its class are kept;
   then, if it names a ``color``, its ``count`` most confident objects must all have that colour;
   then, if it names a ``position`` ``[relation, k]``, every one of those objects must stand in
   ``relation`` to every object that include clause ``k`` matched (``k`` must have held).
3. **exclude** clauses, ORed: ``{"class", "count": n}`` fails when ``n`` or more are kept -- with
   ``include`` at least ``n - 1`` this makes counting exact.

Position compares box centres: the offset of A's centre from B's, each component shrunk towards
zero by 0.1 x (A's size + B's size) along that axis, divided by the unshrunk offset's length; A
is "left of" B when the x part is below -0.5, "right of" above 0.5, "above"/"below" likewise in y
(down). If both shrunk parts are (near) zero, A and B stand in no relation at all.
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


def threshold(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


def keep_detections(detections: dict[str, list[dict]], tag: str) -> dict[str, list[dict]]:
    """Per class, the detections GenEval keeps for a prompt of ``tag`` (the same dicts, not copies),
    most confident first; classes with none kept are left out."""
    kept = {}
    for name, dets in detections.items():
        scores = np.array([_score(name, d) for d in dets], dtype=np.float64)
        order = np.argsort(scores, kind="stable")[::-1]
        order = order[scores[order] > threshold(tag)][:MAX_OBJECTS]
        if order.size:
            kept[name] = [dets[i] for i in order]
    return kept


def relations(box_a, box_b) -> set[str]:
    """Where box A stands relative to box B (a subset of ``RELATIONS``)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = box_a, box_b
    offset = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    sizes = (abs(ax2 - ax1) + abs(bx2 - bx1), abs(ay2 - ay1) + abs(by2 - by1))
    shrunk = [max(abs(o) - POSITION_MARGIN * s, 0.0) * _sign(o) for o, s in zip(offset, sizes)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    length = math.hypot(*offset)
    dx, dy = shrunk[0] / length, shrunk[1] / length
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


def judge(metadata: dict, detections: dict, height: int, width: int) -> tuple[bool, str]:
    """GenEval's verdict on one image and the reasons it failed ("" when correct).

    ``metadata`` is one line of ``evaluation_metadata.jsonl``; ``detections`` maps a class name to
    the detector's raw ``{"box", "score", "color"}`` list (``color`` needed only where a colour
    clause looks at it); ``height``, ``width`` are the image's size, in whose pixels boxes are.
    """
    tag = metadata.get("tag")
    if not isinstance(tag, str):
        raise ValueError(f"GenEval metadata has no tag: {metadata!r}")
    for name, dets in detections.items():
        for d in dets:
            _check_box(name, d, height, width)
    objects = keep_detections(detections, tag)
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


def _sign(v: float) -> float:
    return (v > 0) - (v < 0)


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
