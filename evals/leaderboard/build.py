"""Build the leaderboard: our result JSONs beside the papers' published tables.

Outputs, written atomically into one folder:

* ``leaderboard.md``   -- one table per (benchmark, setting); our rows are marked **ours** and
  listed with the command that made them, the papers' rows name their table;
* ``leaderboard.csv``  -- long layout, one line per (row, metric), unrounded values; columns
  ``CSV_COLUMNS`` (``origin`` is ``ours`` or ``published``; ``section`` is ``paper`` or
  ``world``). Pivot on ``metric`` for a wide view;
* ``leaderboard.html`` -- one self-contained static page: sortable tables (click a header;
  ``#sort=<metric>`` in the URL sorts every table with that column on load), sample grids
  embedded as data URIs, inline SVG bar charts.

Printed numbers use the papers' precision for each metric so columns compare at a glance.
Procedural-world editions (``world_*``) get their own section: they are offline sanity runs,
not comparable with the papers, and have no published rows.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import mimetypes
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PUBLISHED_PATH = Path(__file__).with_name("published.yaml")

# The Benchmark base class writes "default" when a benchmark has a single setting; the papers'
# tables call that whole test set "all".
SETTING_ALIASES = {"default": "all"}

Kind = Literal["model", "baseline", "predictions", "annotators", "published"]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


class ResultError(ValueError):
    """A result file or published entry that cannot be read; the message names it and the field."""


class Row(BaseModel):
    """One line of a leaderboard table: one model on one (benchmark, setting)."""

    model_config = ConfigDict(frozen=True)

    benchmark: str
    setting: str
    model: str
    kind: Kind
    metrics: dict[str, float]
    source: str  # the paper's table for published rows, the result file for ours
    random_weights: bool = False
    command: str | None = None
    data: str | None = None
    n_items: int | None = None
    samples: Path | None = None
    created: str | None = None
    model_hash: str | None = None
    data_hash: str | None = None
    protocol_version: str | None = None
    note: str | None = None
    info: dict[str, int | float | None] = {}

    @property
    def ours(self) -> bool:
        return self.kind != "published"

    @property
    def world(self) -> bool:
        return is_world(self.benchmark)


# --- input schemas ---------------------------------------------------------------------------

class _ResultModel(BaseModel):
    name: Text
    kind: Literal["model", "baseline", "predictions", "annotators"]
    hash: Text
    # Optional: "random" marks seeded random weights (tests, smoke runs), labelled on the page.
    weights: str | None = None


class _ResultData(BaseModel):
    name: Text
    hash: Text


class _ResultFile(BaseModel):
    benchmark: Text
    setting: Text
    model: _ResultModel
    data: _ResultData
    protocol_version: Text
    metrics: Annotated[dict[str, Number], Field(min_length=1)]
    n_items: Annotated[int, Field(strict=True, ge=0)]
    command: Text
    samples: str | None = None
    created: Text


class _PublishedEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark: Text
    setting: Text
    model: Text
    metrics: Annotated[dict[str, Number], Field(min_length=1)]
    source: Text
    note: str | None = None
    # int | float keeps "14" and "2.0" printed as the paper prints them
    info: dict[str, Annotated[int, Field(strict=True)] | Number | None] = {}


def _field_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"field {loc!r}: {err['msg']}{more}"


# --- loading ---------------------------------------------------------------------------------

def _result_files(paths: Iterable[Path | str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        # A folder stands for every result.json below it (one per benchmark run).
        files.extend(sorted(p.rglob("result.json")) if p.is_dir() else [p])
    return files


def load_results(paths: Iterable[Path | str], root: Path | None = None) -> list[Row]:
    """Read and validate result JSONs (files, or folders searched for ``result.json``).

    ``samples`` paths in the results are relative to ``root`` (default: the project root).
    Raises ``ResultError`` naming the file and the first bad field.
    """
    root = PROJECT_ROOT if root is None else root
    rows = []
    for path in _result_files(paths):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ResultError(f"{path}: result file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultError(f"{path}: not valid JSON ({e})") from None
        try:
            r = _ResultFile.model_validate(raw)
        except ValidationError as e:
            raise ResultError(f"{path}: {_field_error(e)}") from None
        samples = None
        if r.samples:
            samples = Path(r.samples) if Path(r.samples).is_absolute() else root / r.samples
        rows.append(Row(
            benchmark=r.benchmark, setting=SETTING_ALIASES.get(r.setting, r.setting), model=r.model.name,
            kind=r.model.kind, metrics=r.metrics, source=str(path),
            random_weights=(r.model.weights or "").lower() == "random", command=r.command,
            data=r.data.name, n_items=r.n_items, samples=samples, created=r.created,
            model_hash=r.model.hash, data_hash=r.data.hash, protocol_version=r.protocol_version))
    return rows


def load_published(path: Path = PUBLISHED_PATH) -> list[Row]:
    """The papers' table rows from ``published.yaml``, in the file's order."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ResultError(f"{path}: expected a list of entries")
    rows = []
    for i, raw in enumerate(entries):
        try:
            e = _PublishedEntry.model_validate(raw)
        except ValidationError as err:
            raise ResultError(f"{path}: entry {i}: {_field_error(err)}") from None
        rows.append(Row(benchmark=e.benchmark, setting=e.setting, model=e.model, kind="published",
                        metrics=e.metrics, source=e.source, note=e.note, info=e.info))
    return rows


