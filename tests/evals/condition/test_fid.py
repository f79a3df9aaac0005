import numpy as np
import pytest
import torch

from evals.condition.fid import InceptionFeatures, decode_features, encode_features, frechet_distance
from onegen.annotators.base import AnnotatorError


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=1e-6)  # |d mu|^2
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 with unbiased variances 2 and 8: 9 + (sqrt2 - sqrt8)^2 = 11.
    assert frechet_distance(np.array([[-1.0], [1.0]]), np.array([[1.0], [5.0]])) == pytest.approx(11.0, abs=1e-9)


def test_frechet_distance_below_the_feature_dimension():
    rng = np.random.default_rng(2)
    few = rng.standard_normal((3, 2048))  # FID-sized features, fewer images than dimensions
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(few, few + 0.5) == pytest.approx(0.25 * 2048)


class _Identity(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


@pytest.mark.parametrize(("n", "m", "d"), [(5, 7, 8), (60, 40, 8)])  # both ways of taking the trace term
def test_frechet_distance_equals_torchmetrics(n, m, d):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(n)
    real = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    fake = 2 * rng.standard_normal((m, d)) + 1
    metric = FrechetInceptionDistance(feature=_Identity(d))  # the metric on the same features
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-7)


def test_frechet_distance_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_features_round_trip_through_text_exactly():
    x = np.random.default_rng(1).standard_normal(2048).astype(np.float32)
    np.testing.assert_array_equal(decode_features(encode_features(x)), x)


def test_loads_the_inception_from_a_local_state_dict(inception_path):
    f = InceptionFeatures.load(inception_path, device="cpu")
    saved = torch.load(inception_path, weights_only=True)
    state = f.inception.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert len(f.record["weights_sha256"]) == 64
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
              rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    feats = f(images)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(f(images[:1])[0], feats[0], rtol=1e-4, atol=1e-12)  # batch-independent
    assert not np.allclose(feats[0], feats[2], rtol=1e-3, atol=0)  # features of a random network are ~1e-8


def test_resizes_to_299_as_tensorflow_1_did_without_antialiasing(inception_path):
    """The original FID's resize reads every second pixel of a 598² image: a 299² image upsampled by pixel doubling
    gives its own features back. An antialiased resize would blend neighbouring pixels, features moving with them."""
    f = InceptionFeatures.load(inception_path, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    doubled = image.repeat(2, axis=0).repeat(2, axis=1)
    small, large = f([image, doubled])
    np.testing.assert_allclose(large, small, rtol=1e-4, atol=0)
    assert f.record["version"] == "2"


def test_bad_weights_name_the_params_key(tmp_path, random_fid_inception):
    with pytest.raises(AnnotatorError, match="evals.condition.inception_path is not set"):
        InceptionFeatures.load(None)
    with pytest.raises(AnnotatorError, match="evals.condition.inception_path: .* not found"):
        InceptionFeatures.load(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(AnnotatorError, match="does not fit the FID Inception network"):
        InceptionFeatures.load(wrong)
    pickled = tmp_path / "object.pth"
    torch.save(random_fid_inception.__new__(random_fid_inception), pickled)  # a pickled module, not a state dict
    with pytest.raises(AnnotatorError, match="not a plain state dict"):
        InceptionFeatures.load(pickled)
