import numpy as np
import pytest
import torch
from PIL import Image

from evals.identity.clip_score import ClipScorer
from onegen.annotators.base import AnnotatorError


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    return ClipScorer.load(tiny_clip, device="cpu")


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]


def test_clip_t_is_100_times_the_cosine_of_the_model_embeddings(scorer):
    images, prompts = _images(), ["a red cube", "two people on a beach"]
    got = scorer.clip_t(images, prompts)
    with torch.no_grad():  # by hand, straight from the model
        x = torch.stack([scorer.preprocess(Image.fromarray(im)) for im in images])
        i = scorer.model.encode_image(x)
        t = scorer.model.encode_text(scorer.tokenizer(prompts))
        expected = 100 * torch.nn.functional.cosine_similarity(i, t).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert all(-100 <= v <= 100 for v in got)


def test_scores_are_deterministic_and_pairwise(scorer):
    images = _images()
    a = scorer.clip_t(images, ["x", "y"])
    b = scorer.clip_t(images[::-1], ["y", "x"])
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)  # batch order changes nothing
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer.clip_t(images, ["x"])


def test_weights_are_the_saved_ones(scorer, tiny_clip):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip / "open_clip_model.safetensors"))
    state = scorer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert len(scorer.record["weights_sha256"]) == 64


def test_a_weights_file_needs_its_architecture_named(tmp_path, tiny_clip):
    import shutil

    weights = tmp_path / "clip.safetensors"
    shutil.copy(tiny_clip / "open_clip_model.safetensors", weights)
    with pytest.raises(AnnotatorError, match=r"evals\.identity\.clip_model .*'ViT-L-14-quickgelu' for OpenAI's"):
        ClipScorer.load(weights, device="cpu")


def test_missing_weights_never_fall_back_to_random(tmp_path, tiny_clip):
    with pytest.raises(AnnotatorError, match="evals.identity.clip_path is not set"):
        ClipScorer.load(None, device="cpu")
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((tiny_clip / "open_clip_config.json").read_text())
    with pytest.raises(AnnotatorError, match="evals.identity.clip_path: cannot load open_clip model"):
        ClipScorer.load(folder, device="cpu")  # a config without weights
    (folder / "open_clip_model.bin").write_bytes(b"")  # present but empty: open_clip cannot load it
    with pytest.raises(AnnotatorError, match="evals.identity.clip_path: cannot load open_clip model"):
        ClipScorer.load(folder, device="cpu")
