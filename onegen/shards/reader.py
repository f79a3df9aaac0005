"""Streaming reader: shards -> safe tar members -> decoded samples -> task-balanced, bucketed batches.

Built from ``webdataset`` stages (shard lists, node/worker splitting, shuffling) plus our own
tar iteration, because we must (a) reject unsafe member names, (b) report truncated tars and
corrupt members by key instead of hiding them (``warn_and_continue`` loses them silently), and
(c) never crash a training run on one bad sample.

Task balance follows the paper (§3.3 "in-batch sampling"): the four task groups -- text-to-image,
image-to-image, ID customisation, multiview -- are drawn with equal probability whatever their
sizes. Batches hold samples of one shape signature (number of views and each view's size), so
views stack into tensors without padding.
"""

from __future__ import annotations

import json
import logging
import random
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import webdataset as wds

from onegen import tasks
from onegen.annotators.depth import disparity_to_condition
from onegen.config import SideRule
from onegen.format import FormatError, Sample, decode_sample
from onegen.pixels import pixels_to_tensor
from onegen.shards.resize import UpscaleError, resize_by_rule

log = logging.getLogger(__name__)
TASK_GROUPS = ("text2image", "image2image", "id", "multiview")
FAILURES_IN_A_ROW = 256  # samples of one stream that may fail one after another before it stops


def task_group(task: str) -> str:
    if task == tasks.TEXT2IMAGE:
        return "text2image"
    if task in (tasks.FACEID, tasks.SUBJECT_DRIVEN):
        return "id"
    if task == tasks.MULTIVIEW:
        return "multiview"
    return "image2image"


@dataclass
class ReadReport:
    """Everything the reader skipped, by shard and key; nothing is dropped without an entry here."""

    problems: list[dict] = field(default_factory=list)

    def add(self, url: str, key: str | None, reason: str) -> None:
        self.problems.append({"url": url, "key": key, "reason": reason})
        log.warning("skipped %s%s: %s", url, f" {key}" if key else "", reason)


def is_safe_member(name: str) -> bool:
    """No absolute paths, no ``..`` components, no drive letters (either slash style)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith(("/", "\\")) or ".." in parts:
        return False
    return ":" not in parts[0]


def _split_member(name: str) -> tuple[str, str]:
    """``procedural/000012.0.image.png`` -> (``procedural/000012``, ``0.image.png``)."""
    parent, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{parent}/{stem}" if parent else stem), suffix


def iter_tar_samples(url: str, report: ReadReport) -> Iterator[dict]:
    """Member groups of one uncompressed tar as ``{"__key__", "__url__", suffix: bytes}``, streamed.

    A tar cut at a header boundary reads as a clean, shorter archive, so the end-of-archive
    marker (two zero blocks) is checked too; the group in progress at a truncation is dropped.
    """
    current: dict | None = None
    bad_key: str | None = None
    try:
        with open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                if not is_safe_member(info.name):
                    key = _split_member(info.name.lstrip("/"))[0]
                    report.add(url, key, f"unsafe member name {info.name!r} rejected")
                    bad_key = key
                    continue
                key, suffix = _split_member(info.name)
                if current is not None and key != current["__key__"]:
                    if current["__key__"] != bad_key:
                        yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[suffix] = tf.extractfile(info).read()
            f.seek(tf.offset)
            marker = f.read(2 * tarfile.BLOCKSIZE)
            if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
                raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.TarError, EOFError, OSError) as e:
        where = current["__key__"] if current else None
        report.add(url, where, f"truncated or unreadable tar ({type(e).__name__}: {e}); rest of shard lost")
        return
    if current is not None and current["__key__"] != bad_key:
        yield current


def depth_to_condition(depth_m: np.ndarray) -> torch.Tensor:
    """Metric depth -> the 3-channel image the model sees: its disparity drawn as a monocular estimate's
    (``disparity_to_condition``: affine-invariant, 2-98 % range to [-1, 1], near = +1), the released model's
    convention; the model learns relative depth, and an estimate is only defined up to scale and shift anyway.
    Invalid pixels (0) are far."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    valid = depth_m > 0
    disparity = np.divide(1.0, depth_m, out=np.zeros(depth_m.shape, np.float32), where=valid)
    return disparity_to_condition(disparity, valid)