# --- metrics and benchmarks ------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    label: str
    higher_is_better: bool
    decimals: int | None  # the papers' printed precision; None: 4 significant digits


METRICS: dict[str, Metric] = {
    "overall": Metric("Overall", True, 2),
    "single_object": Metric("Single obj.", True, 2),
    "two_object": Metric("Two obj.", True, 2),
    "counting": Metric("Counting", True, 2),
    "colors": Metric("Colors", True, 2),
    "position": Metric("Position", True, 2),
    "color_attr": Metric("Color attr.", True, 2),
    "correct_images": Metric("Correct images", True, 2),
    "correct_prompts": Metric("Correct prompts", True, 2),
    "detector_map50": Metric("Detector mAP50", True, 2),
    "detector_noise_fp": Metric("Detector sees shapes in noise", False, 2),
    "psnr": Metric("PSNR", True, 2),
    "ssim": Metric("SSIM", True, 3),
    "lpips": Metric("LPIPS", False, 3),
    "rot_acc_15": Metric("Rot. acc@15° (%)", True, 1),
    "centre_acc_10": Metric("Centre acc@0.1 (%)", True, 1),
    "id": Metric("ID", True, 3),
    "clip_t": Metric("CLIP-T", True, 2),
    "id_detected": Metric("ID (found subjects)", True, 3),
    "det_rate": Metric("Subject found (%)", True, 1),
    "abs_rel": Metric("AbsRel (×100)", False, 1),
    "delta1": Metric("δ1 (%)", True, 1),
    "fid": Metric("FID-6K", False, 2),
    "depth_abs_rel": Metric("Depth AbsRel (%)", False, 2),
    "depth_delta1": Metric("Depth δ1 (%)", True, 1),
    "box_ap50": Metric("Box AP50 (%)", True, 1),
    "mask_iou": Metric("Mask IoU (%)", True, 1),
    "caption_valid": Metric("Valid captions (%)", True, 1),
    "entity_recall": Metric("Entity recall (%)", True, 1),
    "caption_recall": Metric("Caption noun recall (%)", True, 1),
    "edge_emse": Metric("Edge EMSE (×1e-2)", False, 2),
    "edge_emse_levels": Metric("Edge EMSE, three-level maps (×1e-2)", False, 2),
    "depth_edge_emse": Metric("Depth→image edge EMSE (×1e-2)", False, 2),
    "pose_pck": Metric("Pose PCK@0.1 (%)", True, 2),
    "pose_pck_all": Metric("Pose PCK@0.1, missing people wrong (%)", True, 2),
}
INFO_LABELS = {"params_b": "Params (B)", "data_m": "# Data (M)"}

