import cv2
import numpy as np
import pytest

from evals.identity import world_attributes as wa
from onegen.sources import procedural as world


def _render(seed, size=128):
    scene = world.sample_scene(seed, 2, 6)
    return scene, world.render(scene, world.random_camera(seed, size, size))


def test_object_mask_matches_the_exact_instance_maps():
    hits = total = false = background = 0
    for seed in range(12):
        scene, r = _render(seed)
        mask = wa.object_mask(r.rgb)
        coloured = np.isin(r.instance, [o.instance_id for o in scene.objects if o.color != "white"])
        hits, total = hits + (mask & coloured).sum(), total + coloured.sum()
        false, background = false + (mask & (r.instance == 0)).sum(), background + (r.instance == 0).sum()
    assert hits / total > 0.9  # white objects excepted (module docstring): their shaded faces look like ground
    assert false / background < 0.002


def test_background_only_image_has_no_candidate():
    r = world.render(world.Scene((), 0), world.random_camera(0, 96, 96))
    assert not wa.object_mask(r.rgb).any()
    reference = wa.embed(*_disk_image())
    assert wa.best_match(reference, r.rgb) == (0.0, None)


def _disk_image(colour=(200, 30, 30), size=64, radius=14):
    img = np.full((size, size, 3), 150, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1)
    img[mask > 0] = colour
    return img, mask.astype(bool)


def test_colour_histogram_is_a_distribution_with_the_hue_bin_set():
    img, mask = _disk_image()
    h = wa.colour_histogram(img, mask)
    assert h.shape == (wa.HISTOGRAM_BINS,) and h.sum() == pytest.approx(1.0)
    assert h.max() == 1.0 and h.argmax() == 1  # red hue bin 0, bright half
    black = wa.colour_histogram(np.zeros_like(img), mask)
    assert black[wa.HISTOGRAM_BINS - 4] == 1.0  # darkest grey bin


def test_shape_descriptor_by_hand():
    _, disk = _disk_image(radius=20)
    circ, extent, height, top = wa.shape_descriptor(disk)
    assert circ > 0.85 and extent == pytest.approx(disk.sum() / 41**2) and height == pytest.approx(0.5, abs=0.02)
    assert top == pytest.approx(np.sqrt(1 - 0.5**2), abs=0.06)  # the chord a quarter down a circle
    tri = np.zeros((64, 64), np.uint8)
    cv2.fillConvexPoly(tri, np.array([[32, 8], [8, 56], [56, 56]]), 1)
    circ_t, extent_t, _, top_t = wa.shape_descriptor(tri.astype(bool))
    assert extent_t == pytest.approx(0.5, abs=0.05) and top_t < 0.35 and circ_t < circ


def test_similarity_is_one_for_itself_and_lower_for_other_colours_and_shapes():
    img, mask = _disk_image()
    red = wa.embed(img, mask)
    assert wa.similarity(red, red) == pytest.approx(1.0)
    blue = wa.embed(*_disk_image(colour=(40, 80, 215)))
    tri_img = np.full((64, 64, 3), 150, np.uint8)
    tri = np.zeros((64, 64), np.uint8)
    cv2.fillConvexPoly(tri, np.array([[32, 8], [8, 56], [56, 56]]), 1)
    tri_img[tri > 0] = (200, 30, 30)
    red_cone = wa.embed(tri_img, tri.astype(bool))
    assert wa.similarity(red, blue) == pytest.approx(0.5)  # disjoint histograms, same shape
    assert 0.5 < wa.similarity(red, red_cone) < 1.0


def test_best_match_finds_the_identity_among_touching_objects():
    img, mask = _disk_image()
    reference = wa.embed(img, mask)
    both = img.copy()
    both[:, 46:] = (40, 80, 215)  # a blue block touching the red disk
    sim, found = wa.best_match(reference, both)
    assert found is not None and (found & mask).sum() / mask.sum() > 0.95 and sim > 0.9


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="HxWx3"):
        wa.object_mask(np.zeros((8, 8), np.uint8))
    img, mask = _disk_image()
    with pytest.raises(ValueError, match="mask shape"):
        wa.embed(img, mask[:10])
    with pytest.raises(ValueError, match="empty mask"):
        wa.embed(img, np.zeros_like(mask))