def sample_to_tensors(sample: Sample) -> dict:
    """Decoded sample -> model-ready tensors: images in [-1, 1] (3xHxW), rays 16xhxw float32."""
    views, extras = [], {}
    for i, v in enumerate(sample.views):
        if v.role == "text":  # cached prompt features: variable length, so kept out of the shape buckets
            extras["text"] = torch.from_numpy(v.data.astype(np.float32))
        elif v.modality == "depth" and v.meta.get("kind") == "relative-disparity":  # a monocular estimate
            views.append(disparity_to_condition(v.data))
        elif v.modality == "depth":
            depth_m = v.data.astype(np.float32) * float(v.meta.get("depth_scale", 1.0))
            views.append(depth_to_condition(depth_m))
            extras[f"depth_m_{i}"] = torch.from_numpy(depth_m)
        elif v.ext == "png":
            views.append(pixels_to_tensor(v.data))
        else:
            views.append(torch.from_numpy(v.data.astype(np.float32)))
    return {
        "__key__": sample.key,
        "task": sample.task,
        "group": task_group(sample.task),
        "prompt": sample.prompt(),
        "modalities": [v.modality for v in sample.views if v.role != "text"],
        "roles": [v.role for v in sample.views if v.role != "text"],
        "views": views,
        **extras,
    }


def _decode_stage(report: ReadReport, sides: Mapping[str, SideRule]):
    def stage(src: Iterable[dict]) -> Iterator[dict]:
        failed = 0
        for raw in src:
            try:
                sample = decode_sample(raw)
                yield sample_to_tensors(resize_by_rule(sample, sides.get(str(Path(raw["__url__"]).parent))))
                failed = 0
            except UpscaleError as e:  # the recipe's fault, not the sample's: with sides by view count the
                # samples it hits may alternate with good ones, never failing many in a row
                raise UpscaleError(f"{raw.get('__url__', '?')}: {e}") from None
            except (FormatError, KeyError, ValueError, TypeError) as e:
                reason = f"{type(e).__name__}: {e}"
                report.add(raw.get("__url__", "?"), raw.get("__key__"), reason)
                failed += 1
                # one bad sample is skipped and reported; every sample failing (a map with no resampling rule)
                # would otherwise spin a resampled stream forever
                if failed == FAILURES_IN_A_ROW:
                    raise RuntimeError(f"reader: {failed} samples in a row unreadable, the last "
                                       f"{raw.get('__key__')} of {raw.get('__url__', '?')}: {reason}") from e
    return stage


def _tar_stage(report: ReadReport):
    def stage(src: Iterable[dict]) -> Iterator[dict]:
        for shard in src:
            yield from iter_tar_samples(shard["url"], report)
    return stage


def shard_urls(directory: Path) -> list[str]:
    urls = sorted(str(p) for p in Path(directory).glob("shard-*.tar"))
    if not urls:
        raise FileNotFoundError(f"{directory}: no shard-*.tar files")
    return urls


def _seed_alone() -> int:
    return 0


def sample_stream(urls: list[str], report: ReadReport, resampled: bool = False, shuffle: int = 0,
                  seed: int = 0, seed_names_reader: bool = False,
                  sides: Mapping[str, SideRule] | None = None) -> wds.DataPipeline:
    """One source's decoded samples, split by node and by DataLoader worker; the samples of a shard whose
    directory ``sides`` names are resized to that square side, or by view count (``resize.resize_by_rule``).

    Resampled streams draw shards with a generator seeded by ``seed`` and, by default, the
    rank and worker; ``seed_names_reader=True`` leaves them out because the caller's ``seed``
    already identifies the reader (the trainer seeds one stream per rank-and-micro-step slot, so
    a slot reads the same data whichever rank runs it).
    """
    if resampled:
        shards = wds.ResampledShards(urls, seed=seed, deterministic=True,
                                     worker_seed=_seed_alone if seed_names_reader else None)
    else:
        shards = wds.SimpleShardList(urls)
    stages = [shards]
    if not resampled:  # resampled streams draw independently per worker instead of splitting
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [_tar_stage(report), _decode_stage(report, sides or {})]
    if shuffle:
        stages.append(wds.shuffle(shuffle, rng=random.Random(seed)))
    return wds.DataPipeline(*stages)


