"""``onegen shards <family>``: world records + external sources -> one family's shards.

The family's items are enumerated up front and cut into planned shards of
``shards.max_samples_per_shard`` items (``writer.plan_ranges``), so a shard's content depends
on nothing but its item range. Each unfinished shard then goes through three steps, the same
code under both executors (hence the same bytes):

1. ``read_shard``: its items' records (world shards, photos, scene readers) -> ``Item`` list;
2. ``annotate_items``, once per model annotator the family uses on records without ground truth;
3. ``write_items``: families.build (CPU annotators: Canny, degradations) -> encode -> atomic tar.

``build.executor: ray`` (the default) runs them as a Ray Data pipeline (``pipelines.ray_build``);
``local`` runs them here, shard after shard. A failed item (decode error, annotator exception,
no caption) goes to its shard's ``errors.jsonl``; the stage fails only when more than
``build.max_failure_fraction`` of the items failed.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from onegen import families
from onegen.config import FamilyConfig, Params
from onegen.families import (MODEL_ANNOTATORS, PHOTO, PHOTO_INFO, VLM_ON_EVERY_ITEM, Annotation, BuildOptions,
                              ItemError, RecordInfo, Ref)
from onegen.fingerprint import fingerprint
from onegen.format import Provenance, Sample, View, decode_sample
from onegen.jsonl import append_jsonl, shard_logger
from onegen.shards.writer import (ItemFailure, content_identity, finish_shards, finished_shard, plan_ranges,
                                  remove_stale_temporaries, write_shard)
from onegen.sources import open_source
from onegen.sources.world_records import RECORD_TASK
from pipelines.world import world_dir

PHOTO_KINDS = ("image_folder", "hf_dataset", "sample_photos")  # sources whose records are single photos


class StageError(RuntimeError):
    pass


# --- records ---------------------------------------------------------------------------------

class ShardRecords:
    """Records stored in shards (the world stage's output), read one at a time by index.

    Each tar is indexed once (member offsets), so a worker reads only the records its items
    need; the few most recent records stay decoded (per-view items share one record).
    """

    def __init__(self, directory: Path, cache: int = 8):
        sidecars = sorted(Path(directory).glob("shard-*.json"))
        if not sidecars:
            raise StageError(f"{directory}: no world shards -- run `onegen world` first")
        self.shards: list[tuple[int, int, Path]] = []
        for side in sidecars:
            entry = json.loads(side.read_text())
            self.shards.append((entry["start"], entry["end"], side.with_suffix(".tar")))
        self._index: dict[Path, list[dict[str, tarfile.TarInfo]]] = {}
        self._decoded: OrderedDict[int, Sample] = OrderedDict()
        self._cache = cache

    def __len__(self) -> int:
        return self.shards[-1][1]

    def _members(self, tar: Path) -> list[dict[str, tarfile.TarInfo]]:
        if tar not in self._index:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            try:
                with tarfile.open(tar, "r:") as tf:
                    for info in tf.getmembers():
                        parent, _, base = info.name.rpartition("/")
                        stem, _, suffix = base.partition(".")
                        groups.setdefault(f"{parent}/{stem}", {})[suffix] = info
            except (tarfile.TarError, OSError) as e:
                raise StageError(f"{tar}: world shard is damaged ({type(e).__name__}: {e}) "
                                 f"-- rerun `onegen world`") from e
            self._index[tar] = list(groups.values())
        return self._index[tar]

    def _raw(self, i: int, suffixes: tuple[str, ...] | None = None) -> dict:
        for start, end, tar in self.shards:
            if start <= i < end:
                group = self._members(tar)[i - start]
                with open(tar, "rb") as f:
                    raw = {"__key__": "?"}
                    for suffix, info in group.items():
                        if suffixes is None or suffix in suffixes:
                            f.seek(info.offset_data)
                            raw[suffix] = f.read(info.size)
                    raw["__key__"] = group[next(iter(group))].name.split(".", 1)[0]
                return raw
        raise IndexError(f"record {i} is not in the world shards (0..{len(self) - 1})")

    def infos(self) -> list[RecordInfo]:
        out = []
        for i in range(len(self)):
            doc = json.loads(self._raw(i, ("json",))["json"])
            mods = [v["modality"] for v in doc["views"]]
            out.append(RecordInfo(doc["meta"].get("kind", PHOTO), mods.count("image"), frozenset(mods)))
        return out

    def __getitem__(self, i: int) -> Sample:
        if i not in self._decoded:
            self._decoded[i] = decode_sample(self._raw(i))
            while len(self._decoded) > self._cache:
                self._decoded.popitem(last=False)
        return self._decoded[i]


def center_square(image: Image.Image, size: int) -> np.ndarray:
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box=box))


def photo_record(source: str, rec: dict, size: int) -> Sample:
    """A photo source's record (``{source_id, image, captions, meta}``) in the world records' shape."""
    return Sample(key=f"{source}/{rec['source_id']}", task=RECORD_TASK, caption=rec["captions"].get("original", ""),
                  views=[View("image", center_square(rec["image"], size))],
                  provenance=Provenance(source, rec["source_id"], 0), captions=dict(rec["captions"]),
                  meta={**rec.get("meta", {}), "kind": PHOTO})


class Sources:
    """The sources a family reads, opened lazily once per process."""

    def __init__(self, params: Params):
        self.params = params
        self._open: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._open:
            self._open[name] = (ShardRecords(world_dir(self.params)) if name == "world"
                                else open_source(self.params.sources[name], self.params.seed))
        return self._open[name]

    def count(self, name: str) -> int:
        n = len(self.get(name))
        limit = None if name == "world" else self.params.sources[name].limit
        return min(n, limit or n)

    def infos(self, name: str) -> list[RecordInfo]:
        if name == "world":
            return self.get(name).infos()
        if self.params.sources[name].kind in PHOTO_KINDS:
            return [PHOTO_INFO] * self.count(name)
        src = self.get(name)  # scene and identity readers summarise a record without decoding it
        return [RecordInfo(*src.record_info(j)) for j in range(self.count(name))]

    def record(self, ref: Ref) -> Sample:
        rec = self.get(ref.source)[ref.record]
        return photo_record(ref.source, rec, self.photo_side(ref.source)) if isinstance(rec, dict) else rec

    def photo_side(self, name: str) -> int:
        """A photo source's square side: its own ``resolution`` where the params set one (a recipe that trains
        text-to-image at 1024² needs photos stored that large), else the world's, as the shards it joins."""
        return self.params.sources[name].resolution or self.params.world.resolution

    def source_id(self, ref: Ref) -> str | None:
        ids = getattr(self.get(ref.source), "ids", None)
        return ids[ref.record] if ids is not None else None


