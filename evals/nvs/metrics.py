"""Image metrics for novel-view synthesis: PSNR, SSIM and LPIPS on uint8 RGB images (numpy in, float out).

All three take ``pred`` and ``target`` as HxWx3 uint8 arrays of one shape. PSNR and LPIPS are the
ones the published GSO numbers were computed with (EscherNet's ``metrics/eval_2D_NVS.py``):

- PSNR is OpenCV's ``cv2.PSNR`` on uint8 (peak 255, MSE over all pixels and channels);
- SSIM is scikit-image's ``structural_similarity`` on the uint8 images with ``channel_axis=2``:
  its defaults, a 7x7 uniform window with the sample covariance, data range 255, the mean over
  pixels and channels. That is EscherNet's call, so our SSIM reads against its table; the gaussian
  11x11 SSIM (torchmetrics' default) is another number: 0.467 against 0.540 on the test's noisy ramp,
  0.579 against 0.519 for `world_nvs`'s copy-the-input baseline.
  OneDiffusion's Table 2 prints PSNR only;
- LPIPS is v0.1 with the AlexNet backbone (what ``lpips.LPIPS(net="alex")`` computes), built offline
  from one local state-dict file, see :class:`LPIPSAlex`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image.lpips import _NoTrainLpips

from onegen.annotators.base import annotator_record, weights_sha256
from onegen.hub_cache import resolve_model_path

PEAK = 255.0
# cv2.PSNR adds DBL_EPSILON to the RMSE, which is what makes identical images 361.20 dB rather than inf.
_DBL_EPSILON = sys.float_info.epsilon

LPIPS_PARAMS_KEY = "evals.lpips_weights"


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"{name}: expected an HxWx3 uint8 array, got "
                             f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}".rstrip())
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, target {target.shape}")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div_(255.0)  # a writable copy


def psnr_uint8(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB exactly as ``cv2.PSNR(pred, target)``: 20·log10(255 / (RMSE + DBL_EPSILON)).

    Identical images give 361.20199909921956, not infinity, as in OpenCV.
    """
    _check_pair(pred, target)
    diff = pred.astype(np.int64) - target.astype(np.int64)
    # The squared error is summed exactly in integers, as OpenCV's NORM_L2SQR does for 8-bit input.
    mse = float(np.sum(diff * diff)) / diff.size
    return 20.0 * math.log10(PEAK / (math.sqrt(mse) + _DBL_EPSILON))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM over pixels and channels as EscherNet scores GSO: scikit-image's defaults on uint8.

    The 7x7 uniform window with sample covariance, K1 0.01, K2 0.03 and data range 255 are passed
    explicitly, so a change of scikit-image's defaults cannot move the number.
    """
    _check_pair(pred, target)
    return float(structural_similarity(pred, target, channel_axis=2, data_range=255, win_size=7,
                                       gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03))


def white_background(rgba: np.ndarray) -> np.ndarray:
    """Composite a straight-alpha HxWx4 uint8 image over white ("over" operator), rounded to uint8 RGB."""
    if not isinstance(rgba, np.ndarray) or rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an HxWx4 uint8 array, got {getattr(rgba, 'shape', type(rgba).__name__)}")
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    # rgb·a/255 + 255·(1 - a/255), in integers with round-half-up so the result is exact.
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


# --- LPIPS -------------------------------------------------------------------------------------------------

# torchvision AlexNet ``features`` conv layers, as split into LPIPS's five slices (torchmetrics' ``Alexnet``).
_ALEX_SLICE_OF_CONV = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
_LPIPS_LAYERS = 5
_IGNORED_KEYS = re.compile(r"classifier\.")  # AlexNet's fully connected head, unused by LPIPS


LPIPS_FILE_KEYS: tuple[str, ...] = (
    *(f"features.{i}.{p}" for i in _ALEX_SLICE_OF_CONV for p in ("weight", "bias")),
    *(f"lin{k}.model.1.weight" for k in range(_LPIPS_LAYERS)),
)


def _module_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's tensors under the key names of torchmetrics' ``_LPIPS`` module."""
    out = {}
    for conv, slice_ in _ALEX_SLICE_OF_CONV.items():
        for p in ("weight", "bias"):
            out[f"net.slice{slice_}.{conv}.{p}"] = state[f"features.{conv}.{p}"]
    for k in range(_LPIPS_LAYERS):
        # The module registers each head twice, as lin{k} and as lins.{k}; both are the same tensor.
        out[f"lin{k}.model.1.weight"] = out[f"lins.{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"]
    return out


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load and safetensors raise many types for a damaged file
        raise ValueError(f"{path}: unreadable {what} ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors ({what})")
    return state