# (title, description) in page order; benchmarks not listed follow alphabetically.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "geneval": ("GenEval — text-to-image", "553 prompts × 4 images, mean of six tag accuracies (OneDiffusion Table 1). "
                "Our rows are judged by a YOLO segmentation detector, not GenEval's Mask2Former: a YOLO score is "
                "trained towards its box's IoU, so GenEval's 0.9 counting threshold is stricter with it, and our "
                "numbers sit beside the published ones as an approximation, not a reproduction."),
    "depth_nyuv2": ("Depth — NYUv2", "654 test images, affine-invariant AbsRel and δ1 (OneDiffusion Table 4, UniCon Table 2)."),
    "depth_diode": ("Depth — DIODE", "771 validation images, affine-invariant AbsRel and δ1 (OneDiffusion Table 4)."),
    "depth_scannet": ("Depth — ScanNet", "UniCon Table 2 only; there is no ScanNet benchmark here."),
    "nvs_gso": ("Novel-view synthesis — GSO", "30 objects, targets are views 10–24 (OneDiffusion Table 2)."),
    "pose_gso": ("Camera pose — GSO", "Rotation and camera-centre accuracy; the papers' tables print no camera-pose numbers."),
    "unsplash50_id": ("ID customisation — Unsplash-50", "ArcFace ID similarity and CLIP-T (OneDiffusion Table 3). "
                      "Table 3's PhotoMaker, InstantID and PuLID rows are PuLID's own Unsplash-50 figures, scored "
                      "with its face pipeline; ours detects faces with MTCNN and embeds them with the configured "
                      "ArcFace, so the ID column sits beside theirs as an approximation."),
    "unicon_conditions": ("Conditional generation — UniCon conditions", "FID-6K and condition fidelity per condition (UniCon Table 1). "
                          "For softedge: UniCon released no evaluation code; our EMSE is over the non-zero pixels of "
                          "HED's own maps (the three-level maps' reading beside it, far above UniCon's scale), and "
                          "sits beside its numbers as an approximation."),
    "world_geneval": ("World — text-to-image", "GenEval's rules on prompts in the world's grammar, judged by a "
                      "YOLO detector trained on world renders (its held-out mAP50 shown; counting at the score "
                      "threshold fitted to it, not GenEval's 0.9); the oracle renders each prompt exactly, so its "
                      "score is the evaluation's own ceiling."),
    "world_depth": ("World — depth", "Depth protocol on held-out procedural scenes with exact depth."),
    "world_nvs": ("World — novel views", "NVS protocol on procedural orbits."),
    "world_pose": ("World — camera pose", "Pose protocol on jittered procedural rigs."),
    "world_id": ("World — ID customisation", "ID protocol on procedural subjects."),
    "world_conditions": ("World — conditions", "UniCon condition metrics on procedural scenes, and "
                         "depth→image scored by Canny against the true image (the world's depth is exact)."),
    "annotators": ("World — annotator quality", "The configured One-Gen annotators against exact ground truth: "
                   "depth AbsRel/δ1 after alignment, box AP50, mask IoU, caption validity and noun recall."),
}
WORLD_INTRO = ("These editions run the same protocols on the built-in procedural world (rendered scenes with "
               "exact depth, masks, boxes and cameras) so that the pipeline is meaningful offline. They are "
               "sanity checks of the code, not comparable with any number in the papers, and have no "
               "published rows.")

CSV_COLUMNS = ["benchmark", "setting", "section", "origin", "model", "kind", "random_weights", "metric", "value",
               "higher_is_better", "source", "command", "data", "n_items", "model_hash", "data_hash",
               "protocol_version", "created", "note"]


def is_world(benchmark: str) -> bool:
    return benchmark.startswith("world_") or benchmark == "annotators"  # annotators: scored on world scenes


def metric_info(key: str) -> Metric:
    # Unknown metrics still print; lower-is-better is guessed only from the common error names.
    lower = any(t in key for t in ("err", "rel", "fid", "lpips", "mse", "loss"))
    return METRICS.get(key, Metric(key, not lower, None))


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return ""
    d = metric_info(key).decimals
    return f"{value:.4g}" if d is None else f"{value:.{d}f}"


def kind_label(row: Row) -> str:
    return "random weights" if row.ours and row.random_weights else row.kind


def _info_text(row: Row) -> str:
    parts = [f"{INFO_LABELS.get(k, k)} {'–' if v is None else v}" for k, v in row.info.items()]
    if row.note:
        parts.append(row.note)
    return "; ".join(parts)