_SOURCES: dict[str, Sources] = {}  # this process's open sources, for the latest run only


# --- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildContext:
    """Everything a worker needs to build any shard of one family (small; sent to every task)."""

    params: Params
    family: str
    fingerprint: str
    out_dir: Path
    annotators: tuple[str, ...]  # model annotators that run, in MODEL_ANNOTATORS order
    options: BuildOptions
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # this invocation (not part of any output)

    def sources(self) -> Sources:
        if self.run not in _SOURCES:
            _SOURCES.clear()
            _SOURCES[self.run] = Sources(self.params)
        return _SOURCES[self.run]


@dataclass(frozen=True)
class ShardJob:
    index: int
    start: int
    refs: list[Ref]


@dataclass
class Item:
    """One item in flight: its record, the model annotators it wants, what they said, or why it failed."""

    index: int
    ref: Ref
    record: Sample | None = None
    wanted: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # of ``wanted``, those without whose answer the item cannot be built
    annotations: dict[str, Annotation] = field(default_factory=dict)
    failure: ItemFailure | None = None

    def fail(self, stage: str, reason: str) -> None:
        self.failure = ItemFailure(self.index, self.ref.source, self.record.provenance.source_id, stage, reason)

    @property
    def dropped(self) -> bool:
        return families.dropped(self.annotations)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def configured(params: Params, name: str) -> bool:
    return MODEL_ANNOTATORS[name].configured(params.annotators)


