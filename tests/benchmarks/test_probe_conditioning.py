"""probe_conditioning: its pixel 'latents' round-trip, its edge score tells own from other, and a
short run writes both directions' figures."""

import json
import subprocess
import sys

import torch

from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "probe_conditioning.py"



def test_pixel_latents_round_trip_and_edges_match_their_own_scene():
    probe = load_script("probe_conditioning")
    pairs = probe.render_pairs(16, 0)
    assert pairs.shape == (16, 2, 3, 32, 32) and pairs.min() >= -1 and pairs.max() <= 1
    z = probe.to_latents(pairs)
    assert z.shape == (16, 2, 16, 16, 16) and (z[:, :, 12:] == 0).all()
    assert torch.equal(probe.to_pixels(z), pairs)
    image_edges, depth_edges = probe.edge_map(pairs[:, 0]), probe.edge_map(pairs[:, 1])
    own = (image_edges * depth_edges).mean(dim=1)
    other = (image_edges * depth_edges.roll(1, 0)).mean(dim=1)
    print(f"edges of the image against its own depth {own.mean():.3f}, another scene's {other.mean():.3f}")
    assert own.mean() > other.mean() + 0.03  # a scene's depth edges outline its image's objects


def test_a_short_run_reports_both_directions(tmp_path):
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--pairs", "16", "--steps", "4", "--eval-every", "2",
                        "--batch", "4", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [row["step"] for row in record["evals"]] == [2, 4]
    for direction in ("depth2image", "image2depth"):
        figures = record["evals"][-1][direction]
        assert set(figures) == {"mse_own", "mse_other", "mse_mean_view", "edges_own", "edges_other", "edges_truth"}
        assert all(v == v for v in figures.values())  # no NaN
