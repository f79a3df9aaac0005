"""GenEval's colour classifier: CLIP zero-shot over the object's mask-cut crop.

As the original: the image is composited over a flat #999 grey outside the object's mask (the
whole image when there is no mask), cropped to the object's box (PIL rounds the box to whole
pixels), preprocessed by the CLIP model's own evaluation transform, and scored against a
classifier of the 10 colours, each the renormalised mean of three prompt embeddings
("a photo of a {colour} {class}", "a photo of a {colour}-colored {class}", "a photo of a
{colour} object"). The colour is the argmax (the first of equal scores). On CUDA both the classifier and the
crops' logits are computed under float16 autocast, as GenEval's clip_benchmark calls (``amp=True``) compute
them: near-equal colours can flip with the precision.

Weights come from a local open_clip state dict (``evals.geneval.clip_path``); GenEval uses
OpenAI's ViT-L-14, whose QuickGELU activations need the ``ViT-L-14-quickgelu`` architecture
when its weights are given as a file.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evals.geneval.rules import COLORS
from onegen.annotators.base import require_path, resolve_device, weights_sha256

BACKGROUND = (153, 153, 153)  # "#999"
TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")


def masked_crop(image: np.ndarray, box, mask: np.ndarray | None) -> Image.Image:
    """The object as CLIP sees it: ``image`` (HxWx3 uint8) outside ``mask`` set to #999, cropped to ``box``."""
    pil = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape[:2]}")
        pil = Image.composite(pil, Image.new("RGB", pil.size, BACKGROUND), Image.fromarray(mask))
    return pil.crop(tuple(float(v) for v in box[:4]))


class ColorClassifier:
    """``classifier(image, objects, name) -> colours``: one of ``COLORS`` per ``(box, mask)`` object."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, device: torch.device, weights: str):
        self.model, self.preprocess, self.tokenizer, self.device = model.eval(), preprocess, tokenizer, device
        self.weights_sha256 = weights
        self._text: dict[str, torch.Tensor] = {}  # class name -> (dim, 10) classifier

    @classmethod
    def load(cls, path: Path | None, arch: str = "ViT-L-14-quickgelu", device: str = "auto",
             key: str = "evals.geneval.clip_path") -> "ColorClassifier":
        import open_clip

        path = require_path(key, path, "open_clip checkpoint")
        dev = resolve_device(device)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=dev)
        return cls(model, preprocess, open_clip.get_tokenizer(arch), dev, weights_sha256(path))

    def _amp(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()

    def _classifier(self, name: str) -> torch.Tensor:
        if name not in self._text:
            columns = []
            with self._amp():
                for color in COLORS:
                    tokens = self.tokenizer([t.format(color=color, name=name) for t in TEMPLATES]).to(self.device)
                    e = F.normalize(self.model.encode_text(tokens), dim=-1).mean(0)
                    columns.append(e / e.norm())
            self._text[name] = torch.stack(columns, 1)
        return self._text[name]

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, objects: list[tuple], name: str) -> list[str]:
        if not objects:
            return []
        crops = torch.stack([self.preprocess(masked_crop(image, box, mask)) for box, mask in objects])
        classifier = self._classifier(name)
        with self._amp():
            feats = F.normalize(self.model.encode_image(crops.to(self.device)), dim=-1)
            logits = 100.0 * feats @ classifier
        return [COLORS[i] for i in logits.argmax(1).tolist()]


class WorldColorClassifier:
    """The procedural world's colours, without CLIP: nearest palette colour (in CIELAB) to the
    median pixel under the object's mask, each palette colour taken at every brightness the
    world's shading gives it (ambient to full sun). Replaces CLIP only in the world edition,
    whose colours are a fixed, known palette; same call as ``ColorClassifier``."""

    SHADING = np.linspace(0.2, 1.15, 20)  # the renderer's surface factor: metal ambient .. rubber in full sun

    def __init__(self, palette: dict[str, tuple[int, int, int]]):
        if tuple(palette) != COLORS:
            raise ValueError(f"palette must name GenEval's colours in order {COLORS}, got {tuple(palette)}")
        rgb = np.array(list(palette.values()), np.float64)
        shaded = np.clip(self.SHADING[:, None, None] * rgb[None], 0, 255)  # (shades, colours, 3)
        self._lab = _lab(shaded.reshape(-1, 3)).reshape(len(self.SHADING), len(COLORS), 3)
        self.weights_sha256 = None

    def __call__(self, image: np.ndarray, objects: list[tuple], name: str) -> list[str]:
        out = []
        for box, mask in objects:
            if mask is not None and np.asarray(mask).any():
                pixels = image[np.asarray(mask, dtype=bool)]
            else:  # no mask: the box's pixels
                x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
                pixels = image[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)].reshape(-1, 3)
            if not len(pixels):
                raise ValueError(f"{name}: object at {list(box)} covers no pixel of the image")
            d = ((self._lab - _lab(np.median(pixels, axis=0)[None])[0]) ** 2).sum(-1).min(0)
            out.append(COLORS[int(d.argmin())])
        return out


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in 0..255 -> CIELAB (OpenCV's 8-bit scaling, float)."""
    import cv2

    u8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(-1, 1, 3)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
