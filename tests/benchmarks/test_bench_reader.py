"""bench_reader: on a tiny world's latent shards it prints both decoders' figures and their ratios; without
shards it says which stage makes them."""

import re
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from onegen.cli import app
from onegen.config import profile_path
from tests.benchmarks.scripts import BENCHMARKS

SCRIPT = BENCHMARKS / "bench_reader.py"


def test_reports_members_and_stream_against_np_load(tmp_path):
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")}
    d["world"].update(scenes=3, id_groups=0, resolution=32, records_per_shard=4)
    d["latents"] = {"text": True, "batch_size": 4}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    for args in (["world"], ["shards", "text2image"], ["latents", "text2image"]):
        r = CliRunner().invoke(app, [*args, "-p", str(tmp_path / "params.yaml")])
        assert r.exit_code == 0, r.output
    r = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path / "data" / "latents"),
                        "--families", "text2image", "--samples", "8", "--batch", "2", "--batches", "3"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    members, stream = r.stdout.strip().splitlines()
    assert re.match(r"members: \d+ \.npy, .* np\.load [\d.]+ µs, ours [\d.]+ µs: [\d.]+x$", members)
    assert re.match(r"stream \(3 batches of 2, median of 3\): np\.load \d+ samples/s, ours \d+ samples/s: [\d.]+x$", stream)


def test_without_latent_shards_it_names_the_stage(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "run `dvc repro` (its latents stages) first" in r.stderr
