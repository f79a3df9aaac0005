"""bench_caption_inputs: on the tiny processor it times both input paths (checking on every round that they give
the same ids and mask) and prints their figures and ratio."""

from tests.benchmarks.scripts import load_script


def test_times_both_paths_on_the_same_ids(capsys):
    bench = load_script("bench_caption_inputs")
    result = bench.main(["--quick", "--images", "6", "--size", "48", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "6 images of 48²" in out and "processor / ours:" in out
    ms = result["ms_per_image"]
    assert sorted(ms) == ["ours", "processor"] and all(v > 0 for v in ms.values())
    assert result["ratio"] == ms["processor"] / ms["ours"]
