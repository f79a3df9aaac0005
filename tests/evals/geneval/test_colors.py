"""Colour classifiers: CLIP zero-shot on the mask-cut crop (a tiny seeded open_clip stands in for
ViT-L-14, loaded through the same local-file path), and the world's palette classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evals.geneval.colors import BACKGROUND, TEMPLATES, ColorClassifier, WorldColorClassifier, masked_crop
from evals.geneval.rules import COLORS
from onegen.annotators.base import AnnotatorError
from onegen.sources import procedural as world

TINY = "geneval-test-tiny-clip"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    torch.save(model.state_dict(), d / "tiny_clip.pt")
    return d / "tiny_clip.pt"


def _image(seed=0, h=24, w=30):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_masked_crop_composites_on_grey_and_rounds_the_box_like_pil():
    im = _image()
    mask = np.zeros(im.shape[:2], bool)
    mask[5:15, 4:20] = True
    # PIL rounds each coordinate half-to-even: (2.4, 3.6, 10.5, 12.5) -> (2, 4, 10, 12)
    crop = np.asarray(masked_crop(im, [2.4, 3.6, 10.5, 12.5], mask))
    expected = np.where(mask[..., None], im, np.array(BACKGROUND, np.uint8))[4:12, 2:10]
    assert crop.shape == (8, 8, 3) and np.array_equal(crop, expected)
    assert (crop[0, 0] == 153).all() and np.array_equal(crop[4, 4], im[8, 6])
    # no mask: the plain crop
    assert np.array_equal(np.asarray(masked_crop(im, [0, 0, 30, 24], None)), im)


def test_masked_crop_rejects_a_mask_of_another_size():
    with pytest.raises(ValueError, match="mask shape"):
        masked_crop(_image(), [0, 0, 5, 5], np.ones((5, 5), bool))


def test_templates_are_genevals():
    assert [t.format(color="red", name="car") for t in TEMPLATES] == [
        "a photo of a red car", "a photo of a red-colored car", "a photo of a red object"]


def test_clip_classifier_is_deterministic_and_answers_a_colour(clip_file):
    a = ColorClassifier.load(clip_file, arch=TINY, device="cpu")
    b = ColorClassifier.load(clip_file, arch=TINY, device="cpu")
    im = _image(1, 40, 40)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:25] = True
    objects = [([5, 10, 25, 30], mask), ([0, 0, 40, 40], None), ([3.5, 2.5, 17.5, 9.5], None)]
    out = a(im, objects, "car")
    assert len(out) == 3 and all(c in COLORS for c in out)
    assert out == b(im, objects, "car")
    assert a(im, objects[:1], "car") == out[:1]  # batch composition does not change an answer
    clf = a._classifier("car")
    assert clf.shape == (16, 10) and torch.allclose(clf.norm(dim=0), torch.ones(10), atol=1e-5)
    assert a(im, [], "car") == []
    assert len(a.weights_sha256) == 64


def test_missing_clip_weights_name_the_params_key(tmp_path):
    with pytest.raises(AnnotatorError, match="evals.geneval.clip_path is not set"):
        ColorClassifier.load(None)
    with pytest.raises(AnnotatorError, match="evals.geneval.clip_path: .* not found"):
        ColorClassifier.load(tmp_path / "nope.pt")


@pytest.mark.parametrize("shade", [0.3, 0.6, 1.0])
def test_world_palette_classifier_reads_shaded_palette_colours(shade):
    clf = WorldColorClassifier(world.COLORS)
    for name, rgb in world.COLORS.items():
        patch = np.clip(np.array(rgb) * shade, 0, 255).astype(np.uint8)[None, None].repeat(8, 0).repeat(8, 1)
        im = np.full((16, 16, 3), 90, np.uint8)
        im[4:12, 4:12] = patch
        mask = np.zeros((16, 16), bool)
        mask[4:12, 4:12] = True
        assert clf(im, [([4, 4, 12, 12], mask)], "cube") == [name]


def test_world_palette_classifier_on_renders():
    clf = WorldColorClassifier(world.COLORS)
    right = total = 0
    for s in range(40):
        scene = world.sample_scene(7000 + s, 1, 6)
        r = world.render(scene, world.random_camera(7000 + s, 96, 96))
        for o in scene.objects:
            m = r.instance == o.instance_id
            if m.sum() >= 12:
                right += clf(r.rgb, [(r.boxes[o.instance_id], m)], o.shape) == [o.color]
                total += 1
    assert total > 80 and right / total > 0.95


def test_world_palette_must_be_genevals_colours():
    with pytest.raises(ValueError, match="palette"):
        WorldColorClassifier({"red": (255, 0, 0)})
