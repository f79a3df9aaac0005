"""Segmenter on tiny seeded-random Grounding DINO / OWLv2 / SAM built from the real classes,
saved to disk and loaded back through ``Segmenter.load`` (the path users run)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from segment_anything.predictor import SamPredictor

from onegen import tasks
from onegen.annotators import maps
from onegen.annotators.base import AnnotatorError, weights_sha256
from onegen.annotators.batching import upload
from onegen.annotators.segment import (SamMasks, Segmentation, Segmenter, class_map_view, clean_entities,
                                       paint_instances, pixel_box, sam_architecture)
from onegen.config import SegmenterConfig
from onegen.format import Provenance, Sample
from tests.tiny_annotators import OPEN, save_tiny_grounding_dino, save_tiny_owlv2, tiny_sam



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmenter")
    save_tiny_grounding_dino(root / "gdino")
    save_tiny_owlv2(root / "owlv2")
    torch.manual_seed(0)
    torch.save(tiny_sam().state_dict(), root / "sam.pth")
    return root


def _cfg(ckpt, **kw) -> SegmenterConfig:
    base = dict(detector_path=ckpt / "gdino", sam_path=ckpt / "sam.pth", sam_model="vit_b", **OPEN)
    return SegmenterConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def gdino(ckpt):
    return Segmenter.load(_cfg(ckpt), "cpu", sam_build=tiny_sam)


@pytest.fixture(scope="module")
def owl(ckpt):
    return Segmenter.load(_cfg(ckpt, detector="owlv2", detector_path=ckpt / "owlv2"), "cpu", sam_build=tiny_sam)


@pytest.fixture(scope="module")
def runs(gdino, owl):
    """One batched call per detector on the three test images, shared by the tests that read it."""
    return {"gdino": gdino(_images(), ENTITIES), "owl": owl(_images(), ENTITIES)}


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 56, 3), (64, 48, 3), (30, 30, 3)]]


ENTITIES = [["Cat", "red ball", "dog."], ["person", "shirt"], ["tree"]]


def _check(seg: Segmentation, image: np.ndarray, entities: list[str], max_instances: int):
    h, w = image.shape[:2]
    n = len(seg.labels)
    assert 1 <= n <= max_instances and set(seg.labels) <= set(entities)
    assert seg.boxes.dtype == seg.scores.dtype == seg.mask_scores.dtype == np.float32
    assert seg.boxes.shape == (n, 4) and seg.scores.shape == seg.mask_scores.shape == (n,)
    assert (seg.boxes[:, :2] >= 0).all() and (seg.boxes[:, 2] <= w).all() and (seg.boxes[:, 3] <= h).all()
    assert (seg.boxes[:, 2:] - seg.boxes[:, :2] >= 1).all()
    assert ((seg.scores >= 0) & (seg.scores <= 1)).all() and (np.diff(seg.scores) <= 0).all()
    assert seg.masks.dtype == bool and seg.masks.shape == (n, h, w)
    assert seg.instance.dtype == np.uint16 and seg.instance.shape == (h, w)
    assert seg.instance.max() <= n
    # every pixel carries the smallest-area mask covering it (background where none does)
    areas = seg.masks.reshape(n, -1).sum(1)
    covered = seg.masks.any(0)
    assert ((seg.instance > 0) == covered).all()
    ids = seg.instance[covered].astype(int) - 1
    smallest = np.where(seg.masks[:, covered], areas[:, None], np.iinfo(np.int64).max).min(0)
    assert (seg.masks[ids, np.flatnonzero(covered) // w, np.flatnonzero(covered) % w]).all()
    assert (areas[ids] == smallest).all()


def test_clean_entities_lowercases_dedupes_strips_delimiters_and_caps():
    names = clean_entities([" Red  Ball ", "red ball", "Mr. Smith?", "", "...", *[f"x{i}" for i in range(12)]], 10)
    assert names[:2] == ["red ball", "mr smith"] and len(names) == 10 and "" not in names


def test_grounding_dino_full_path_shapes_ranges_and_provenance(ckpt, gdino, runs):
    images, out = _images(), runs["gdino"]
    assert len(out) == 3
    for seg, image, names in zip(out, images, ENTITIES):
        assert seg.entities == clean_entities(names, 10)
        _check(seg, image, seg.entities, OPEN["max_instances"])
    assert any(seg.masks.any() and not seg.masks.all() for seg in out)  # masks are real partial masks
    det, sam = gdino.records
    assert det["name"] == "grounding_dino" and sam["name"] == "segment_anything_custom"
    assert det["version"] and sam["version"] == "1.0"
    assert det["weights_sha256"] == weights_sha256(ckpt / "gdino")  # the folder's safetensors
    assert sam["weights_sha256"] == hashlib.sha256(b"sam.pth" + (ckpt / "sam.pth").read_bytes()).hexdigest()


def test_owlv2_full_path(owl, runs):
    images, out = _images(), runs["owl"]
    for seg, image in zip(out, images):
        _check(seg, image, seg.entities, OPEN["max_instances"])
    assert owl.records[0]["name"] == "owlv2" and len(owl.records[0]["weights_sha256"]) == 64


def _same(a: Segmentation, b: Segmentation):
    assert a.labels == b.labels and a.entities == b.entities
    for f in ("boxes", "scores", "mask_scores", "masks", "instance"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes(), f


@pytest.mark.parametrize("which", ["gdino", "owl"])
def test_deterministic_and_batch_invariant(which, request, runs):
    seg = request.getfixturevalue(which)
    images, batch = _images(), runs[which]
    again = seg(images, ENTITIES)
    alone = [seg([im], [e])[0] for im, e in zip(images, ENTITIES)]
    for a, b, c in zip(batch, again, alone):
        _same(a, b)
        _same(a, c)  # mixed sizes never share a batch, so results are exact


def test_same_size_batch_matches_single_images_up_to_float_noise(gdino):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    entities = [["cat", "dog"], ["person", "shirt", "tree"], ["ball"]]  # different prompt lengths -> text padding
    batch = gdino(images, entities)
    for a, image, names in zip(batch, images, entities):
        b = gdino([image], [names])[0]
        assert a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert (a.masks != b.masks).mean() < 1e-3


def test_no_entities_gives_an_empty_result(gdino):
    images = _images()
    out = gdino(images, [[], ["cat"], ["", " . "]])
    for i in (0, 2):
        h, w = images[i].shape[:2]
        assert out[i].labels == [] and out[i].masks.shape == (0, h, w) and out[i].boxes.shape == (0, 4)
        assert out[i].instance.shape == (h, w) and out[i].instance.dtype == np.uint16 and not out[i].instance.any()
    assert out[1].labels and set(out[1].labels) == {"cat"}
    view, palette = class_map_view(out[0], "semantic", np.random.default_rng(0))
    assert palette == [] and not view.data.any()


def test_thresholds_filter_detections(ckpt, gdino):
    strict = Segmenter(type(gdino.detector).load(_cfg(ckpt, box_threshold=1.0), gdino.device), gdino.masker,
                       _cfg(ckpt, box_threshold=1.0))
    assert all(s.labels == [] for s in strict(_images(), ENTITIES))


def test_mask_stage_matches_segment_anythings_predictor(gdino):
    """Our batched SAM path gives SamPredictor's masks for the same boxes."""
    from segment_anything.utils.transforms import ResizeLongestSide

    masker: SamMasks = gdino.masker
    images = _images()[:2]
    boxes = [torch.tensor([[4.0, 5.0, 30.0, 33.0], [0.0, 0.0, 56.0, 40.0]]), torch.tensor([[10.0, 2.0, 40.0, 60.0]])]
    with torch.inference_mode():
        ours = [masker(upload([im], torch.device("cpu")), [b])[0] for im, b in zip(images, boxes)]
        predictor = SamPredictor(masker.sam)
        for image, box, (masks, iou) in zip(images, boxes, ours):
            h, w = image.shape[:2]
            assert masks.dtype == torch.bool and masks.shape == (len(box), h, w) and iou.shape == (len(box),)
            resize = ResizeLongestSide(masker.side)
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=resize.get_preprocess_shape(h, w, masker.side),
                                                mode="bilinear", align_corners=False, antialias=True)
            predictor.set_torch_image(x, (h, w))
            ref, ref_iou, _ = predictor.predict_torch(None, None, boxes=resize.apply_boxes_torch(box, (h, w)),
                                                      multimask_output=False)
            assert torch.equal(ref[:, 0], masks)
            torch.testing.assert_close(ref_iou[:, 0], iou)
        # a batch of two images with boxes on one of them: the other gets an empty result
        both = masker(upload([images[0], images[0]], torch.device("cpu")), [boxes[0], torch.zeros((0, 4))])
    assert torch.equal(both[0][0], ours[0][0]) and both[1][0].shape == (0, 40, 56)


