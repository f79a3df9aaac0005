"""``onegen latents <family>``: the family's shards with every image-like view VAE-encoded.

VAE encoding is a large share of a training step at scale, and it is the same every epoch, so
this stage does it once: sample ``i`` of ``data/shards/<family>`` becomes sample ``i`` of
``data/latents/<family>``, whose image-like views are ``latent`` views (float16, 16 x H/8 x W/8,
the normalised latents the transformer sees; ``meta.of`` names the modality) while Plücker ray
views pass through. With ``latents.text`` each sample also carries its prompt's text-encoder
features (a ``text`` view, float16, L x D, its valid tokens only).

A training stage at another side than the shards' (``train.stages[].resolution``) gets the family's samples
resized to that side first (``onegen.shards.resize``), encoded into ``data/latents/<family>/side<S>``; sides by
view count (``family_resolution: {id: {3: 512, 5: 256}}``) resize each sample to its own, into
``side512to3v_256to5v``. The shards' own side is encoded only where a stage (or none at all) trains the family at it.

``latents.json`` beside the shards names the VAE and text encoder that made them; the trainer
refuses latents made by other weights than the ones it is configured with. Encoding runs in
fixed chunks of ``latents.batch_size`` samples (chunk ``i // batch_size``), so a resumed build
encodes every sample in the same batch as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from model.nextdit import CONFIGS
from model.text import TextEncoder
from model.vae import LatentCodec
from onegen.annotators.depth import CONDITION_VERSION as DEPTH_CONDITION_VERSION
from onegen.config import Params, SideRule
from onegen.fingerprint import fingerprint
from onegen.format import Provenance, Sample, View, decode_sample
from onegen.jsonl import shard_logger
from onegen.shards.reader import ReadReport, iter_tar_samples, sample_to_tensors
from onegen.shards.resize import VERSION as RESIZE_VERSION, resize_by_rule, resized_dir, rule_record, rule_text
from onegen.shards.writer import ShardLimits, build_shards, content_identity, write_json
from pipelines.shards import StageError, family_dir

PASS_THROUGH = ("rays", "latent", "text")


def latents_dir(params: Params, family: str, side: SideRule = None) -> Path:
    """Where ``onegen latents`` writes a family: its shards as built, or (``side``) resized to a training stage's
    square side (or sides by view count) first, in a folder of their own beside them (``model.train.family_dirs``
    reads the same)."""
    out = params.paths.data / "latents" / family
    return out if side is None else resized_dir(out, side)


def encoder_identity(params: Params) -> dict:
    """What made the latents: the trainer compares this with its own configuration."""
    return {"vae": LatentCodec.identity_of(params.model.vae, params.seed, params.model.vae_shift),
            "text": TextEncoder.identity_of(params.model.text_encoder, params.seed,
                                            CONFIGS[params.model.size].caption_channels) if params.latents.text else None,
            "max_text_tokens": params.model.max_text_tokens if params.latents.text else None,
            "depth_condition": DEPTH_CONDITION_VERSION}  # depth views are encoded as the reader draws them


class _SourceSamples:
    """Random access to a finished family's samples by global index (one shard decoded at a time)."""

    def __init__(self, directory: Path):
        stats_path = directory / "stats.json"
        if not stats_path.is_file():
            raise StageError(f"{directory}: no finished shards (run `onegen shards {directory.name}` first)")
        self.stats = json.loads(stats_path.read_text())
        self.urls = [str(directory / e["shard"]) for e in self.stats["manifest"]]
        self.starts = list(np.cumsum([0] + [e["count"] for e in self.stats["manifest"]]))
        self.load = lru_cache(maxsize=2)(self._load)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _load(self, j: int) -> list[Sample]:
        report = ReadReport()
        samples = [decode_sample(raw) for raw in iter_tar_samples(self.urls[j], report)]
        if report.problems or len(samples) != self.starts[j + 1] - self.starts[j]:
            first = report.problems[0]["reason"] if report.problems else f"{len(samples)} samples"
            raise StageError(f"{self.urls[j]}: damaged or changed since its manifest ({first}) -- "
                             f"rebuild it with `onegen shards`")
        return samples

    def __getitem__(self, i: int) -> Sample:
        j = bisect.bisect_right(self.starts, i) - 1
        return self.load(j)[i - int(self.starts[j])]


