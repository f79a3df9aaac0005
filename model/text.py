"""The text encoder: prompts -> per-token features and a mask (T5 encoder, max 300 tokens, as released).

Loads ``transformers.T5EncoderModel`` (or any encoder whose config ``AutoModel`` resolves) and its
tokenizer from a local folder laid out like the Hub repo (``text_encoder/`` + ``tokenizer/``, or
both in one folder); ``local_files_only`` and no remote code. ``load(None)`` builds a tiny
seeded-random T5 for tests and the offline runs, with a word-level tokenizer over the procedural
world's words and the task tags: with the character-level one it had until session 9, the model had
to learn to spell before a prompt's colour could reach the image (``benchmarks/probe_text.py``:
held-out colour accuracy 0.30 against 0.56 after 3000 steps at CFG 3).
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from onegen import tasks
from onegen.annotators.base import weights_sha256
from onegen.hub_cache import resolve_model_path
from onegen.sources import procedural as world

MAX_TOKENS = 300


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased WordPiece over the procedural world's words, any other word spelled out character by
    character: one token a word where it matters, as T5's vocabulary has for common English words."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for piece in (*string.printable, *("##" + ch for ch in string.printable), *world.caption_words()):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # like T5, every prompt ends in </s>, so even the empty (CFG) prompt has one real token
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    # Task tags whole as well: spelled out, "[[text2image]]" was half of a short prompt's tokens, and the
    # text probe's held-out colour after 3000 steps fell from 0.56 to 0.44 with it in front of every caption.
    tok.add_tokens([AddedToken(t, single_word=True) for t in tasks.TASK_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(vocab_size: int, seed: int, dim: int = 32) -> T5EncoderModel:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=dim, d_kv=dim // 4, d_ff=2 * dim, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    return T5EncoderModel(cfg)


class TextEncoder:
    def __init__(self, model, tokenizer, max_tokens: int, random_weights: bool):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.random_weights = random_weights
        self.dim = int(model.config.d_model if hasattr(model.config, "d_model") else model.config.hidden_size)

    @staticmethod
    def identity_of(path: Path | None, seed: int = 0, dim: int = 32) -> str:
        """Names the weights ``load(path, seed=seed, dim=dim)`` gives, for caches made with them (the random
        encoder's width is the transformer's caption width, so features cached for one model size never pass
        for another's)."""
        if path is None:  # the tokenizer's whole definition too: a new word or tag is another feature map
            vocab = hashlib.sha256(word_tokenizer().backend_tokenizer.to_str().encode()).hexdigest()[:8]
            return f"random-tiny-t5-words{vocab}-d{dim}-seed{seed}"
        path = Path(resolve_model_path(path, "model.text_encoder"))
        return weights_sha256(path / "text_encoder" if (path / "text_encoder").is_dir() else path)

    @classmethod
    def load(cls, path: Path | None, max_tokens: int = MAX_TOKENS, device="cpu", seed: int = 0,
             dtype=torch.float32, dim: int = 32) -> "TextEncoder":
        """``path=None``: the tiny random encoder, ``dim`` wide (the transformer's caption width)."""
        if path is None:
            tok = word_tokenizer()
            return cls(tiny_t5(len(tok), seed, dim).to(device), tok, max_tokens, random_weights=True)
        path = Path(resolve_model_path(path, "model.text_encoder"))
        enc_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else enc_dir
        if not (enc_dir / "config.json").is_file():
            raise FileNotFoundError(f"model.text_encoder: no encoder config.json at {enc_dir}")
        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = AutoModel.from_pretrained(enc_dir, local_files_only=True, torch_dtype=dtype, trust_remote_code=False)
        model = getattr(model, "encoder", None) if not isinstance(model, T5EncoderModel) and hasattr(model, "encoder") else model
        return cls(model.to(device), tok, max_tokens, random_weights=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> hidden [B, L, D] float32, mask [B, L] bool (L = longest prompt, at most max_tokens)."""
        batch = self.tokenizer(list(prompts), padding="longest", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.float(), mask.bool()
