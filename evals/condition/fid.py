"""FID (UniCon Table 1: FID-6K against the real images whose conditions were used).

Features are the 2048-d pool3 activations of the FID Inception network (torch-fidelity's
``FeatureExtractorInceptionV3`` inside torchmetrics' ``FrechetInceptionDistance``: uint8 input,
bilinear resize to 299 as TensorFlow 1 resized, without antialiasing), weights from a local file.
The resize is the original FID's (TTUR, and torch-fidelity and pytorch-fid after it): torchmetrics'
default antialiased resize gives other features from the same image (a 512² image's 299² input
differs by ~3/255 a pixel), so its FID would not be the number FID tables print. Each item's features are
stored with its scores, so a resumed evaluation scores exactly as an uninterrupted one; the
distance ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` is computed from them at the end.

torch-fidelity unpickles the weights with ``weights_only=False``; the file is first loaded
with ``weights_only=True``, so anything but a plain state dict is refused before that.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch

from onegen.annotators.base import AnnotatorError, annotator_record, require_path, resolve_device, weights_sha256

KEY = "evals.condition.inception_path"
FEATURES = 2048


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N x D and M x D, N, M >= 2), in float64.

    The trace of the covariances' geometric mean, Tr((S_r S_f)^(1/2)), is computed exactly but
    without a D x D eigendecomposition of a non-symmetric product (torchmetrics' way: ~1 CPU-minute
    at D = 2048): from the singular values of the N x M cross product of the centred features when
    a set is smaller than D, else from symmetric eigendecompositions (S_r^(1/2) S_f S_r^(1/2)).
    Tests check it equals torchmetrics' ``FrechetInceptionDistance`` on the same features.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be N x D with equal D, got {real.shape} and {fake.shape}")
    (n, d), m = real.shape, len(fake)
    if n < 2 or m < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n} real and {m} generated")
    a, b = real - real.mean(0), fake - fake.mean(0)
    if min(n, m) <= d:
        # eig(S_r S_f) = eig(A^T A B^T B) / c share their non-zero part with (A B^T)(A B^T)^T / c.
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    else:
        w, v = np.linalg.eigh(a.T @ a / (n - 1))
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ (b.T @ b / (m - 1)) @ root), 0, None)).sum()
    shift = real.mean(0) - fake.mean(0)
    return float(shift @ shift + (a * a).sum() / (n - 1) + (b * b).sum() / (m - 1) - 2 * cross)


def encode_features(x: np.ndarray) -> str:
    """A feature vector as compact text (base64 of float32) for a per-item JSON cache."""
    return base64.b64encode(np.asarray(x, "<f4").tobytes()).decode("ascii")


def decode_features(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float64)


class InceptionFeatures:
    """Images (HxWx3 uint8, any sizes) -> FID pool3 features (N x 2048 float32)."""

    def __init__(self, metric, device: torch.device, record: dict):
        self.inception, self.device, self.record = metric.inception.to(device), device, record

    @classmethod
    def load(cls, path: Path | None, device: str = "auto") -> "InceptionFeatures":
        from torchmetrics.image.fid import FrechetInceptionDistance

        path = require_path(KEY, path, "FID Inception weights (torch-fidelity pt_inception-2015-12-05 state dict)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- any unpickling failure is "not a plain state dict"
            raise AnnotatorError(f"{KEY}: {path} is not a plain state dict ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(state, dict):
            raise AnnotatorError(f"{KEY}: {path} holds a {type(state).__name__}, expected a state dict")
        try:
            metric = FrechetInceptionDistance(feature=FEATURES, feature_extractor_weights_path=str(path), antialias=False)
        except RuntimeError as e:  # load_state_dict: missing / unexpected / mis-shaped keys
            raise AnnotatorError(f"{KEY}: {path} does not fit the FID Inception network "
                                 f"({' '.join(str(e).split())[:300]})") from None
        return cls(metric, resolve_device(device), annotator_record("fid-inception-v3", "2", weights_sha256(path)))

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), FEATURES), np.float32)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
                raise ValueError(f"FID features: image {i} must be HxWx3 uint8")
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            x = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2).contiguous().to(self.device)
            out[idx] = self.inception(x).float().cpu().numpy()
        return out
