"""Depth-Anything-V2 relative depth (paper §4: DepthAnything-v2 on 500K images).

What is stored: the network's relative *inverse* depth (disparity-like, large = near), min-max
normalised per image to 0..65535 in a 16-bit PNG, view meta ``{"kind": "relative-disparity",
"near": "high", "raw_min", "raw_max"}`` (the raw range recovers the network output). It is only
defined up to scale and shift, so nothing metric is claimed: no ``depth_scale``.

What the diffusion model sees: :func:`disparity_to_condition`, a per-image 2-98 % normalisation
of the disparity to [-1, 1] with near = +1 (bright) and far = -1 (dark), as DepthAnything's own
pictures and the released OneDiffusion's depth images (its examples, and what its weights
learned); ``onegen.shards.reader.depth_to_condition`` draws exact metric depth the same way, from
its inverse, so estimated and exact depth teach one convention. (Inverting an affine-invariant
disparity to depth is not well defined; the other way round is.) ``CONDITION_VERSION`` names the
convention: checkpoints record it, and those of version 1 (near = -1, linear in metric depth) are
still read as they were trained.

The network's input size is DA-V2's own ``infer_image``'s (its ``Resize`` with ``keep_aspect_ratio`` and
``resize_method='lower_bound'``): the shorter side brought to ``input_size``, both sides rounded to a
multiple of 14 and never below it. transformers' DPT processor instead scales by the factor closest to 1,
which for a photo smaller than ``input_size`` brings the *longer* side there (a 400x600 photo: 350x518
against DA-V2's 518x784, 2.2x fewer pixels). A long panorama runs large (1:10 at 518: 518x5180). The
resampling is the processor's (bicubic with antialiasing in, bicubic back to the image size; DA-V2 uses
OpenCV's cubic in and bilinear back), then ImageNet mean/std -- batched on the device. The pipeline's
inputs are square, where both sizes agree.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from onegen.annotators import batching
from onegen.annotators.base import (AnnotatorError, annotator_record, open_weights, require_path, resolve_device,
                                    weights_sha256)
from onegen.format import View
from onegen.pixels import tensor_to_pixels

if TYPE_CHECKING:
    from onegen.config import DepthAnnotatorConfig

KIND = "relative-disparity"
U16_MAX = 65535
CONDITION_VERSION = 2  # how depth is drawn for the model: 2 near bright, linear in disparity; 1 near dark, in depth
QUEUED_BATCHES = 2  # batches on the device ahead of the one being collected: enough to hide the host's share


def input_shape(height: int, width: int, size: int, multiple: int) -> tuple[int, int]:
    """Network input size for an image, as DA-V2's ``infer_image`` computes it (see the module docstring)."""
    scale = max(size / height, size / width)

    def side(n: int) -> int:
        rounded = round(scale * n / multiple) * multiple  # numpy's and Python's round: half to even, as DA-V2's
        return rounded if rounded >= size else math.ceil(scale * n / multiple) * multiple

    return side(height), side(width)


def to_uint16(disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BxHxW -> per-image min-max to 0..65535 (a constant map becomes zeros), with each min and max."""
    lo, hi = disparity.amin(dim=(1, 2)), disparity.amax(dim=(1, 2))
    span = torch.clamp(hi - lo, min=1e-12)[:, None, None]
    u = torch.round((disparity - lo[:, None, None]) / span * U16_MAX).clamp_(0, U16_MAX)
    return u.to(torch.uint16), lo, hi  # cast on the device: half the bytes of int32 to copy back


def stored_disparity(view: View) -> np.ndarray:
    """A stored depth view back to the network's relative disparity (float32, up to 16-bit rounding)."""
    lo, hi = view.meta["raw_min"], view.meta["raw_max"]
    return (view.data.astype(np.float32) / U16_MAX * (hi - lo) + lo).astype(np.float32)


def disparity_to_condition(disparity: np.ndarray, valid: np.ndarray | None = None) -> torch.Tensor:
    """Relative disparity (HxW, large = near) -> the 3xHxW [-1, 1] image the model sees: near = +1, the
    2-98 % range of the ``valid`` pixels (all by default) spread over [-1, 1]; other pixels are far (-1)."""
    d = disparity.astype(np.float32)
    ok = np.ones(d.shape, bool) if valid is None else np.asarray(valid, bool)
    if not ok.any():
        return -torch.ones(3, *d.shape)
    lo, hi = np.percentile(d[ok], [2, 98])
    x = np.where(ok, np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1), 0.0) * 2 - 1
    return torch.from_numpy(x.astype(np.float32))[None].expand(3, -1, -1).clone()


