import re

import numpy as np
import pytest
import torch
from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size

from onegen import tasks
from onegen.annotators.base import AnnotatorError
from onegen.annotators.depth import (QUEUED_BATCHES, DepthAnnotator, condition_image, disparity_to_condition,
                                     input_shape)
from onegen.config import DepthAnnotatorConfig
from onegen.format import Provenance, Sample, View, decode_sample, encode_sample
from onegen.shards.reader import depth_to_condition
from tests.tiny_annotators import save_tiny_depth_anything


@pytest.fixture(scope="module")
def da_dir(tmp_path_factory):
    return save_tiny_depth_anything(tmp_path_factory.mktemp("da"))


@pytest.fixture(scope="module")
def annotator(da_dir):
    return DepthAnnotator.load(DepthAnnotatorConfig(path=da_dir, input_size=56, batch_size=4), device="cpu")


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:60]
    ramp = np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1).astype(np.uint8)
    return [ramp, rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), ramp[::-1].copy()]


def test_full_path_gives_16bit_relative_disparity_at_image_size(annotator):
    views = annotator(_images())
    for view, img in zip(views, _images()):
        assert view.modality == "depth" and view.role == "condition"
        assert view.data.dtype == np.uint16 and view.data.shape == img.shape[:2]
        assert view.data.min() == 0 and view.data.max() == 65535  # min-max normalised per image
        assert view.meta["kind"] == "relative-disparity" and view.meta["near"] == "high"
        assert view.meta["raw_min"] < view.meta["raw_max"]
    rec = annotator.record
    assert rec["name"] == "depth-anything-v2" and rec["version"]
    assert re.fullmatch(r"[0-9a-f]{64}", rec["weights_sha256"])


def test_deterministic_and_batch_independent(annotator):
    imgs = _images()
    a, b = annotator(imgs), annotator(imgs)
    assert all(np.array_equal(x.data, y.data) and x.meta == y.meta for x, y in zip(a, b))
    for i, img in enumerate(imgs):
        alone = annotator([img])[0].data.astype(np.int64)
        assert np.abs(alone - a[i].data.astype(np.int64)).max() <= 2


def test_batches_queued_ahead_come_back_in_order(annotator):
    # batch_size 1: six batches, more than are queued on the device before the first is collected
    one_by_one = DepthAnnotator(annotator.model, "x", annotator.device, input_size=56, batch_size=1)
    imgs = _images() + [im[::-1, ::-1].copy() for im in _images()]
    queued, together = one_by_one(imgs), annotator(imgs)
    assert len(imgs) > QUEUED_BATCHES + 1
    for q, t, img in zip(queued, together, imgs):
        assert q.data.shape == img.shape[:2]
        assert np.abs(q.data.astype(np.int64) - t.data.astype(np.int64)).max() <= 2


def test_stored_view_round_trips_through_the_sample_format(annotator):
    img = _images()[0]
    depth = annotator([img])[0]
    sample = Sample("photos/x1", tasks.DEPTH2IMAGE, "a ramp", [View("image", img), depth],
                    Provenance("photos", "x1", 0))
    back = decode_sample(encode_sample(sample)).views[1]
    assert np.array_equal(back.data, depth.data) and back.meta == depth.meta


@pytest.mark.parametrize("hw, expected", [
    ((400, 600), (518, 784)),    # the short side to 518; 1.295 x 600 = 777 = 55.5 x 14, to even: 56 x 14
    ((300, 600), (518, 1036)),
    ((1000, 750), (686, 518)),   # 0.6907 x 1000 = 690.7 = 49.3 x 14 -> 49 x 14
    ((64, 48), (686, 518)),
    ((518, 518), (518, 518)),
    ((520, 535), (518, 532)),    # 535 x 518 / 520 = 532.9 = 38.07 x 14 -> 38 x 14
])
def test_input_size_is_da_v2s_lower_bound_resize(hw, expected):
    assert input_shape(*hw, 518, 14) == expected


@pytest.mark.parametrize("hw", [(1000, 1500), (518, 518), (800, 600)])
def test_input_size_agrees_with_the_dpt_processor_where_both_sides_reach_the_size(hw):
    ref = get_resize_output_image_size(torch.zeros(3, *hw), (518, 518), keep_aspect_ratio=True, multiple=14)
    assert input_shape(*hw, 518, 14) == (ref.height, ref.width)


def test_preprocessing_matches_the_hf_processor(annotator):
    from transformers import DPTImageProcessor

    proc = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    # both sides above the input size, where the processor's resize and DA-V2's agree (a smaller photo: see above)
    img = np.random.default_rng(1).integers(0, 256, (96, 72, 3), dtype=np.uint8)
    ref = proc(img, return_tensors="pt")["pixel_values"]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ours = annotator.preprocess(x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.02  # the processor resizes uint8 (rounds); we resize floats


def test_condition_matches_the_world_depth_convention():
    yy, xx = np.mgrid[0:32, 0:48]
    disparity = (xx * 1000 + yy * 7 + 1).astype(np.uint16)  # right side near
    cond = disparity_to_condition(disparity)
    # metric depth is drawn from its inverse: the reader's picture of 1 / disparity must be ours
    ref = depth_to_condition((1.0 / disparity).astype(np.float32))
    assert cond.shape == (3, 32, 48) and torch.allclose(cond, ref, atol=1e-4)
    assert cond[0, :, -1].min() > 0.99 and cond[0, :, 0].max() < -0.99  # near bright, far dark: DA-V2's pictures
    img = condition_image(disparity)
    assert img.shape == (32, 48, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 0 and img[0, -1, 0] == 255
    # pixels without depth are far, and leave the range of the others alone
    holes = np.where(xx < 4, 0.0, 1.0 / disparity).astype(np.float32)
    with_holes = depth_to_condition(holes)
    assert (with_holes[:, :, :4] == -1).all() and with_holes[0, :, -1].min() > 0.99


def test_weights_hash_follows_the_weights(tmp_path, annotator):
    other = DepthAnnotator.load(DepthAnnotatorConfig(path=save_tiny_depth_anything(tmp_path / "b", seed=1)), device="cpu")
    assert other.record["weights_sha256"] != annotator.record["weights_sha256"]


def test_missing_checkpoint_names_the_params_key(tmp_path):
    with pytest.raises(AnnotatorError, match=r"annotators\.depth\.path is not set"):
        DepthAnnotator.load(DepthAnnotatorConfig(), device="cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.depth\.path: .* not found at .*nowhere"):
        DepthAnnotator.load(DepthAnnotatorConfig(path=tmp_path / "nowhere"), device="cpu")


def test_bad_image_is_named(annotator):
    with pytest.raises(AnnotatorError, match=r"image 1: expected an HxWx3 uint8 RGB array, got float32 \[8, 8, 3\]"):
        annotator([_images()[0], np.zeros((8, 8, 3), np.float32)])
