"""``onegen stats``: the dataset card -- counts, task/resolution histograms, example grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from onegen.config import FAMILIES, Params
from onegen.format import Sample, View, decode_sample
from onegen.shards.reader import ReadReport, iter_tar_samples
from onegen.shards.writer import write_json
from pipelines.shards import family_dir

GRID_ROWS = 4
TILE = 96


def view_preview(view: View) -> np.ndarray:
    """Any view -> an RGB uint8 tile: depth as normalised inverse depth, rays as |direction|."""
    a = view.data
    if view.modality == "depth" or a.dtype == np.uint16:
        d = a.astype(np.float32)
        inv = np.where(d > 0, 1.0 / np.maximum(d, 1), 0)
        inv = inv / max(float(inv.max()), 1e-12)
        a = np.repeat((inv * 255).astype(np.uint8)[..., None], 3, axis=2)
    elif a.dtype != np.uint8:  # rays: show the direction channels
        d = a[:3].astype(np.float32).transpose(1, 2, 0)
        a = ((d / (np.abs(d).max() + 1e-6) * 0.5 + 0.5) * 255).astype(np.uint8)
    elif a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(a[..., :3]).resize((TILE, TILE), Image.Resampling.NEAREST))


def grid(samples: list[Sample]) -> Image.Image:
    cols = max(len(s.views) for s in samples)
    canvas = np.full((len(samples) * (TILE + 4), cols * (TILE + 4), 3), 255, np.uint8)
    for r, s in enumerate(samples):
        for c, v in enumerate(s.views):
            y, x = r * (TILE + 4), c * (TILE + 4)
            canvas[y : y + TILE, x : x + TILE] = view_preview(v)
    return Image.fromarray(canvas)


def first_samples(directory: Path, n: int) -> list[Sample]:
    out: list[Sample] = []
    report = ReadReport()
    for url in sorted(directory.glob("shard-*.tar")):
        for raw in iter_tar_samples(str(url), report):
            out.append(decode_sample(raw))
            if len(out) == n:
                return out
    return out


def _table(rows: dict, header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| `{k}` | {v} |" for k, v in rows.items()]
    return lines


def run(params: Params) -> dict:
    reports = params.paths.reports
    (reports / "dataset").mkdir(parents=True, exist_ok=True)
    per_family = {}
    for fam in FAMILIES:
        stats_path = family_dir(params, fam) / "stats.json"
        if not stats_path.is_file():
            raise FileNotFoundError(f"{stats_path}: missing -- run `onegen shards {fam}` first")
        per_family[fam] = json.loads(stats_path.read_text())
    md = ["# One-Gen dataset card", "", f"Profile `{params.profile}`, seed {params.seed}.", "",
          "| family | shards | samples | skipped | failed | MB |", "|---|---:|---:|---:|---:|---:|"]
    for fam, st in per_family.items():
        md.append(f"| {fam} | {st['shards']} | {st['samples']} | {st['skipped']} | {st.get('failed', 0)} "
                  f"| {st['bytes'] / 2**20:.2f} |")
    md += ["", "Skipped items were left out on purpose (e.g. a photo without a caption for text-to-image); failed "
           "ones (decode errors, annotator exceptions, rejected captions) are listed with their reason in "
           "`data/shards/<family>/shard-*.errors.jsonl`."]
    totals: dict[str, dict[str, int]] = {"tasks": {}, "resolutions": {}, "views": {}}
    for st in per_family.values():
        for field, acc in totals.items():
            for k, v in st[field].items():
                acc[k] = acc.get(k, 0) + v
    for field, title in (("tasks", "Task histogram"), ("resolutions", "Resolution histogram (first view)"),
                         ("views", "Views per sample")):
        md += ["", f"## {title}", "", *_table(dict(sorted(totals[field].items())), (field[:-1], "samples"))]
    md += ["", "## Examples", ""]
    for fam in FAMILIES:
        samples = first_samples(family_dir(params, fam), GRID_ROWS)
        if not samples:
            md.append(f"- {fam}: no samples")
            continue
        grid(samples).save(reports / "dataset" / f"{fam}.png")
        md += [f"### {fam}", "", f"`{samples[0].prompt()[:200]}`", "", f"![{fam}](dataset/{fam}.png)", ""]
    (reports / "dataset.md").write_text("\n".join(md) + "\n")
    summary = {"samples": sum(s["samples"] for s in per_family.values()),
               "bytes": sum(s["bytes"] for s in per_family.values()),
               "skipped": sum(s["skipped"] for s in per_family.values()),
               "failed": sum(s.get("failed", 0) for s in per_family.values()),
               "families": {f: s["samples"] for f, s in per_family.items()}, **totals}
    write_json(reports / "dataset_stats.json", summary)
    return summary