def test_paint_instances_puts_small_masks_on_top_and_breaks_ties_by_score():
    big = torch.zeros((6, 6), dtype=torch.bool)
    big[:, :] = True
    small = torch.zeros_like(big)
    small[1:3, 1:3] = True
    twin = torch.zeros_like(big)
    twin[2:4, 2:4] = True  # same area as ``small``, overlapping it at (2, 2)
    inst = paint_instances(torch.stack([big, small, twin]), torch.tensor([0.9, 0.2, 0.5]))
    assert inst[0, 0] == 1 and inst[1, 1] == 2 and inst[3, 3] == 3
    assert inst[2, 2] == 3  # equal areas: the higher score is painted last


def _toy_segmentation() -> Segmentation:
    masks = np.zeros((3, 8, 10), bool)
    masks[0, :, :6] = True  # person, large
    masks[1, 2:5, 1:4] = True  # shirt, on the person
    # instance 3 (a second person) has an empty mask: it exists as a box only
    boxes = np.array([[0, 0, 6, 8], [1.2, 2, 3.5, 4.9], [6.5, 1, 9.5, 7]], np.float32)
    scores = np.array([0.9, 0.8, 0.4], np.float32)
    seg = Segmentation(["person", "shirt"], ["person", "shirt", "person"], boxes, scores, np.ones(3, np.float32),
                       masks, np.zeros((8, 10), np.uint16))
    seg.instance = paint_instances(torch.from_numpy(masks), torch.from_numpy(seg.scores)).numpy().astype(np.uint16)
    return seg