def condition_image(disparity: np.ndarray) -> np.ndarray:
    """The same conditioning as an 8-bit HxWx3 picture (for grids and inspection)."""
    return tensor_to_pixels(disparity_to_condition(disparity))


class DepthAnnotator:
    """Batched DA-V2: ``annotator(images) -> [View("depth", uint16 HxW, meta=...)]``."""

    name = "depth-anything-v2"
    version = "2"  # 2: DA-V2's lower-bound input size (1: transformers' scale closest to 1)

    def __init__(self, model, weights_sha256: str, device: torch.device, *, input_size: int = 518,
                 mean=batching.IMAGENET_MEAN, std=batching.IMAGENET_STD, batch_size: int = 16,
                 amp: batching.Amp = "bf16"):
        if model.config.depth_estimation_type != "relative":
            raise AnnotatorError(f"{self.name}: expected a relative-depth model, got "
                                 f"{model.config.depth_estimation_type!r} (the paper uses relative DA-V2)")
        self.model = model.eval().to(device)
        self.device = device
        self.input_size, self.batch_size, self.amp = input_size, batch_size, amp
        self.multiple = int(model.config.patch_size)
        self.mean, self.std = mean, std
        self.record = annotator_record(self.name, self.version, weights_sha256)

    @classmethod
    def load(cls, cfg: DepthAnnotatorConfig, device: str = "auto") -> DepthAnnotator:
        from transformers import DepthAnythingForDepthEstimation

        path = require_path("annotators.depth.path", cfg.path, "Depth-Anything-V2 folder")
        model = open_weights("annotators.depth.path", path,
                             lambda: DepthAnythingForDepthEstimation.from_pretrained(path, local_files_only=True))
        mean, std = batching.processor_stats(path)
        return cls(model, weights_sha256(path), resolve_device(device), input_size=cfg.input_size,
                   mean=mean, std=std, batch_size=cfg.batch_size, amp=cfg.amp)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] on the device -> normalised network input."""
        h, w = input_shape(x.shape[2], x.shape[3], self.input_size, self.multiple)
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return batching.normalize(x, self.mean, self.std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised input -> Bxhxw relative disparity (float32).

        The backbone runs under autocast; the DPT neck and head stay float32 because their last
        convolution *is* the stored map, and bf16's 8-bit mantissa would band a 16-bit PNG.
        """
        m = self.model
        with batching.autocast(self.device, self.amp):
            features = m.backbone.forward_with_filtered_kwargs(pixel_values).feature_maps
        ph, pw = pixel_values.shape[2] // self.multiple, pixel_values.shape[3] // self.multiple
        hidden = m.neck([f.float() for f in features], ph, pw)
        return m.head(hidden, ph, pw)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[View]:
        batching.check_images(images, self.name)
        out: list[View | None] = [None] * len(images)
        queued: deque[tuple[list[int], batching.HostCopy]] = deque()
        for idx in batching.shape_batches(images, self.batch_size):
            queued.append((idx, self._launch([images[i] for i in idx])))
            if len(queued) > QUEUED_BATCHES:
                self._collect(*queued.popleft(), out)
        while queued:
            self._collect(*queued.popleft(), out)
        return out

    def _launch(self, batch: list[np.ndarray]) -> batching.HostCopy:
        """One batch's device work, queued: upload, network, resize back, 16-bit, copy to the host."""
        h, w = batch[0].shape[:2]
        pred = self.forward(self.preprocess(batching.upload(batch, self.device)))
        pred = F.interpolate(pred[:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0]
        u, lo, hi = to_uint16(pred)
        return batching.HostCopy(u, torch.stack([lo, hi]))

    @staticmethod
    def _collect(idx: list[int], copy: batching.HostCopy, out: list) -> None:
        u, (lo, hi) = copy.wait()
        for k, i in enumerate(idx):
            out[i] = View("depth", u[k], role="condition",
                          meta={"kind": KIND, "near": "high", "raw_min": float(lo[k]), "raw_max": float(hi[k])})
