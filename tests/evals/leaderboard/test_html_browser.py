"""The HTML leaderboard in a real headless browser (Debian's Chromium): tables render, sorting works.

``--dump-dom`` prints the DOM after the page's load-time scripts ran, so the ``#sort=<key>`` URL
form (which clicks that header of every table through the same handler a user's click hits)
exercises the sort script without a DevTools client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.leaderboard import build_leaderboard

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
if CHROMIUM is None:
    pytest.skip("chromium not installed: make test installs it", allow_module_level=True)


class _Tables(HTMLParser):
    """Collects every ``table.lb``: its attributes and its body rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self._table: dict | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "lb" in (a.get("class") or "").split():
            self._table = self.tables[a["id"]] = {"attrs": a, "rows": []}
        elif self._table is not None and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self._row = []
        elif self._row is not None and tag == "td":
            self._cell = []
        elif self._cell is not None and tag == "br":
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table["rows"].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _result(path: Path, benchmark: str, setting: str, metrics: dict, model: str, kind: str = "model",
            samples: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": benchmark, "setting": setting, "model": {"name": model, "kind": kind, "hash": "h"},
        "data": {"name": "d", "hash": "h"}, "protocol_version": "1", "metrics": metrics, "n_items": 3,
        "command": f"onegen eval {benchmark}", "samples": samples, "created": "2025-01-01T00:00:00+00:00"}))
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lb")
    grid = root / "reports/evals/nvs_gso/samples.png"
    grid.parent.mkdir(parents=True)
    Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (48, 1, 3))).save(grid)
    results = [
        _result(root / "r/nvs/result.json", "nvs_gso", "1-view", {"psnr": 19.46, "ssim": 0.85}, "onediffusion-2.8b",
                samples="reports/evals/nvs_gso/samples.png"),
        _result(root / "r/copy/result.json", "nvs_gso", "1-view", {"psnr": 12.3, "ssim": 0.61}, "copy-nearest-view",
                kind="baseline"),
        _result(root / "r/nyu/result.json", "depth_nyuv2", "default", {"abs_rel": 7.04, "delta1": 94.87},
                "onediffusion-2.8b"),
        _result(root / "r/world/result.json", "world_depth", "default", {"abs_rel": 3.2, "delta1": 98.1},
                "constant-depth", kind="baseline"),
    ]
    return build_leaderboard(results, root / "out", root=root)["html"]


def _chromium(tmp_path: Path, url: str, *flags: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *flags, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def _dom_tables(tmp_path: Path, url: str) -> dict[str, dict]:
    parser = _Tables()
    parser.feed(_chromium(tmp_path, url, "--dump-dom"))
    return parser.tables


def test_rendered_dom_has_our_rows_and_papers_rows(tmp_path, page):
    dom = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    parser = _Tables()
    parser.feed(dom)
    nvs = parser.tables["t-nvs-gso-1-view"]["rows"]
    assert nvs[0][:4] == ["ours", "onediffusion-2.8b", "model", "19.46"]
    assert ["ours", "copy-nearest-view", "baseline"] == nvs[1][:3]
    assert ["paper", "Zero123-XL", "published", "18.93"] == nvs[3][:4]
    assert "OneDiffusion (Le et al. 2024) Table 2" in nvs[3][-1]
    nyu = {r[1]: r for r in parser.tables["t-depth-nyuv2-all"]["rows"] if r[0] == "paper"}
    assert nyu["DepthAnything-2"][3:5] == ["4.6", "97.7"] and nyu["JointNet"][3:5] == ["13.7", "81.9"]
    assert parser.tables["t-world-depth-all"]["rows"] == [
        ["ours", "constant-depth", "baseline", "3.2", "98.1", "onegen eval world_depth d, 3 items"]]
    assert 'src="data:image/png;base64,' in dom
    assert not any("data-sorted-by" in t["attrs"] for t in parser.tables.values())  # no click, no #sort=


@pytest.mark.parametrize("key, table, column, expected", [
    # best first: PSNR descending, AbsRel ascending; our rows move among the papers'
    ("psnr", "t-nvs-gso-1-view", 3, ["20.24", "19.46", "19.01", "18.93", "18.51", "12.30"]),
    ("abs_rel", "t-depth-diode-all", 3, ["18.2", "24.6", "27.1", "27.1", "29.4", "31.0", "33.2", "33.9", "37.6"]),
])
def test_sort_script_runs_in_browser(tmp_path, page, key, table, column, expected):
    t = _dom_tables(tmp_path, f"{page.as_uri()}#sort={key}")[table]
    assert t["attrs"]["data-sorted-by"] == key
    assert t["attrs"]["data-sort-dir"] == ("desc" if key == "psnr" else "asc")
    assert [r[column] for r in t["rows"]] == expected


def test_screenshot_renders(tmp_path, page):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, page.as_uri(), "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1600, 1280)
    assert img.std() > 10  # text, tables and bars, not a blank page