def test_class_map_views_colour_classes_like_the_world_family():
    seg = _toy_segmentation()
    view, palette = class_map_view(seg, "semantic", np.random.default_rng(7))
    colors = maps.assign_palette(["person", "shirt"], np.random.default_rng(7))
    assert view.modality == "semantic" and view.role == "condition" and view.data.dtype == np.uint8
    assert view.data.shape == (8, 10, 3)
    assert tuple(view.data[0, 0]) == colors["person"].rgb and tuple(view.data[3, 2]) == colors["shirt"].rgb
    assert tuple(view.data[0, 9]) == (0, 0, 0)
    assert palette == maps.palette_entries(colors, "mask")
    sample = Sample("photos/x", tasks.SEMANTIC2IMAGE, "a photo", [view, view], Provenance("photos", "x", 0),
                    palette=palette)
    person = colors["person"]
    assert sample.prompt().startswith(f"[[semanticmap2image]] <#{person.hex} {person.name} mask: person>")

    boxes, bpalette = class_map_view(seg, "bbox", np.random.default_rng(7))
    assert boxes.modality == "bbox" and [p["kind"] for p in bpalette] == ["boundingbox"] * 2
    assert tuple(boxes.data[3, 2]) == colors["shirt"].rgb  # the small box is drawn over the large one
    assert tuple(boxes.data[4, 8]) == colors["person"].rgb  # the box-only instance is in the box map
    assert pixel_box(seg.boxes[1], 8, 10) == (1, 2, 4, 5)
    again, _ = class_map_view(seg, "bbox", np.random.default_rng(7))
    assert again.data.tobytes() == boxes.data.tobytes()
    with pytest.raises(ValueError, match="family"):
        class_map_view(seg, "depth", np.random.default_rng(0))


def test_missing_or_wrong_checkpoints_name_their_params_key(ckpt, tmp_path):
    with pytest.raises(AnnotatorError, match=r"annotators\.segmenter\.detector_path is not set"):
        Segmenter.load(SegmenterConfig(sam_path=ckpt / "sam.pth"), "cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.segmenter\.detector_path: .* not found"):
        Segmenter.load(_cfg(ckpt, detector_path=tmp_path / "nope"), "cpu", sam_build=tiny_sam)
    with pytest.raises(AnnotatorError, match=r"annotators\.segmenter\.sam_path is not set"):
        Segmenter.load(_cfg(ckpt, sam_path=None), "cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.segmenter\.sam_path: .* not found"):
        Segmenter.load(_cfg(ckpt, sam_path=tmp_path / "sam_vit_h.pth"), "cpu")
    with pytest.raises(AnnotatorError, match=r"holds a 'owlv2' model.*detector='grounding_dino'"):
        Segmenter.load(_cfg(ckpt, detector_path=ckpt / "owlv2"), "cpu", sam_build=tiny_sam)
    with pytest.raises(AnnotatorError, match=r"sam_path: .* does not fit annotators\.segmenter\.sam_model='vit_b'"):
        Segmenter.load(_cfg(ckpt), "cpu")  # the tiny checkpoint is no vit_b
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((ckpt / "sam.pth").read_bytes()[:500])
    with pytest.raises(AnnotatorError, match=r"sam_path: cannot read .*truncated\.pth"):
        Segmenter.load(_cfg(ckpt, sam_path=truncated), "cpu", sam_build=tiny_sam)


def test_real_registry_types_build_empty_on_the_meta_device():
    start = time.perf_counter()
    with torch.device("meta"):
        counts = {t: sum(p.numel() for p in sam_architecture(t).parameters()) for t in ("vit_b", "vit_l", "vit_h")}
    assert counts == {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}
    assert time.perf_counter() - start < 5  # nothing initialised, nothing allocated


def test_bad_images_and_mismatched_entities_fail_with_one_line(gdino):
    good = _images()[0]
    with pytest.raises(AnnotatorError, match="image 1"):
        gdino([good, good.astype(np.float32)], [["cat"], ["cat"]])
    with pytest.raises(AnnotatorError, match="2 images but 1 entity lists"):
        gdino([good, good], [["cat"]])
