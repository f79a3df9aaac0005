import json
import re

import numpy as np
import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from pydantic import ValidationError

from onegen.annotators.base import AnnotatorError
from onegen.annotators.filters import QUALITY_PAIRS, UNSAFE_PROMPTS, ClipFilter, judge, zero_shot_scores
from onegen.config import FiltersConfig

TINY = "onegen-tiny-clip"


def _save_clip(path, seed=0):
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(TINY).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    # a real open_clip CLIP (ViT image tower, transformer text tower) at toy width, registered by config file
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (root / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root / f"{TINY}.json")
    return _save_clip(root / "clip.pt")


@pytest.fixture(scope="module")
def clip_filter(checkpoint):
    return ClipFilter.load(FiltersConfig(clip_path=checkpoint, clip_model=TINY, batch_size=2), device="cpu")


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), np.full((50, 30, 3), 128, np.uint8),
            rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)]


def test_the_tokenizer_is_the_one_shipped_in_the_wheel(checkpoint):
    tok = open_clip.get_tokenizer(TINY)  # no download: its BPE vocabulary is inside the package
    assert isinstance(tok, SimpleTokenizer) and tok(["a photo"]).shape == (1, 77)


def test_full_path_scores_and_verdicts(clip_filter):
    verdicts = clip_filter(_images())
    assert len(verdicts) == 3
    for v in verdicts:
        assert 0 <= v.nsfw <= 1 and 0 <= v.quality <= 1
        assert v.keep == (v.nsfw < 0.5 and v.quality >= 0.3) and (v.reason == "") == v.keep
        assert set(v.to_json()) == {"nsfw", "quality", "keep", "reason"}
    rec = clip_filter.record
    assert rec["name"] == "clip-filter" and re.fullmatch(r"[0-9a-f]{64}", rec["weights_sha256"])


def test_thresholds_decide_and_name_the_reason(checkpoint):
    strict = ClipFilter.load(FiltersConfig(clip_path=checkpoint, clip_model=TINY, nsfw_threshold=0.0), device="cpu")
    assert all(not v.keep and v.reason.startswith("nsfw ") for v in strict(_images()))
    picky = ClipFilter.load(FiltersConfig(clip_path=checkpoint, clip_model=TINY, nsfw_threshold=1.0, min_quality=1.0),
                           device="cpu")
    assert all(not v.keep and v.reason.startswith("quality ") for v in picky(_images()))
    assert judge(0.2, 0.9, 0.5, 0.3) == (True, "")
    assert judge(0.5, 0.9, 0.5, 0.3) == (False, "nsfw 0.500 >= 0.5")
    assert judge(0.1, 0.25, 0.5, 0.3) == (False, "quality 0.250 < 0.3")


def test_zero_shot_scores_by_hand():
    d = 8
    eye = torch.eye(d)
    nsfw_text = eye[:8]  # 4 unsafe prompts, then 4 safe ones
    quality_text = torch.stack([eye[:2], eye[2:4], eye[4:6], eye[6:8]])
    image = eye[[0]]  # exactly the first unsafe prompt
    nsfw, quality = zero_shot_scores(image, nsfw_text, quality_text, scale=10.0)
    e = np.exp(10.0)
    assert nsfw.item() == pytest.approx((e + 3) / (e + 7))  # unsafe mass: one logit at 10, three at 0
    assert quality.item() == pytest.approx((e / (e + 1) + 0.5 * 3) / 4)
    assert len(UNSAFE_PROMPTS) == 4 and len(QUALITY_PAIRS) == 4


def test_deterministic_and_batch_independent(clip_filter):
    imgs = _images()
    a, b = clip_filter(imgs), clip_filter(imgs)
    assert a == b
    for i, img in enumerate(imgs):
        alone = clip_filter([img])[0]
        assert alone.nsfw == pytest.approx(a[i].nsfw, abs=1e-5)
        assert alone.quality == pytest.approx(a[i].quality, abs=1e-5)


def test_preprocessing_is_the_clip_recipe(clip_filter):
    x = torch.rand(1, 3, 40, 60)
    y = clip_filter.preprocess(x)
    assert y.shape == (1, 3, 32, 32)
    # shortest side to 32 (40x60 -> 32x48), then the centre 32 columns
    ref = torch.nn.functional.interpolate(x, size=(32, 48), mode="bicubic", antialias=True)[..., 8:40].clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (ref - mean) / std)


def test_weights_hash_follows_the_weights(tmp_path, clip_filter):
    cfg = FiltersConfig(clip_path=_save_clip(tmp_path / "b.pt", seed=1), clip_model=TINY)
    other = ClipFilter.load(cfg, device="cpu")
    assert other.record["weights_sha256"] != clip_filter.record["weights_sha256"]


def test_missing_or_wrong_checkpoint_names_the_params_key(tmp_path, checkpoint):
    with pytest.raises(AnnotatorError, match=r"annotators\.filters\.clip_path is not set"):
        ClipFilter.load(FiltersConfig(), device="cpu")
    with pytest.raises(AnnotatorError, match=r"annotators\.filters\.clip_path: .* not found"):
        ClipFilter.load(FiltersConfig(clip_path=tmp_path / "none.pt", clip_model=TINY), device="cpu")
    # no default architecture: OpenAI's ViT-L-14 weights load into the GELU ViT-L-14 without complaint
    with pytest.raises(ValidationError, match="clip_model: name the open_clip architecture"):
        FiltersConfig(clip_path=checkpoint)
    with pytest.raises(AnnotatorError, match=r"annotators\.filters: cannot build 'no-such-clip' from .*not found"):
        ClipFilter.load(FiltersConfig(clip_path=checkpoint, clip_model="no-such-clip"), device="cpu")
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(AnnotatorError, match=r"annotators\.filters: cannot build 'onegen-tiny-clip' from .*other\.pt"):
        ClipFilter.load(FiltersConfig(clip_path=tmp_path / "other.pt", clip_model=TINY), device="cpu")


def test_bad_image_is_named(clip_filter):
    with pytest.raises(AnnotatorError, match=r"clip-filter: image 2: expected an HxWx3 uint8 RGB array"):
        clip_filter(_images()[:2] + [np.zeros((4, 4, 4), np.uint8)])
