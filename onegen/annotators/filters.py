"""CLIP filters for the ID and text-to-image sources (paper §4): NSFW and quality, zero-shot.

open_clip image embeddings are compared with fixed text prompts (below; change them and bump
``ClipFilter.version``):

* NSFW score = softmax probability mass, at CLIP's logit scale, of the unsafe prompts among all
  NSFW prompts;
* quality score = mean over antonym pairs of p(positive | pair), the CLIP-IQA recipe.

An image is dropped when ``nsfw >= nsfw_threshold`` or ``quality < min_quality``, with the reason.
Zero-shot CLIP is a coarse screen, not a trained NSFW classifier: thresholds are in params so a
data team can calibrate them on a labelled sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from onegen.annotators import batching
from onegen.annotators.base import AnnotatorError, annotator_record, require_path, resolve_device, weights_sha256

if TYPE_CHECKING:
    from onegen.config import FiltersConfig

UNSAFE_PROMPTS = ("a photo containing nudity", "an explicit sexual photo", "a pornographic image",
                  "a photo of graphic violence and gore")
SAFE_PROMPTS = ("a safe-for-work photo", "an ordinary photo of everyday life", "a photo of people wearing clothes",
                "a photo of an object, an animal or a landscape")
QUALITY_PAIRS = (("a high quality photo", "a low quality photo"), ("a sharp photo", "a blurry photo"),
                 ("a well exposed photo", "a badly exposed photo"),
                 ("a clean photo", "a noisy photo with compression artifacts"))


@dataclass
class FilterVerdict:
    nsfw: float  # in [0, 1]
    quality: float  # in [0, 1]
    keep: bool
    reason: str  # "" when kept

    def to_json(self) -> dict:
        return asdict(self)


def zero_shot_scores(image: torch.Tensor, nsfw_text: torch.Tensor, quality_text: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image embeddings (BxD) against unit prompt embeddings -> (nsfw, quality), each B.

    ``nsfw_text`` holds the unsafe prompts first (len(UNSAFE_PROMPTS)), then the safe ones;
    ``quality_text`` is Px2xD (positive, negative) per antonym pair.
    """
    p = (scale * image @ nsfw_text.T).softmax(dim=-1)
    nsfw = p[:, : len(UNSAFE_PROMPTS)].sum(dim=-1)
    q = (scale * torch.einsum("bd,pkd->bpk", image, quality_text)).softmax(dim=-1)
    return nsfw, q[..., 0].mean(dim=-1)


def judge(nsfw: float, quality: float, nsfw_threshold: float, min_quality: float) -> tuple[bool, str]:
    if nsfw >= nsfw_threshold:
        return False, f"nsfw {nsfw:.3f} >= {nsfw_threshold}"
    if quality < min_quality:
        return False, f"quality {quality:.3f} < {min_quality}"
    return True, ""


class ClipFilter:
    """``clip_filter(images) -> [FilterVerdict]``."""

    name = "clip-filter"
    version = "1"

    def __init__(self, model, tokenizer, weights_sha256: str, device: torch.device, *, nsfw_threshold: float = 0.5,
                 min_quality: float = 0.3, batch_size: int = 64, amp: batching.Amp = "bf16"):
        self.model = model.eval().to(device)
        self.device, self.batch_size, self.amp = device, batch_size, amp
        self.nsfw_threshold, self.min_quality = nsfw_threshold, min_quality
        pp = model.visual.preprocess_cfg
        if pp.get("resize_mode", "shortest") not in ("shortest", "squash"):
            raise AnnotatorError(f"{self.name}: resize mode {pp['resize_mode']!r} is not supported")
        size = pp["size"]
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.squash = pp.get("resize_mode") == "squash"
        self.mean, self.std = tuple(pp["mean"]), tuple(pp["std"])
        with torch.inference_mode():
            nsfw = self._text(tokenizer, UNSAFE_PROMPTS + SAFE_PROMPTS)
            quality = self._text(tokenizer, [t for pair in QUALITY_PAIRS for t in pair])
        self.nsfw_text, self.quality_text = nsfw, quality.view(len(QUALITY_PAIRS), 2, -1)
        self.scale = float(model.logit_scale.detach().exp())
        self.record = annotator_record(self.name, self.version, weights_sha256)

    @classmethod
    def load(cls, cfg: FiltersConfig, device: str = "auto") -> ClipFilter:
        import open_clip

        path = require_path("annotators.filters.clip_path", cfg.clip_path, "open_clip checkpoint file")
        if not path.is_file():
            raise AnnotatorError(f"annotators.filters.clip_path: {path} is not a checkpoint file")
        try:
            model = open_clip.create_model(cfg.clip_model, pretrained=str(path), precision="fp32")
        except Exception as e:  # noqa: BLE001 -- unknown architecture, or weights that do not fit it
            first = (str(e).splitlines() or [""])[0]
            raise AnnotatorError(f"annotators.filters: cannot build {cfg.clip_model!r} from {path} "
                                 f"({type(e).__name__}: {first})") from e
        return cls(model, open_clip.get_tokenizer(cfg.clip_model), weights_sha256(path), resolve_device(device),
                   nsfw_threshold=cfg.nsfw_threshold, min_quality=cfg.min_quality, batch_size=cfg.batch_size,
                   amp=cfg.amp)

    def _text(self, tokenizer, prompts) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokenizer(list(prompts)).to(self.device)).float(), dim=-1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> CLIP input: shortest side to size, centre crop (or squash), normalise."""
        th, tw = self.size
        h, w = x.shape[2:]
        if self.squash:
            x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False, antialias=True)
        else:
            s = max(th / h, tw / w)
            nh, nw = max(th, round(h * s)), max(tw, round(w * s))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[:, :, top : top + th, left : left + tw]
        return batching.normalize(x.clamp(0, 1), self.mean, self.std)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with batching.autocast(self.device, self.amp):
            return F.normalize(self.model.encode_image(pixel_values).float(), dim=-1)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[FilterVerdict]:
        batching.check_images(images, self.name)
        out: list[FilterVerdict | None] = [None] * len(images)
        for idx in batching.shape_batches(images, self.batch_size):
            emb = self.embed(self.preprocess(batching.upload([images[i] for i in idx], self.device)))
            nsfw, quality = zero_shot_scores(emb, self.nsfw_text, self.quality_text, self.scale)
            for i, n, q in zip(idx, nsfw.tolist(), quality.tolist()):
                keep, reason = judge(n, q, self.nsfw_threshold, self.min_quality)
                out[i] = FilterVerdict(nsfw=n, quality=q, keep=keep, reason=reason)
        return out
