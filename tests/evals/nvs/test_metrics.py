"""NVS image metrics: PSNR against cv2.PSNR, SSIM, white compositing, LPIPS from a local file."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchmetrics.functional.image.lpips import _NoTrainLpips

from evals.nvs import metrics


def _random_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# torchvision AlexNet's conv layers: features.<index> -> (out, in, kernel)
_ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def save_lpips_weights(path: Path, seed: int = 0) -> Path:
    """A weights file in the documented layout with seeded random tensors."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (out, inp, k) in _ALEX_CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(out, inp, k, k, generator=g) * (2 / (inp * k * k)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(out)
    for k, c in enumerate((64, 192, 384, 256, 256)):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
    state["classifier.1.weight"] = torch.zeros(4, 4)  # left in an unmodified torchvision file; ignored
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    return save_lpips_weights(tmp_path_factory.mktemp("lpips") / "alex_lpips.pt")


@pytest.fixture(scope="module")
def lpips(lpips_weights) -> metrics.LPIPSAlex:
    return metrics.LPIPSAlex(lpips_weights)


def test_psnr_matches_cv2_on_random_images():
    for seed in range(5):
        a, b = _random_image(seed, 17), _random_image(seed + 100, 17)
        assert metrics.psnr_uint8(a, b) == pytest.approx(cv2.PSNR(a, b), rel=1e-12)


def test_psnr_off_by_one_everywhere_is_48_13_db():
    a = _random_image(1).clip(0, 254)
    assert metrics.psnr_uint8(a + 1, a) == pytest.approx(20 * math.log10(255), abs=1e-9)
    assert metrics.psnr_uint8(a + 1, a) == pytest.approx(48.13, abs=0.005)


def test_psnr_identical_images_match_opencv_constant():
    a = _random_image(2)
    assert metrics.psnr_uint8(a, a) == cv2.PSNR(a, a) == pytest.approx(361.20199909921956, rel=1e-15)


def test_ssim_identical_is_one_and_different_is_less():
    a, b = _random_image(3), _random_image(4)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(a, b) < 0.1


def _ssim_7x7_uniform(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out from Wang et al. with a 7x7 box window and sample covariance, per channel, borders cut."""
    from scipy.ndimage import uniform_filter

    c1, c2, n = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 49
    values = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = uniform_filter(x, 7), uniform_filter(y, 7)
        vx = (uniform_filter(x * x, 7) - mx * mx) * n / (n - 1)
        vy = (uniform_filter(y * y, 7) - my * my) * n / (n - 1)
        cxy = (uniform_filter(x * y, 7) - mx * my) * n / (n - 1)
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(s[3:-3, 3:-3].mean())
    return float(np.mean(values))


def test_ssim_is_eschernets_7x7_uniform_window_on_uint8():
    # EscherNet scores GSO with skimage's structural_similarity(pred, gt, channel_axis=2) on uint8
    yy, xx = np.mgrid[0:64, 0:64]
    a = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)  # smooth ramps, as rendered images are
    b = np.clip(a.astype(np.int16) + np.random.default_rng(7).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, b) == pytest.approx(_ssim_7x7_uniform(a, b), abs=1e-9)
    # the gaussian 11x11 SSIM on [0, 1] is another number on the same pair
    from torchmetrics.functional.image import structural_similarity_index_measure

    gaussian = float(structural_similarity_index_measure(metrics._to_tensor(a), metrics._to_tensor(b), data_range=1.0))
    assert abs(gaussian - metrics.ssim(a, b)) > 0.05


def test_metrics_refuse_bad_shapes_and_dtypes():
    a = _random_image(5)
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.psnr_uint8(a, a[:-1])
    with pytest.raises(ValueError, match="uint8"):
        metrics.ssim(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="HxWx3"):
        metrics.psnr_uint8(a[..., 0], a[..., 0])


def test_white_background_composites_over_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 50, 64]]], dtype=np.uint8)
    out = metrics.white_background(rgba)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[0, 2].tolist() == [127, 127, 127]  # 255·127/255
    expected = np.round(np.array([200, 100, 50]) * 64 / 255 + 255 * (1 - 64 / 255))
    assert out[0, 3].tolist() == expected.astype(int).tolist()
    with pytest.raises(ValueError, match="HxWx4"):
        metrics.white_background(rgba[..., :3])


def test_lpips_zero_for_identical_positive_and_symmetric(lpips):
    a, b = _random_image(6, 64), _random_image(7, 64)
    assert lpips(a, a) == pytest.approx(0.0, abs=1e-7)
    d_ab, d_ba = lpips(a, b), lpips(b, a)
    assert isinstance(d_ab, float) and d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-5)
    assert lpips(a[:48, :40], b[:48, :40]) > 0  # any size, not only square
    with pytest.raises(ValueError, match="shape mismatch"):
        lpips(a, b[:32])


def test_lpips_loads_every_weight_from_the_file(lpips, lpips_weights):
    """Same numbers as torchmetrics' module given the same weights, so nothing was left random."""
    state = torch.load(lpips_weights, weights_only=True)
    reference = _NoTrainLpips(pretrained=False, net="alex", pnet_rand=True)
    slice_of_conv = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    mapped = {f"net.slice{s}.{i}.{p}": state[f"features.{i}.{p}"]
              for i, s in slice_of_conv.items() for p in ("weight", "bias")}
    for k in range(5):
        mapped[f"lin{k}.model.1.weight"] = mapped[f"lins.{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"]
    reference.load_state_dict(mapped)
    a, b = _random_image(8, 64), _random_image(9, 64)
    a_t, b_t = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 for x in (a, b))
    expected = float(reference(a_t, b_t, normalize=True).squeeze())
    assert lpips(a, b) == pytest.approx(expected, rel=1e-6)


def test_lpips_missing_file_names_path_and_params_key(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as info:
        metrics.LPIPSAlex(missing)
    message = str(info.value)
    assert str(missing) in message and "evals.lpips_weights" in message and "\n" not in message


def test_lpips_wrong_or_corrupt_file_is_one_line_error(tmp_path, lpips_weights):
    state = torch.load(lpips_weights, weights_only=True)
    del state["lin3.model.1.weight"]
    incomplete = tmp_path / "incomplete.pt"
    torch.save(state, incomplete)
    with pytest.raises(ValueError, match="lin3.model.1.weight"):
        metrics.LPIPSAlex(incomplete)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable") as info:
        metrics.LPIPSAlex(corrupt)
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)


def test_assemble_lpips_weights_keeps_only_the_documented_keys(tmp_path, lpips, lpips_weights):
    state = torch.load(lpips_weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("lin")}, tmp_path / "alexnet.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "alex.pth")
    out = metrics.assemble_lpips_weights(tmp_path / "alexnet.pth", tmp_path / "alex.pth", tmp_path / "lpips.pt")
    assert sorted(torch.load(out, weights_only=True)) == sorted(metrics.LPIPS_FILE_KEYS)
    a, b = _random_image(10, 32), _random_image(11, 32)
    assert metrics.LPIPSAlex(out)(a, b) == pytest.approx(lpips(a, b), rel=1e-6)
