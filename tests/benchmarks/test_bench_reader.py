"""bench_reader: on a tiny world's latent shards it prints both decoders' figures and their ratios; without
shards it says which stage makes them."""

import re
import subprocess
import sys

from tests.benchmarks.scripts import BENCHMARKS, tiny_text2image_latents

SCRIPT = BENCHMARKS / "bench_reader.py"


def test_reports_members_and_stream_against_np_load(tmp_path):
    tiny_text2image_latents(tmp_path)
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