class LPIPSAlex:
    """LPIPS v0.1 (AlexNet backbone) with every weight from one local file; nothing is downloaded.

    The file (``torch.save`` of a flat dict, read with ``weights_only=True``, or ``.safetensors``) holds:

    - ``features.{0,3,6,8,10}.{weight,bias}``: the five conv layers of torchvision's ImageNet AlexNet,
      named as in torchvision's ``alexnet-owt-7be5be79.pth`` (its ``classifier.*`` keys may stay in
      the file and are ignored);
    - ``lin{0..4}.model.1.weight``: LPIPS's linear heads, shapes (1, C, 1, 1) with C = 64, 192, 384,
      256, 256, named as in LPIPS's ``weights/v0.1/alex.pth`` (torchmetrics ships the same file as
      ``torchmetrics/functional/image/lpips_models/alex.pth``).

    :func:`assemble_lpips_weights` writes such a file from those two. torchmetrics' own LPIPS class
    would fetch the backbone through torchvision (``pretrained=True``), so the module is built with
    random weights (``pnet_rand=True, pretrained=False``) and this state dict is loaded strictly.
    """

    def __init__(self, weights_path: str | os.PathLike[str], device: str | torch.device = "cpu"):
        path = Path(resolve_model_path(weights_path, LPIPS_PARAMS_KEY))
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights not found: {path} (set {LPIPS_PARAMS_KEY} to a local "
                                    "AlexNet+LPIPS state-dict file, see evals.nvs.metrics.LPIPSAlex)")
        state = _read_state_dict(path, "LPIPS weights")
        unexpected = sorted(k for k in state if k not in LPIPS_FILE_KEYS and not _IGNORED_KEYS.match(k))
        missing = [k for k in LPIPS_FILE_KEYS if k not in state]
        if missing or unexpected:
            raise ValueError(f"{path}: not an AlexNet+LPIPS state dict (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}); see evals.nvs.metrics.LPIPSAlex")
        self._net = _NoTrainLpips(pretrained=False, net="alex", pnet_rand=True)
        own = self._net.state_dict()
        loaded = _module_state(state)
        for key, tensor in loaded.items():
            if tensor.shape != own[key].shape:
                raise ValueError(f"{path}: tensor for {key} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(own[key].shape)}")
        self._net.load_state_dict({k: v.float() for k, v in loaded.items()}, strict=True)
        self.record = annotator_record("lpips-alex", "0.1", weights_sha256(path))
        self.device = torch.device(device)
        self._net.to(self.device)

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        """LPIPS distance between two HxWx3 uint8 images (0 for identical images, symmetric)."""
        _check_pair(pred, target)
        with torch.inference_mode():
            value = self._net(_to_tensor(pred).to(self.device), _to_tensor(target).to(self.device), normalize=True)
        return float(value.squeeze())


def assemble_lpips_weights(alexnet_path: str | os.PathLike[str], lpips_lin_path: str | os.PathLike[str],
                           out_path: str | os.PathLike[str]) -> Path:
    """Write the single file :class:`LPIPSAlex` reads from torchvision's AlexNet and LPIPS's alex.pth."""
    backbone = _read_state_dict(Path(alexnet_path), "torchvision AlexNet weights")
    heads = _read_state_dict(Path(lpips_lin_path), "LPIPS linear-layer weights")
    merged = {**backbone, **heads}
    missing = [k for k in LPIPS_FILE_KEYS if k not in merged]
    if missing:
        raise ValueError(f"{alexnet_path} + {lpips_lin_path}: missing {missing[:4]}")
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({k: merged[k].float().contiguous() for k in LPIPS_FILE_KEYS}, tmp)
    os.replace(tmp, out)  # atomic: a killed run never leaves a half-written weights file
    return out