def build_options(params: Params) -> BuildOptions:
    e = params.annotators.edges
    return BuildOptions(params.shards.rays_normalize_cameras, tuple(e.canny_low), tuple(e.canny_high),
                        configured(params, "hed"))


@dataclass
class Plan:
    ctx: BuildContext
    refs: list[Ref]
    jobs: list[ShardJob]  # every planned shard, finished or not
    notes: list[dict]  # annotators used / skipped, for the stage log


def make_plan(params: Params, family: str) -> Plan:
    fam: FamilyConfig = params.shards.families[family]
    available = {n for n in MODEL_ANNOTATORS if configured(params, n)}
    sources = Sources(params)
    infos = {name: sources.infos(name) for name in fam.sources} if fam.enabled else {}
    refs, left_out = families.enumerate_items(family, infos, available)
    if fam.max_samples is not None:
        refs = refs[: fam.max_samples]
    options = build_options(params)
    wanted: Counter = Counter()  # (source, kind, annotator) over the kept items
    for i, ref in enumerate(refs):
        info = infos[ref.source][ref.record]
        required, optional = families.annotators_for(family, ref.source, info, options.edge_op(i))
        for a in required + optional:
            wanted[(ref.source, info.kind, a)] += 1
        if family == "edges" and not options.hed:
            wanted[(ref.source, info.kind, "hed")] += 1  # said once: HED would join the edge ops
    used = tuple(a for a in MODEL_ANNOTATORS if a in available and any(k[2] == a for k in wanted))
    notes = [{"annotator": "+".join(lacking), "key": " and ".join(MODEL_ANNOTATORS[a].keys for a in lacking),
              "what": ", ".join(MODEL_ANNOTATORS[a].what for a in lacking), "source": source, "kind": kind,
              "items": n, "effect": "left out"}
             for (source, kind, lacking), n in sorted(left_out.items()) if n]
    notes += [{"annotator": a, "key": MODEL_ANNOTATORS[a].keys, "what": MODEL_ANNOTATORS[a].what, "source": source,
               "kind": kind, "items": n, "effect": "used" if a in available else "not applied"}
              for (source, kind, a), n in sorted(wanted.items())]
    world_stats = json.loads((world_dir(params) / "stats.json").read_text()) if "world" in infos else None
    world_fp = (world_stats["fingerprint"], content_identity(world_stats)) if world_stats else None
    annotator_cfgs = {a: getattr(params.annotators, MODEL_ANNOTATORS[a].block).model_dump(mode="json") for a in used}
    fp = fingerprint("shards", families.VERSION, family, fam.model_dump(mode="json"), params.seed, world_fp,
                     {n: params.sources[n].model_dump(mode="json") for n in infos if n != "world"},
                     params.world.resolution, annotator_cfgs, params.shards.max_samples_per_shard,
                     dataclasses.asdict(options))
    ctx = BuildContext(params, family, fp, params.paths.data / "shards" / family, used, options)
    _SOURCES.clear()
    _SOURCES[ctx.run] = sources  # the one-process executor reads with the sources the plan opened
    ranges = plan_ranges(len(refs), params.shards.max_samples_per_shard)
    jobs = [ShardJob(k, s, refs[s:e]) for k, (s, e) in enumerate(ranges)]
    return Plan(ctx, refs, jobs, notes)


KIND_WORDS = {"scene": "scene views", "photo": "photos", "identity": "identities"}


