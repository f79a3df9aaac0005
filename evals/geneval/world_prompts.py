"""GenEval's six tags in the procedural world's vocabulary, scenes that satisfy them, and the
``oracle`` baseline that renders those scenes.

Prompts are written in the grammar of the world's own captions (``procedural.caption``:
"A photo of two cubes.", "... The sphere is to the left of the cone.") and carry GenEval's
metadata schema, so ``rules.judge`` scores them unchanged. Classes are the world's shapes and
colours its ten (GenEval's ten). Per tag, as GenEval: one object; two different shapes; 2-4 of
one shape (an ``exclude`` clause makes the count exact); one shape in a colour; two shapes in an
image-space relation (the first clause is the reference); two shapes in two different colours.
"""

from __future__ import annotations

import numpy as np

from evals.geneval.rules import RELATIONS, TAGS, judge
from onegen.camera import Camera
from onegen.seeding import item_rng, item_seed
from onegen.sources import procedural as world

SHAPES = world.SHAPES
COLORS = tuple(world.COLORS)
_NUMBERS = {2: "two", 3: "three", 4: "four"}
_RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
ORACLE_TRIES = 200
MIN_PIXELS = 12  # an object smaller than this is no fair test of a detector
MAX_OVERLAP = 0.25  # box intersection / smaller box: above this, one object hides much of another


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def make_prompt(tag: str, rng: np.random.Generator) -> dict:
    """One GenEval metadata line of ``tag`` (``tag``, ``include``, optional ``exclude``, ``prompt``)."""
    s1, s2 = (str(s) for s in rng.choice(SHAPES, 2, replace=False))
    c1, c2 = (str(c) for c in rng.choice(COLORS, 2, replace=False))
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": s1, "count": 1}], "prompt": f"A photo of {_a(s1)}."}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}],
                "prompt": f"A photo of {_a(s1)} and {_a(s2)}."}
    if tag == "counting":
        n = int(rng.integers(2, 5))
        return {"tag": tag, "include": [{"class": s1, "count": n}], "exclude": [{"class": s1, "count": n + 1}],
                "prompt": f"A photo of {_NUMBERS[n]} {s1}s."}
    if tag == "colors":
        return {"tag": tag, "include": [{"class": s1, "count": 1, "color": c1}],
                "prompt": f"A photo of {_a(f'{c1} {s1}')}."}
    if tag == "position":
        rel = str(rng.choice(RELATIONS))
        return {"tag": tag, "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1, "position": [rel, 0]}],
                "prompt": f"A photo of {_a(s1)} and {_a(s2)}. The {s2} is {_RELATION_WORDS[rel]} the {s1}."}
    if tag == "color_attr":
        return {"tag": tag, "include": [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}],
                "prompt": f"A photo of {_a(f'{c1} {s1}')} and {_a(f'{c2} {s2}')}."}
    raise ValueError(f"unknown GenEval tag {tag!r}; known: {', '.join(TAGS)}")


def make_prompts(n: int, seed: int) -> list[dict]:
    """``n`` prompts cycling through the six tags, each a pure function of (seed, index)."""
    return [make_prompt(TAGS[i % len(TAGS)], item_rng(seed, "world_geneval/prompt", i)) for i in range(n)]


def ground_truth(scene: world.Scene, render: world.Render) -> dict[str, list[dict]]:
    """The scene's visible objects as perfect detections (score 1, true colour, exact mask)."""
    out: dict[str, list[dict]] = {}
    for o in scene.objects:
        if o.instance_id in render.boxes:
            out.setdefault(o.shape, []).append({"box": [float(v) for v in render.boxes[o.instance_id]], "score": 1.0,
                                                "color": o.color, "mask": render.instance == o.instance_id})
    return out


def _identities(metadata: dict, rng: np.random.Generator) -> list[world.Identity]:
    """The objects a prompt asks for, nothing else; unnamed colours, materials and sizes at random."""
    out: list[world.Identity] = []
    for req in metadata["include"]:
        for _ in range(req["count"]):
            while True:  # a scene holds each identity once
                ident = (req["class"], req.get("color") or str(rng.choice(COLORS)), str(rng.choice(world.MATERIALS)),
                         str(rng.choice(list(world.SIZES))))
                if ident not in out:
                    out.append(ident)
                    break
    return out


def _clear(scene: world.Scene, render: world.Render) -> bool:
    """Every object visible, big enough and not largely hidden behind another."""
    if len(render.boxes) != len(scene.objects):
        return False
    if any((render.instance == k).sum() < MIN_PIXELS for k in render.boxes):
        return False
    boxes = list(render.boxes.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            iw = min(a[2], b[2]) - max(a[0], b[0])
            ih = min(a[3], b[3]) - max(a[1], b[1])
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * smaller:
                return False
    return True


def oracle_scene(metadata: dict, seed: int, size: int) -> tuple[world.Scene, Camera, world.Render]:
    """A scene and camera whose render satisfies ``metadata`` by its exact ground truth: exactly the
    named objects, all clearly visible, in the asked relation. Raises if ``ORACLE_TRIES`` fail."""
    for t in range(ORACLE_TRIES):
        s = item_seed(seed, "world_geneval/oracle", t)
        idents = _identities(metadata, np.random.default_rng(s))
        try:
            scene = world.sample_scene(s, len(idents), len(idents), include=tuple(idents))
        except RuntimeError:  # no room for every object: try another layout
            continue
        cam = world.random_camera(s, size, size)
        r = world.render(scene, cam)
        if _clear(scene, r) and judge(metadata, ground_truth(scene, r), size, size)[0]:
            return scene, cam, r
    raise RuntimeError(f"no procedural scene satisfies {metadata['prompt']!r} in {ORACLE_TRIES} tries")


class WorldOracle:
    """The ``oracle`` baseline: per image a render of ``oracle_scene`` for the item's prompt -- what a
    perfect generator would draw, so its score measures the detector and colour classifier (the
    evaluation's own ceiling), not a model."""

    def describe(self) -> dict:
        return {"name": "oracle", "kind": "baseline", "hash": f"world-oracle-v1-r{world.RENDERER_VERSION}"}

    def generate_images(self, items: list[dict]) -> list[list[np.ndarray]]:
        out = []
        for it in items:
            h, w = it["size"]
            if h != w:
                raise ValueError(f"{it['id']}: the oracle renders square images, asked for {h}x{w}")
            out.append([oracle_scene(it["metadata"], item_seed(0, f"world_geneval/oracle/{it['id']}", k), h)[2].rgb
                        for k in range(it["n_images"])])
        return out