def mix_task_groups(streams: dict[str, Iterable[dict]], seed: int = 0) -> Iterator[dict]:
    """Draw the next sample from a uniformly chosen task group until every group is exhausted."""
    rng = random.Random(seed)
    its = {g: iter(s) for g, s in sorted(streams.items())}
    while its:
        g = rng.choice(sorted(its))
        try:
            yield next(its[g])
        except StopIteration:
            del its[g]


def shape_signature(sample: dict) -> tuple:
    return tuple(tuple(v.shape) for v in sample["views"])


def bucket_batches(samples: Iterable[dict], batch_size: int, drop_last: bool = False) -> Iterator[dict]:
    """Batches of one shape signature: per-view tensors stacked to B x C x H x W."""
    buckets: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        b = buckets[shape_signature(s)]
        b.append(s)
        if len(b) == batch_size:
            yield collate(b)
            b.clear()
    if not drop_last:
        for b in buckets.values():
            if b:
                yield collate(b)


def collate(samples: list[dict]) -> dict:
    out = {k: [s[k] for s in samples] for k in ("__key__", "task", "group", "prompt", "modalities", "roles")}
    out["views"] = [torch.stack([s["views"][i] for s in samples]) for i in range(len(samples[0]["views"]))]
    if all("text" in s for s in samples):
        feats = [s["text"] for s in samples]
        length = max(f.shape[0] for f in feats)
        out["text"] = torch.zeros(len(feats), length, feats[0].shape[1])
        out["text_mask"] = torch.zeros(len(feats), length, dtype=torch.bool)
        for b, f in enumerate(feats):
            out["text"][b, : len(f)] = f
            out["text_mask"][b, : len(f)] = True
    return out


def group_streams(shard_dirs: list[Path], report: ReadReport, resampled: bool, shuffle: int,
                  seed: int, seed_names_reader: bool = False,
                  sides: Mapping[Path, SideRule] | None = None) -> dict[str, Iterable[dict]]:
    """Shard directories -> one stream per task group (a family's stats.json names its tasks); a directory
    in ``sides`` is read resized to that square side (or by view count)."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for d in shard_dirs:
        groups = {task_group(t) for t in _family_tasks(Path(d))}
        if not groups:
            raise ValueError(f"{d}: the family has no samples (see its stats.json and the shards log for what was "
                             "left out); build it or leave it out of the stage")
        if len(groups) != 1:
            raise ValueError(f"{d}: shards mix task groups {sorted(groups)}; keep one group per directory")
        by_group[groups.pop()].extend(shard_urls(Path(d)))
    by_url_dir = {str(Path(d)): side for d, side in (sides or {}).items()}
    return {g: sample_stream(u, report, resampled, shuffle, seed, seed_names_reader, by_url_dir)
            for g, u in by_group.items()}


def _family_tasks(directory: Path) -> list[str]:
    stats = directory / "stats.json"
    if not stats.is_file():
        raise FileNotFoundError(f"{directory}: no stats.json (was the shard build finished?)")
    return list(json.loads(stats.read_text())["tasks"])


def training_batches(shard_dirs: list[Path], batch_size: int, report: ReadReport | None = None,
                     resampled: bool = True, shuffle: int = 256, seed: int = 0) -> Iterator[dict]:
    """The trainer's input: task-group-balanced, shape-bucketed batches of tensors."""
    report = report if report is not None else ReadReport()
    streams = group_streams(shard_dirs, report, resampled, shuffle, seed)
    return bucket_batches(mix_task_groups(streams, seed), batch_size)