def encode_chunk(samples: list[Sample], codec: LatentCodec, text: TextEncoder | None,
                 records: list[dict]) -> list[Sample]:
    """Samples -> their latent versions; views of one size are encoded in one VAE batch."""
    tensors = [sample_to_tensors(s) for s in samples]
    by_shape: dict[tuple, list[tuple[int, int]]] = {}
    for si, (s, t) in enumerate(zip(samples, tensors)):
        for vi, v in enumerate(s.views):
            if v.modality not in PASS_THROUGH:
                by_shape.setdefault(tuple(t["views"][vi].shape), []).append((si, vi))
    latents: dict[tuple[int, int], np.ndarray] = {}
    for where in by_shape.values():
        z = codec.encode(torch.stack([tensors[si]["views"][vi] for si, vi in where]))
        for (si, vi), zi in zip(where, z.cpu().numpy().astype(np.float16)):
            latents[(si, vi)] = zi
    features = None
    if text is not None:
        hidden, mask = text([s.prompt() for s in samples])
        features = [h[m].cpu().numpy().astype(np.float16) for h, m in zip(hidden, mask)]
    out = []
    for si, s in enumerate(samples):
        views = [View("latent", latents[(si, vi)], role=v.role, camera=v.camera, meta={"of": v.modality, **v.meta})
                 if (si, vi) in latents else v for vi, v in enumerate(s.views)]
        if features is not None:
            views.append(View("text", features[si], role="text"))
        prov = Provenance(s.provenance.source, s.provenance.source_id, s.provenance.seed,
                          [*s.provenance.annotators, *records])
        out.append(Sample(key=s.key, task=s.task, caption=s.caption, views=views, provenance=prov,
                          captions=s.captions, palette=s.palette, meta=s.meta))
    return out


def encode_side(params: Params, family: str, source: _SourceSamples, side: SideRule, codec: LatentCodec,
                text: TextEncoder | None, records: list[dict], identity: dict) -> dict:
    """The family's latents as built (``side`` None) or resized to ``side`` (each sample to its view count's side
    for ``ViewSides``) first, into ``latents_dir``."""
    chunk = params.latents.batch_size

    @lru_cache(maxsize=1)
    def encoded(c: int) -> list[Sample]:
        samples = [source[i] for i in range(c * chunk, min((c + 1) * chunk, len(source)))]
        return encode_chunk([resize_by_rule(s, side) for s in samples], codec, text, records)

    out = latents_dir(params, family, side)
    fp = fingerprint("latents", family, source.stats["fingerprint"], content_identity(source.stats), identity,
                     params.latents.batch_size, *([] if side is None else [out.name, RESIZE_VERSION]))
    stats = build_shards(out, len(source), lambda i: encoded(i // chunk)[i % chunk],
                         ShardLimits(params.shards.max_samples_per_shard, params.shards.max_bytes_per_shard), fp,
                         desc=f"latents {family}" + ("" if side is None else f" {rule_text(side)}"),
                         on_shard=shard_logger(params.paths.reports / "logs" / f"latents_{family}.jsonl",
                                               stage="latents", family=family, side=rule_record(side)))
    write_json(out / "latents.json", {**identity, "side": rule_record(side)})
    return stats


def run(params: Params, family: str) -> dict:
    source = _SourceSamples(family_dir(params, family))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    codec = LatentCodec.load(params.model.vae, device=device, seed=params.seed, shift=params.model.vae_shift)
    identity = encoder_identity(params)
    text = None
    if params.latents.text:
        text = TextEncoder.load(params.model.text_encoder, max_tokens=params.model.max_text_tokens, device=device,
                                seed=params.seed, dim=CONFIGS[params.model.size].caption_channels)
    records = [{"name": "vae", "version": "diffusers.AutoencoderKL", "weights_sha256": identity["vae"]}]
    if text is not None:
        records.append({"name": "text_encoder", "version": type(text.model).__name__, "weights_sha256": identity["text"]})
    built = {side: encode_side(params, family, source, side, codec, text, records, identity)
             for side in params.train.sides_of(family)}
    return {"samples": len(source), "shards": sum(st["shards"] for st in built.values()),
            "sides": [rule_text(side) for side in built]}
