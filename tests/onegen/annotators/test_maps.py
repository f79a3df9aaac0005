import numpy as np

from onegen.annotators.maps import assign_palette, box_map, palette_entries, semantic_map
from onegen.tasks import MAX_ENTITIES, PALETTE


def test_palette_is_seeded_distinct_and_capped():
    labels = [f"class{i}" for i in range(14)] + ["class0"]
    a = assign_palette(labels, np.random.default_rng(1))
    b = assign_palette(labels, np.random.default_rng(1))
    c = assign_palette(labels, np.random.default_rng(2))
    assert a == b and a != c
    assert list(a) == [f"class{i}" for i in range(MAX_ENTITIES)]
    assert len({col.hex for col in a.values()}) == MAX_ENTITIES and set(a.values()) <= set(PALETTE)


def test_semantic_map_colours_each_class_and_leaves_background_black():
    inst = np.array([[0, 1, 1], [2, 2, 3]])
    labels = {1: "red sphere", 2: "blue cube", 3: "red sphere"}
    colors = {"red sphere": PALETTE[3], "blue cube": PALETTE[5]}
    m = semantic_map(inst, labels, colors)
    assert m.dtype == np.uint8 and m.shape == (2, 3, 3)
    assert tuple(m[0, 0]) == (0, 0, 0)
    assert tuple(m[0, 1]) == tuple(m[1, 2]) == (255, 255, 0)  # yellow, both instances of one class
    assert tuple(m[1, 0]) == (0, 255, 255)


def test_box_map_draws_small_boxes_over_large_ones():
    colors = {"big": PALETTE[0], "small": PALETTE[1]}
    m = box_map([((2, 2, 4, 4), "small"), ((0, 0, 8, 8), "big")], colors, 10, 10)
    assert tuple(m[3, 3]) == (0, 255, 0) and tuple(m[0, 0]) == (255, 0, 0) and tuple(m[9, 9]) == (0, 0, 0)
    assert palette_entries(colors, "boundingbox")[0] == {"hex": "FF0000", "name": "red", "label": "big",
                                                          "kind": "boundingbox"}
