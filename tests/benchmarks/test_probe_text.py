"""probe_text: its scenes carry their caption's colour and shape, and a short run writes the judge's
ceiling and floor and both guidance scales' accuracies."""

import json
import subprocess
import sys

from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "probe_text.py"


def test_scenes_show_one_object_of_their_captions_colour_and_shape():
    probe = load_script("probe_text")
    images, labels, captions, share = probe.render_scenes(12, 0)
    assert images.shape == (12, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    for (colour, shape), caption in zip(labels.tolist(), captions):
        words = caption.lower().rstrip(".").split()
        assert probe.COLORS[colour] in words and probe.SHAPES[shape] in words, caption
    _, _, again, _ = probe.render_scenes(12, 0)
    assert again == captions and len(set(captions)) > 6
    *_, far_share = probe.render_scenes(12, 0, radius=(8.5, 11.5))
    assert probe.MIN_PIXELS / 32**2 < far_share < share < 0.5  # farther cameras: smaller objects, never empty


def test_a_short_run_reports_the_judge_and_both_guidance_scales(tmp_path):
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--scenes", "64", "--steps", "4", "--eval-every", "2",
                        "--batch", "4", "--judge-steps", "5", "--prompt-prefix", "[[text2image]]", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record["judge"]) == {"held_out", "other_prompts"} and 0 < record["object_share"] < 0.5
    assert [row["step"] for row in record["evals"]] == [2, 4]
    for scale in ("cfg1", "cfg3"):
        assert set(record["evals"][-1][scale]) == {"color", "shape"}
        assert all(0 <= v <= 1 for v in record["evals"][-1][scale].values())
