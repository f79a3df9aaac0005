"""CLIP-T: 100 x cosine between an image's CLIP embedding and its prompt's (open_clip, local weights).

The checkpoint is either a folder in open_clip's Hub layout (``open_clip_config.json`` beside
``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``, i.e. a downloaded snapshot),
or a single weights file of the built-in architecture named by ``clip_model``. Nothing is
fetched: tokenizers must be open_clip's bundled BPE (every OpenAI/LAION ViT config), and the
cosine is reported as is (not clamped at 0 as torchmetrics' CLIPScore does).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onegen.annotators.base import AnnotatorError, annotator_record, require_path, resolve_device, weights_sha256
from onegen.config import CLIP_ARCHITECTURES

VERSION = "1"


class ClipScorer:
    def __init__(self, model, preprocess, tokenizer, device: torch.device, record: dict):
        self.model, self.preprocess, self.tokenizer, self.device = model, preprocess, tokenizer, device
        self.record = record

    @classmethod
    def load(cls, path: Path | None, model_name: str | None = None, device: str = "auto",
             key: str = "evals.identity.clip_path") -> "ClipScorer":
        import open_clip

        path = require_path(key, path, "open_clip checkpoint (file or Hub-layout folder)")
        dev = resolve_device(device)
        if not path.is_dir() and model_name is None:
            raise AnnotatorError(f"{key} is a weights file ({path}): name its open_clip architecture in "
                                 f"{key.rsplit('.', 1)[0]}.clip_model ({CLIP_ARCHITECTURES})")
        name, pretrained = (f"local-dir:{path}", None) if path.is_dir() else (model_name, str(path))
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=dev,
                                                                         require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise AnnotatorError(f"{key}: cannot load open_clip model from {path} ({' '.join(str(e).split())[:300]})") from None
        # a weights file is read as the architecture named (with or without QuickGELU): that is part of the scorer
        arch = (f"config {hashlib.sha256((path / 'open_clip_config.json').read_bytes()).hexdigest()[:16]}"
                if path.is_dir() else model_name)
        return cls(model.eval(), preprocess, tokenizer, dev,
                   annotator_record("open_clip", f"{VERSION}/{open_clip.__version__}/{arch}", weights_sha256(path)))

    @torch.inference_mode()
    def image_embeddings(self, images: list[np.ndarray]) -> np.ndarray:
        x = torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        e = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        e = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy().astype(np.float64)

    def clip_t(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        """100 x cos(image, prompt) per pair."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        sims = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(1)
        return [100.0 * float(s) for s in sims]
