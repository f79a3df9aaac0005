import re

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from onegen.annotators import degrade
from onegen.annotators.base import AnnotatorError
from onegen.annotators.edges import HED, Canny, HEDNet
from onegen.config import EdgesConfig


def _images():
    rng = np.random.default_rng(0)
    img = np.zeros((40, 56, 3), np.uint8)
    img[10:30, 12:40] = 220
    return [img, rng.integers(0, 256, (48, 32, 3), dtype=np.uint8), img[::-1, ::-1].copy()]


def _save_hed(path, seed=0, fuse=False):
    torch.manual_seed(seed)
    net = HEDNet()
    for m in net.modules():  # small weights keep the random logits off the sigmoid's flat ends
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.02)
    state = net.state_dict()
    state["norm"] = torch.tensor([120.0, 115.0, 105.0]).view(1, 3, 1, 1)
    if not fuse:  # ControlNet's checkpoint has no fusion weights
        state = {k: v for k, v in state.items() if not k.startswith("fuse.")}
    else:
        state["fuse.weight"] = torch.tensor([1.0, 0, 0, 0, 0]).view(1, 5, 1, 1)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def hed(tmp_path_factory):
    path = _save_hed(tmp_path_factory.mktemp("hed") / "ControlNetHED.pth")
    return HED.load(EdgesConfig(hed_path=path, hed_size=32, batch_size=2), device="cpu")


def test_canny_draws_seeded_thresholds_and_records_them():
    canny = Canny.load(EdgesConfig())
    views = canny(_images(), seeds=[1, 2, 3])
    for v, img in zip(views, _images()):
        assert v.modality == "canny" and v.data.dtype == np.uint8 and v.data.shape == img.shape[:2]
        assert set(np.unique(v.data)) <= {0, 255}
        low, high = v.meta["low"], v.meta["high"]
        assert 50 <= low <= 150 <= high <= 250 and low <= high
        assert np.array_equal(v.data, degrade.canny(img, low, high)[0])  # the wrapped function, same thresholds
    assert [v.meta["seed"] for v in views] == [1, 2, 3]
    again = canny(_images()[1:2], seeds=[2])[0]
    assert again.meta == views[1].meta and np.array_equal(again.data, views[1].data)
    pairs = {(v.meta["low"], v.meta["high"]) for v in canny([_images()[0]] * 8, seeds=list(range(8)))}
    assert len(pairs) > 1
    assert canny.record == {"name": "opencv-canny", "version": f"{cv2.__version__}/rgb", "weights_sha256": None}


def test_canny_without_seeds_is_a_function_of_the_image():
    canny = Canny()
    a, b = canny(_images()), canny(_images()[::-1])
    assert a[0].meta == b[2].meta and np.array_equal(a[0].data, b[2].data)
    assert a[0].meta["seed"] != a[1].meta["seed"]


def test_canny_ranges_are_validated():
    with pytest.raises(ValidationError, match="canny_low/canny_high"):
        EdgesConfig(canny_low=(200, 100))
    with pytest.raises(ValidationError, match="canny_low/canny_high"):
        EdgesConfig(canny_low=(50, 180), canny_high=(150, 250))


def test_hed_full_path_shapes_and_range(hed):
    views = hed(_images())
    for v, img in zip(views, _images()):
        assert v.modality == "hed" and v.role == "condition"
        assert v.data.dtype == np.uint8 and v.data.shape == img.shape[:2]
        assert v.data.std() > 0  # not a constant map
    assert 0 < views[0].data.mean() < 255
    rec = hed.record
    assert rec["name"] == "hed" and re.fullmatch(r"[0-9a-f]{64}", rec["weights_sha256"])


def test_hed_missing_fuse_is_the_mean_of_side_outputs(hed):
    net = hed.net
    x = torch.rand(1, 3, 32, 32) * 255
    h, sides = x - net.norm, []
    for i in range(1, 6):
        if i > 1:
            h = torch.nn.functional.max_pool2d(h, 2)
        h, side = getattr(net, f"block{i}")(h)
        sides.append(torch.nn.functional.interpolate(side, size=(32, 32), mode="bilinear", align_corners=False))
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch.stack(sides).mean(0), atol=1e-5, rtol=1e-5)


def test_hed_deterministic_and_batch_independent(hed):
    imgs = _images()
    a, b = hed(imgs), hed(imgs)
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a, b))
    for i, img in enumerate(imgs):
        assert np.abs(hed([img])[0].data.astype(int) - a[i].data.astype(int)).max() <= 1


def test_hed_checkpoint_with_fusion_weights_uses_them(tmp_path, hed):
    fused = HED.load(EdgesConfig(hed_path=_save_hed(tmp_path / "f.pth", fuse=True), hed_size=32), device="cpu")
    assert fused.net.fuse.weight.flatten().tolist() == [1.0, 0, 0, 0, 0]
    assert not np.array_equal(fused(_images()[:1])[0].data, hed(_images()[:1])[0].data)
    assert fused.record["weights_sha256"] != hed.record["weights_sha256"]


def test_hed_bad_checkpoints_name_the_params_key(tmp_path):
    with pytest.raises(AnnotatorError, match=r"annotators\.edges\.hed_path is not set"):
        HED.load(EdgesConfig(), device="cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.edges\.hed_path: .* not found"):
        HED.load(EdgesConfig(hed_path=tmp_path / "none.pth"), device="cpu")
    wrong = tmp_path / "wrong.pth"
    torch.save({"block1.convs.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(AnnotatorError, match="does not match the network"):
        HED.load(EdgesConfig(hed_path=wrong), device="cpu")
    pickled = tmp_path / "pickled.pth"
    # an arbitrary pickled object: refused by weights_only (torch modules are not a safe probe, since
    # loading a YOLO checkpoint adds them to torch's safe globals for the whole process)
    torch.save({"model": _Pickled()}, pickled)
    with pytest.raises(AnnotatorError, match=r"annotators\.edges\.hed_path: cannot read"):
        HED.load(EdgesConfig(hed_path=pickled), device="cpu")


class _Pickled:
    """A class no loader allow-lists."""