def annotator_line(family: str, notes: list[dict]) -> str | None:
    """One human line: which annotators ran, which were skipped and the key that enables each."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for n in notes:
        groups.setdefault((n["annotator"], n["effect"]), []).append(n)
    parts = []
    for (_, effect), ns in groups.items():
        n = ns[0]
        on = ", ".join(f"{m['items']} {KIND_WORDS.get(m['kind'], 'records')} of {m['source']}" for m in ns)
        if effect == "left out":
            parts.append(f"{on} need {n['key']} ({n['what']}); skipped")
        elif effect == "not applied":
            parts.append(f"{n['key']} not set ({n['what']}): not applied to {on}")
        else:  # elsewhere the VLM runs only where the source gives no caption (known once a record is read)
            some = "the uncaptioned of " if n["annotator"] == "captioner" and family not in VLM_ON_EVERY_ITEM else ""
            parts.append(f"{n['annotator']} ({n['what']}) on {some}{on}")
    return f"{family} family: " + "; ".join(parts) if parts else None


# --- the three steps of one shard (both executors) ---------------------------------------------

def read_shard(ctx: BuildContext, job: ShardJob) -> list[Item]:
    sources = ctx.sources()
    items = []
    for i, ref in enumerate(job.refs, job.start):
        item = Item(i, ref)
        try:
            item.record = sources.record(ref)
            required, optional = families.record_annotators(ctx.family, ref.source, item.record, ref.view,
                                                            ctx.options.edge_op(i))
            item.required = tuple(a for a in ctx.annotators if a in required)
            item.wanted = tuple(a for a in ctx.annotators if a in required + optional)
        except Exception as e:  # noqa: BLE001 -- a bad input fails its item, never the build
            item.failure = ItemFailure(i, ref.source, sources.source_id(ref), "read", _one_line(e))
        items.append(item)
    return items


def load_annotator(params: Params, name: str):
    return MODEL_ANNOTATORS[name].load(params.annotators)


def _item_images(family: str, item: Item) -> list[np.ndarray]:
    images = families.record_views(item.record, "image")
    return [v.data for v in images] if family == "id" else [images[item.ref.view].data]


def _call(name: str, annotator, family: str, items: list[Item]) -> list[object]:
    """One batched call for ``items``; per item the output (a list for multi-image items)."""
    images = [_item_images(family, it) for it in items]
    flat = [im for ims in images for im in ims]
    if name == "segmenter":
        outs = annotator(flat, [list(it.annotations["captioner"].output.entities) for it in items])
    else:
        outs = annotator(flat)
    if len(outs) != len(flat):
        raise RuntimeError(f"{name} returned {len(outs)} outputs for {len(flat)} images")
    grouped, k = [], 0
    for ims in images:  # an identity's item keeps the list of its images' outputs
        grouped.append(outs[k] if family != "id" else list(outs[k : k + len(ims)]))
        k += len(ims)
    return grouped


def annotate_items(ctx: BuildContext, name: str, annotator, items: list[Item]) -> None:
    """Run one model annotator over the shard's items that want it, in place.

    The whole shard goes in one call (the annotator batches by its own ``batch_size``); if that
    call raises, items are retried one by one so only the culprits fail.
    """
    todo = [it for it in items if it.failure is None and not it.dropped and name in it.wanted]
    if not todo:
        return
    records = list(getattr(annotator, "records", None) or [annotator.record])
    try:
        outs = _call(name, annotator, ctx.family, todo)
    except Exception:  # noqa: BLE001 -- find which items fail
        outs = []
        for it in todo:
            try:
                outs.append(_call(name, annotator, ctx.family, [it])[0])
            except Exception as e:  # noqa: BLE001
                it.fail(f"annotate:{name}", _one_line(e))
                outs.append(None)
    for it, out in zip(todo, outs):
        if it.failure is not None:
            continue
        # entities for the segmenter must come from an answer; an optional caption's rejection is the item's
        # only where it would be the prompt (families.build decides)
        if name == "captioner" and name in it.required and not out.ok:
            it.fail("annotate:captioner", out.error)
        else:
            it.annotations[name] = Annotation(out, records)


def write_items(ctx: BuildContext, job: ShardJob, items: list[Item]) -> dict:
    outcomes: list = []
    for it in items:
        if it.failure is not None:
            outcomes.append(it.failure)
            continue
        try:
            outcomes.append(families.build(ctx.family, it.ref, it.record, ctx.params.seed, it.index, it.annotations,
                                           ctx.options))
        except ItemError as e:
            it.fail(e.stage, str(e))
            outcomes.append(it.failure)
        except Exception as e:  # noqa: BLE001 -- a bad item fails alone
            it.fail("build", _one_line(e))
            outcomes.append(it.failure)
    return write_shard(ctx.out_dir, job.index, job.start, outcomes, ctx.fingerprint)


def build_local(ctx: BuildContext, jobs: list[ShardJob], on_entry: Callable[[dict], None]) -> None:
    """The one-process executor: shard after shard, annotators loaded once."""
    loaded = {name: load_annotator(ctx.params, name) for name in ctx.annotators} if jobs else {}
    for job in tqdm(jobs, desc=ctx.family, unit="shard", dynamic_ncols=True):
        t0 = time.perf_counter()
        items = read_shard(ctx, job)
        for name, annotator in loaded.items():
            annotate_items(ctx, name, annotator, items)
        on_entry(write_items(ctx, job, items) | {"seconds": round(time.perf_counter() - t0, 4)})


# --- the stage -------------------------------------------------------------------------------

def family_dir(params: Params, family: str) -> Path:
    return params.paths.data / "shards" / family


def run(params: Params, family: str) -> dict:
    plan = make_plan(params, family)
    ctx = plan.ctx
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = params.paths.reports / "logs" / f"shards_{family}.jsonl"
    line = annotator_line(family, plan.notes)
    if line:
        append_jsonl(log_path, {"stage": "shards", "family": family, "event": "annotators", "notes": plan.notes,
                                "message": line})
        print(line, flush=True)
    remove_stale_temporaries(ctx.out_dir)
    entries = {}
    for job in plan.jobs:
        done = finished_shard(ctx.out_dir, job.index, job.start, job.start + len(job.refs), ctx.fingerprint)
        if done is not None:
            entries[job.index] = done
    todo = [job for job in plan.jobs if job.index not in entries]
    log_shard = shard_logger(log_path, stage="shards", family=family)

    def on_entry(entry: dict) -> None:
        entries[int(entry["shard"][len("shard-"):].split(".")[0])] = {k: v for k, v in entry.items() if k != "seconds"}
        log_shard(entry)

    if todo and params.build.executor == "ray":
        from pipelines.ray_build import build_with_ray

        build_with_ray(ctx, todo, on_entry)
    else:
        build_local(ctx, todo, on_entry)
    stats = finish_shards(ctx.out_dir, [entries[k] for k in sorted(entries)], ctx.fingerprint)
    _check_failures(ctx, stats, len(plan.refs))
    return stats


def _check_failures(ctx: BuildContext, stats: dict, n_items: int) -> None:
    failed = stats["failed"]
    if not failed:
        return
    files = sorted(ctx.out_dir.glob("shard-*.errors.jsonl"))
    first = json.loads(files[0].read_text().splitlines()[0]) if files else {}
    where = (f"{failed} of {n_items} items failed ({failed / n_items:.1%}); reasons in "
             f"{ctx.out_dir}/shard-*.errors.jsonl ({len(files)} files), first: item {first.get('index')} "
             f"({first.get('source')}/{first.get('source_id')}) at {first.get('stage')}: {first.get('reason')}")
    limit = ctx.params.build.max_failure_fraction
    if failed / n_items > limit:
        raise StageError(f"{ctx.family}: {where} -- above build.max_failure_fraction {limit}")
    print(f"{ctx.family}: {where} (within build.max_failure_fraction {limit})", flush=True)
