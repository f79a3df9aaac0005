"""Edge maps (paper §4): Canny with seeded random thresholds, and HED from a checkpoint.

``Canny`` wraps ``degrade.canny``; each image's thresholds are drawn from its own seed (the
item seed, or a hash of its pixels when none is given), so results never depend on batching,
and the thresholds land in the view meta.

``HED`` is the network of ControlNet's HED annotator (Apache-2 re-implementation of Xie & Tu's
holistically-nested edge detection): five VGG stages (2, 2, 3, 3, 3 convolutions of 64..512
channels, max-pooling between stages), each with a 1x1 side output, fused by a 1x1 convolution.
ControlNet's checkpoint (``ControlNetHED.pth``: ``norm``, ``block{1..5}.convs.*``,
``block{1..5}.projection``) has no fusion weights -- its annotator averages the side outputs --
so a missing ``fuse`` loads as that average. Input is RGB in 0..255 minus the learned ``norm``;
the edge map is the sigmoid of the fused side outputs, as 8-bit.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onegen.annotators import batching, degrade
from onegen.annotators.base import AnnotatorError, annotator_record, require_path, resolve_device, weights_sha256
from onegen.format import View

if TYPE_CHECKING:
    from onegen.config import EdgesConfig


class Canny:
    """``canny(images, seeds=None) -> [View("canny", uint8 HxW, meta={op, low, high, seed})]``."""

    name = "opencv-canny"

    def __init__(self, low: tuple[int, int] = (50, 150), high: tuple[int, int] = (150, 250)):
        import cv2

        self.low, self.high = low, high
        self.record = annotator_record(self.name, f"{cv2.__version__}/{degrade.CANNY_VERSION}", None)

    @classmethod
    def load(cls, cfg: EdgesConfig, device: str = "auto") -> Canny:
        return cls(tuple(cfg.canny_low), tuple(cfg.canny_high))

    def __call__(self, images: list[np.ndarray], seeds: list[int] | None = None) -> list[View]:
        batching.check_images(images, self.name)
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"{self.name}: {len(seeds)} seeds for {len(images)} images")
        out = []
        for i, img in enumerate(images):
            seed = int(seeds[i]) if seeds is not None else zlib.crc32(np.ascontiguousarray(img).data)
            rng = np.random.default_rng(seed)
            low = int(rng.integers(self.low[0], self.low[1] + 1))
            high = int(rng.integers(max(low, self.high[0]), self.high[1] + 1))
            edges, meta = degrade.canny(img, low, high)
            out.append(View("canny", edges, role="condition", meta={**meta, "seed": seed}))
        return out


class _Stage(nn.Module):
    """``n`` 3x3 conv + ReLU layers and the stage's 1x1 side output."""

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(n)])
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNet(nn.Module):
    """RGB 0..255 (Bx3xHxW) -> edge logits (Bx1xHxW): side outputs upsampled and fused."""

    STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (cin, cout, n) in enumerate(self.STAGES, start=1):
            self.add_module(f"block{i}", _Stage(cin, cout, n))
        self.fuse = nn.Conv2d(len(self.STAGES), 1, 1)
        nn.init.constant_(self.fuse.weight, 1 / len(self.STAGES))
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, h, sides = x.shape[2:], x - self.norm, []
        for i in range(1, len(self.STAGES) + 1):
            if i > 1:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h, side = getattr(self, f"block{i}")(h)
            sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(sides, dim=1))

    def load_checkpoint(self, state: dict) -> None:
        """Strict load, except that a checkpoint without ``fuse`` keeps the averaging fusion."""
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise AnnotatorError(f"HED checkpoint does not match the network: {str(e).splitlines()[-1].strip()}") from e
        missing = [k for k in missing if not k.startswith("fuse.")]
        if missing or unexpected:
            raise AnnotatorError(f"HED checkpoint does not match the network: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}")


class HED:
    """``hed(images) -> [View("hed", uint8 HxW)]``; runs at ``size`` on the short side, as ControlNet."""

    name = "hed"
    version = "1"

    def __init__(self, net: HEDNet, weights_sha256: str, device: torch.device, *, size: int = 512,
                 batch_size: int = 8, amp: batching.Amp = "bf16"):
        self.net = net.eval().to(device)
        self.device, self.size, self.batch_size, self.amp = device, size, batch_size, amp
        self.record = annotator_record(self.name, self.version, weights_sha256)

    @classmethod
    def load(cls, cfg: EdgesConfig, device: str = "auto") -> HED:
        path = require_path("annotators.edges.hed_path", cfg.hed_path, "HED checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- any unpickling failure is an unusable checkpoint
            raise AnnotatorError(f"annotators.edges.hed_path: cannot read {path} ({type(e).__name__}: {e})") from e
        if not isinstance(state, dict):
            raise AnnotatorError(f"annotators.edges.hed_path: {path} holds a {type(state).__name__}, not a state dict")
        net = HEDNet()
        net.load_checkpoint(state.get("state_dict", state))
        return cls(net, weights_sha256(path), resolve_device(device), size=cfg.hed_size,
                   batch_size=cfg.batch_size, amp=cfg.amp)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.size / min(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    def edges(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> BxHxW edge probability at the input size."""
        h, w = x.shape[2:]
        nh, nw = self.network_size(h, w)
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False) if (nh, nw) != (h, w) else x
        with batching.autocast(self.device, self.amp):
            logits = self.net(y * 255.0)
        prob = torch.sigmoid(logits.float())
        if (nh, nw) != (h, w):
            prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return prob[:, 0]

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[View]:
        batching.check_images(images, self.name)
        out: list[View | None] = [None] * len(images)
        for idx in batching.shape_batches(images, self.batch_size):
            prob = self.edges(batching.upload([images[i] for i in idx], self.device))
            maps = (prob * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            for k, i in enumerate(idx):
                out[i] = View("hed", maps[k], role="condition", meta={"op": "hed", "size": self.size})
        return out