# --- tables ----------------------------------------------------------------------------------

@dataclass
class Table:
    benchmark: str
    setting: str
    rows: list[Row]
    note: str  # why a table lacks one side (no published rows, no result of ours)

    @property
    def metrics(self) -> list[str]:
        keys = {k for r in self.rows for k in r.metrics}
        return [k for k in METRICS if k in keys] + sorted(keys - METRICS.keys())

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.benchmark}-{self.setting}".lower()).strip("-")


def _benchmark_order(names: set[str]) -> list[str]:
    return [b for b in BENCHMARKS if b in names] + sorted(names - BENCHMARKS.keys())


def make_tables(ours: Sequence[Row], published: Sequence[Row]) -> list[Table]:
    """Group rows by (benchmark, setting): ours first, then the papers' in their table order."""
    tables = []
    for bench in _benchmark_order({r.benchmark for r in [*ours, *published]}):
        pub = [r for r in published if r.benchmark == bench]
        mine = [r for r in ours if r.benchmark == bench]
        settings = list(dict.fromkeys(r.setting for r in pub))
        settings += sorted({r.setting for r in mine} - set(settings))
        for setting in settings:
            rows_ours = [r for r in mine if r.setting == setting]
            rows_pub = [r for r in pub if r.setting == setting]
            note = ""
            if not rows_pub and not is_world(bench):
                note = (f"No published rows for setting '{setting}'; the papers report: "
                        f"{', '.join(dict.fromkeys(r.setting for r in pub))}." if pub
                        else "No published numbers for this benchmark.")
            elif not rows_ours and not is_world(bench):
                note = "No result of ours yet."
            tables.append(Table(bench, setting, rows_ours + rows_pub, note))
    return tables


# --- Markdown --------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table, commands: list[Row]) -> list[str]:
    keys = t.metrics
    with_notes = any(_info_text(r) for r in t.rows)
    head = ["", "Model", "Kind", *(f"{metric_info(k).label} {'↑' if metric_info(k).higher_is_better else '↓'}"
                                   for k in keys), "Source", *(["Notes"] if with_notes else [])]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---", "---", *("---:" for _ in keys), "---", *(["---"] if with_notes else [])]) + "|"]
    for r in t.rows:
        if r.ours:
            commands.append(r)
            source = f"ours [{len(commands)}]"
        else:
            source = r.source
        cells = ["**ours**" if r.ours else "", r.model, kind_label(r), *(fmt(k, r.metrics.get(k)) for k in keys),
                 source, *([_info_text(r)] if with_notes else [])]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def render_markdown(tables: Sequence[Table], n_results: int) -> str:
    out = ["# Leaderboard", "",
           f"Built from {n_results} result file(s) and `evals/leaderboard/published.yaml`. "
           "Rows marked **ours** come from this project's result JSONs (Kind says whether a trained model, "
           "random weights, a no-learning baseline or prediction files); the others are transcribed from the "
           "papers' tables. Numbers are printed at the papers' precision; `leaderboard.csv` holds them "
           "unrounded, one line per (row, metric).", ""]
    commands: list[Row] = []
    for section, title in ((False, "Paper benchmarks"), (True, "Procedural-world sanity editions")):
        chosen = [t for t in tables if is_world(t.benchmark) == section]
        if not chosen:
            continue
        out += [f"## {title}", ""]
        if section:
            out += [f"> {WORLD_INTRO}", ""]
        for t in chosen:
            name, desc = BENCHMARKS.get(t.benchmark, (t.benchmark, ""))
            out += [f"### {name} · `{t.benchmark}` · {t.setting}", ""]
            if desc:
                out += [desc, ""]
            if t.note:
                out += [f"*{t.note}*", ""]
            out += [*_md_table(t, commands), ""]
    if commands:
        out += ["## How our rows were made", ""]
        for i, r in enumerate(commands, 1):
            out.append(f"{i}. `{r.command}` — {r.model} ({kind_label(r)}) on {r.data}, {r.n_items} items, "
                       f"protocol {r.protocol_version}, {r.created}; result `{r.source}`")
        out.append("")
    return "\n".join(out)


# --- CSV -------------------------------------------------------------------------------------

