"""The world's GenEval prompts: valid metadata in GenEval's schema, and oracle scenes that satisfy them."""

from __future__ import annotations

import numpy as np
import pytest

from evals.geneval.benchmark import classify_colors, load_metadata
from evals.geneval.colors import WorldColorClassifier
from evals.geneval.rules import COLORS, RELATIONS, TAGS, judge
from evals.geneval.world_prompts import SHAPES, WorldOracle, ground_truth, make_prompts, oracle_scene
from evals.predictors import RandomScene
from onegen.sources import procedural as world


def _schema(m: dict) -> tuple:
    """A metadata line's shape: tag, per include clause its keys, exclude clause count."""
    return (m["tag"], tuple(tuple(sorted(c)) for c in m["include"]), len(m.get("exclude", [])))


def test_prompts_follow_geneval_schema_per_tag():
    prompts = make_prompts(60, seed=3)
    assert [m["tag"] for m in prompts[:6]] == list(TAGS)
    assert {_schema(m) for m in prompts} == {_schema(m) for m in load_metadata()}


def test_prompts_are_valid_and_deterministic():
    prompts = make_prompts(60, seed=3)
    assert prompts == make_prompts(60, seed=3) and prompts != make_prompts(60, seed=4)
    for m in prompts:
        inc = m["include"]
        assert all(c["class"] in SHAPES and c["count"] >= 1 for c in inc)
        assert all(c.get("color", "red") in COLORS for c in inc)
        assert all(c["class"] in m["prompt"] for c in inc)
        if m["tag"] in ("two_object", "position", "color_attr"):
            assert inc[0]["class"] != inc[1]["class"]
        if m["tag"] == "color_attr":
            assert inc[0]["color"] != inc[1]["color"]
        if m["tag"] == "counting":
            n = inc[0]["count"]
            assert 2 <= n <= 4 and m["exclude"] == [{"class": inc[0]["class"], "count": n + 1}]
            assert m["prompt"].split()[3] == {2: "two", 3: "three", 4: "four"}[n]
        if m["tag"] == "position":
            rel, k = inc[1]["position"]
            assert rel in RELATIONS and k == 0
            words = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
            assert m["prompt"].endswith(f"The {inc[1]['class']} is {words[rel]} the {inc[0]['class']}.")
        assert not judge(m, {}, 64, 64)[0]


def test_unknown_tag_is_an_error():
    from evals.geneval.world_prompts import make_prompt

    with pytest.raises(ValueError, match="unknown GenEval tag 'colour'"):
        make_prompt("colour", np.random.default_rng(0))


@pytest.mark.parametrize("index", range(12))
def test_oracle_scene_holds_exactly_the_prompt_and_satisfies_it(index):
    m = make_prompts(12, seed=11)[index]
    scene, cam, r = oracle_scene(m, seed=index, size=128)
    asked = {c["class"]: c["count"] for c in m["include"]}
    assert sorted(o.shape for o in scene.objects) == sorted(s for s, n in asked.items() for _ in range(n))
    for c in m["include"]:
        if "color" in c:
            assert [o.color for o in scene.objects if o.shape == c["class"]] == [c["color"]]
    gt = ground_truth(scene, r)
    assert judge(m, gt, 128, 128) == (True, "")
    # the palette colour classifier reads the rendered colours back from the exact masks
    assert judge(m, classify_colors(r.rgb, gt, m, WorldColorClassifier(world.COLORS)), 128, 128) == (True, "")


def test_oracle_and_random_scene_baselines_generate_the_asked_images():
    items = [{"id": f"w{i}", "metadata": m, "prompt": m["prompt"], "n_images": 3, "size": (64, 64)}
             for i, m in enumerate(make_prompts(2, seed=5))]
    for predictor in (WorldOracle(), RandomScene()):
        a, b = predictor.generate_images(items), predictor.generate_images(items)
        assert predictor.describe()["kind"] == "baseline"
        assert [len(x) for x in a] == [3, 3]
        assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for x in a for im in x)
        assert all(np.array_equal(p, q) for x, y in zip(a, b) for p, q in zip(x, y))  # seeded
        assert not np.array_equal(a[0][0], a[0][1])  # the images of one prompt differ