def render_csv(tables: Sequence[Table]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for t in tables:
        for r in t.rows:
            for k in t.metrics:
                if k not in r.metrics:
                    continue
                w.writerow({
                    "benchmark": r.benchmark, "setting": r.setting, "section": "world" if r.world else "paper",
                    "origin": "ours" if r.ours else "published", "model": r.model, "kind": r.kind,
                    "random_weights": r.random_weights, "metric": k, "value": repr(r.metrics[k]),
                    "higher_is_better": metric_info(k).higher_is_better, "source": r.source,
                    "command": r.command or "", "data": r.data or "", "n_items": "" if r.n_items is None else r.n_items,
                    "model_hash": r.model_hash or "", "data_hash": r.data_hash or "",
                    "protocol_version": r.protocol_version or "", "created": r.created or "", "note": r.note or ""})
    return buf.getvalue()


# --- HTML ------------------------------------------------------------------------------------

_COLOURS = {"model": "#1d4ed8", "random weights": "#c2410c", "baseline": "#6b7280", "predictions": "#0f766e",
            "annotators": "#7c3aed", "published": "#cbd5e1"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;margin:0;background:#f8fafc}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin:36px 0 8px;border-bottom:2px solid #e5e7eb;padding-bottom:4px}
h3{margin:28px 0 4px}h4{margin:18px 0 6px;color:#374151}
p.desc{margin:2px 0 8px;color:#4b5563}p.note{font-style:italic;color:#92400e;margin:4px 0}
nav a{margin-right:12px}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
table.lb{border-collapse:collapse;background:#fff;margin:6px 0;box-shadow:0 1px 2px #0001;min-width:520px}
table.lb th,table.lb td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left;white-space:nowrap}
table.lb td.num,table.lb th.num{text-align:right;font-variant-numeric:tabular-nums}
table.lb th{background:#f1f5f9;cursor:pointer;user-select:none;white-space:normal;vertical-align:bottom}
table.lb th:hover{background:#e2e8f0}
table.lb th[aria-sort=ascending]::after{content:" ▲";font-size:10px}
table.lb th[aria-sort=descending]::after{content:" ▼";font-size:10px}
tr.ours td{background:#eff6ff;font-weight:600}
tr.ours.kind-baseline td,tr.ours.kind-random td{background:#fff7ed}
table.lb td.src{color:#6b7280;font-size:12px;white-space:normal;min-width:240px;max-width:360px}
table.lb td.src code{font-size:11px;color:#1f2937;word-break:break-all}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-weight:600;color:#fff}
.badge.published{background:#94a3b8}.badge.model{background:#1d4ed8}.badge.baseline{background:#6b7280}
.badge.predictions{background:#0f766e}.badge.random{background:#c2410c}.badge.annotators{background:#7c3aed}
.scroll{overflow-x:auto}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 4px}
.charts svg{background:#fff;box-shadow:0 1px 2px #0001}
.samples{display:flex;flex-wrap:wrap;gap:12px}
.samples figure{margin:4px 0;background:#fff;padding:6px;box-shadow:0 1px 2px #0001}
.samples img{max-width:560px;image-rendering:pixelated;display:block}
.samples figcaption{font-size:12px;color:#4b5563}
section.world{background:#fefce8;border:1px solid #fde68a;border-radius:6px;padding:4px 16px 16px;margin-top:36px}
"""

# Sorting: the first click on a metric puts the best first (its direction says which way is
# better), later clicks flip; blanks stay last. "#sort=<key>" clicks that header of every table on
# load, so the URL form and a user's click share one code path.
_JS = """
(function () {
  function value(row, i, numeric) {
    var c = row.cells[i];
    if (numeric) { var v = c.getAttribute('data-v'); return v === null || v === '' ? null : parseFloat(v); }
    return c.textContent.trim().toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest('table');
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.classList.contains('num');
    var prev = th.getAttribute('aria-sort');
    var dir = prev ? (prev === 'ascending' ? 'desc' : 'asc') : (th.getAttribute('data-better') === 'high' ? 'desc' : 'asc');
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, numeric), y = value(b, i, numeric);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return dir === 'asc' ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.setAttribute('data-sorted-by', th.getAttribute('data-key'));
    table.setAttribute('data-sort-dir', dir);
  }
  document.querySelectorAll('table.lb th[data-key]').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
  });
  var m = /^#sort=([A-Za-z0-9_.-]+)$/.exec(location.hash);
  if (m) {
    document.querySelectorAll('table.lb th[data-key="' + m[1] + '"]').forEach(function (th) { th.click(); });
  }
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(row: Row) -> str:
    label = kind_label(row)
    return f'<span class="badge {label.split()[0]}">{_e(label)}</span>'


def _html_table(t: Table) -> str:
    keys = t.metrics
    head = ['<th data-key="origin">Origin</th>', '<th data-key="model">Model</th>', '<th data-key="kind">Kind</th>']
    for k in keys:
        m = metric_info(k)
        head.append(f'<th class="num" data-key="{_e(k)}" data-better="{"high" if m.higher_is_better else "low"}" '
                    f'title="{"higher" if m.higher_is_better else "lower"} is better">'
                    f'{_e(m.label)} {"↑" if m.higher_is_better else "↓"}</th>')
    head.append('<th data-key="source">Source</th>')
    body = []
    for r in t.rows:
        cls = f"ours kind-{'random' if r.random_weights else r.kind}" if r.ours else "published"
        cells = [f"<td>{'ours' if r.ours else 'paper'}</td>", f"<td>{_e(r.model)}</td>", f"<td>{_badge(r)}</td>"]
        for k in keys:
            v = r.metrics.get(k)
            cells.append(f'<td class="num" data-v="{"" if v is None else repr(v)}">{_e(fmt(k, v))}</td>')
        if r.ours:
            src = f"<code>{_e(r.command)}</code><br>{_e(r.data)}, {r.n_items} items"
        else:
            src = _e(r.source) + (f"<br>{_e(_info_text(r))}" if _info_text(r) else "")
        cells.append(f'<td class="src">{src}</td>')
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return (f'<table class="lb" id="t-{t.anchor}" data-benchmark="{_e(t.benchmark)}" data-setting="{_e(t.setting)}">'
            f'<thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _bar_chart(t: Table, key: str) -> str:
    """Horizontal bars, one per row that reports ``key``; ours coloured by kind, the papers' grey."""
    rows = [r for r in t.rows if key in r.metrics]
    m = metric_info(key)
    label_w, plot_w, bar_h, gap, top = 220, 220, 14, 5, 26
    values = [r.metrics[key] for r in rows]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    height = top + len(rows) * (bar_h + gap) + 6
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 70}" height="{height}" '
             f'role="img" aria-label="{_e(m.label)} by model">',
             f'<text x="8" y="17" font-size="13" font-weight="600">{_e(m.label)} '
             f'{"↑ higher is better" if m.higher_is_better else "↓ lower is better"}</text>']
    for i, r in enumerate(rows):
        y = top + i * (bar_h + gap)
        v = r.metrics[key]
        x0 = label_w + (0 - lo) / span * plot_w
        x1 = label_w + (v - lo) / span * plot_w
        name = (f"★ {r.model} ({kind_label(r)})" if r.ours else r.model)
        short = name if len(name) <= 36 else name[:35] + "…"
        colour = _COLOURS[kind_label(r)]
        weight = "600" if r.ours else "400"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" font-size="11" text-anchor="end" '
                     f'font-weight="{weight}">{_e(short)}</text>')
        parts.append(f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{max(abs(x1 - x0), 1):.1f}" height="{bar_h}" '
                     f'fill="{colour}"><title>{_e(name)}: {_e(fmt(key, v))} — {_e(r.source if not r.ours else "ours")}'
                     f'</title></rect>')
        parts.append(f'<text x="{max(x0, x1) + 4:.1f}" y="{y + bar_h - 3}" font-size="11">{_e(fmt(key, v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_samples(rows: Sequence[Row]) -> str:
    figures, seen = [], set()
    for r in rows:
        if r.ours and r.samples is not None and r.samples.is_file() and r.samples not in seen:
            seen.add(r.samples)
            figures.append(f'<figure><img alt="samples: {_e(r.model)}, {_e(r.setting)}" src="{_data_uri(r.samples)}">'
                           f'<figcaption>{_e(r.model)} ({_e(kind_label(r))}) · {_e(r.setting)}</figcaption></figure>')
    return f'<div class="samples">{"".join(figures)}</div>' if figures else ""


def _html_benchmark(bench: str, tables: Sequence[Table]) -> str:
    name, desc = BENCHMARKS.get(bench, (bench, ""))
    out = [f'<article id="b-{_e(bench)}"><h3>{_e(name)} <small><code>{_e(bench)}</code></small></h3>']
    if desc:
        out.append(f'<p class="desc">{_e(desc)}</p>')
    out.append(_html_samples([r for t in tables for r in t.rows]))
    for t in tables:
        out.append(f'<h4 id="{t.anchor}">Setting: {_e(t.setting)}</h4>')
        if t.note:
            out.append(f'<p class="note">{_e(t.note)}</p>')
        out.append(f'<div class="scroll">{_html_table(t)}</div>')
        out.append('<div class="charts">' + "".join(_bar_chart(t, k) for k in t.metrics) + "</div>")
    out.append("</article>")
    return "".join(out)


def render_html(tables: Sequence[Table], n_results: int) -> str:
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{_e(k if k == "published" else "ours: " + k)}</span>'
                     for k, c in _COLOURS.items())
    sections = []
    for world, title, sid in ((False, "Paper benchmarks", "paper"), (True, "Procedural-world sanity editions", "world")):
        chosen = [t for t in tables if is_world(t.benchmark) == world]
        if not chosen:
            continue
        benches = list(dict.fromkeys(t.benchmark for t in chosen))
        body = "".join(_html_benchmark(b, [t for t in chosen if t.benchmark == b]) for b in benches)
        intro = f'<p class="desc">{_e(WORLD_INTRO)}</p>' if world else ""
        sections.append(f'<section id="{sid}" class="{sid}"><h2>{_e(title)}</h2>{intro}{body}</section>')
    nav = " ".join(f'<a href="#b-{_e(b)}">{_e(BENCHMARKS.get(b, (b,))[0])}</a>'
                   for b in dict.fromkeys(t.benchmark for t in tables))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>onegen leaderboard</title>'
            f"<style>{_CSS}</style></head><body><main>"
            f"<h1>Leaderboard</h1><p class=\"desc\">Built from {n_results} result file(s) and "
            f"the papers' published tables (OneDiffusion Tables 1–4, UniCon Tables 1–2). Click a column header to "
            f"sort; add <code>#sort=psnr</code> (any metric key) to the URL to sort on load.</p>"
            f'<p class="legend">{legend}</p><nav>{nav}</nav>{"".join(sections)}'
            f"</main><script>{_JS}</script></body></html>")


# --- build -----------------------------------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_leaderboard(result_paths: Iterable[Path | str], out_dir: Path, *, root: Path | None = None,
                      published: Sequence[Row] | None = None) -> dict:
    """Write leaderboard.md/.csv/.html into ``out_dir``; returns their paths and row counts.

    Every input is validated before anything is written, so a bad result file leaves an
    existing leaderboard untouched. The output depends only on the inputs (no build time), so
    an unchanged set of results rebuilds byte-identical files.
    """
    ours = load_results(result_paths, root=root)
    published = load_published() if published is None else list(published)
    tables = make_tables(ours, published)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv", "html": out_dir / "leaderboard.html"}
    _write_atomic(paths["md"], render_markdown(tables, len(ours)))
    _write_atomic(paths["csv"], render_csv(tables))
    _write_atomic(paths["html"], render_html(tables, len(ours)))
    return {**paths, "n_ours": len(ours), "n_published": len(published),
            "tables": [f"{t.benchmark}/{t.setting}" for t in tables]}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry for ``onegen leaderboard``: a bad result file is one error line, exit 1."""
    ap = argparse.ArgumentParser(prog="onegen leaderboard", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path, help="result JSONs, or folders holding result.json files")
    ap.add_argument("--out", type=Path, default=Path("reports/leaderboard"), help="output folder")
    args = ap.parse_args(argv)
    try:
        info = build_leaderboard(args.results, args.out)
    except ResultError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"leaderboard: {info['n_ours']} result(s), {info['n_published']} published rows -> {args.out}")
    return 0
