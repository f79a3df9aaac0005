"""bench_scaleout's throughput: samples over time across logged windows of unequal length."""


import pytest

from tests.benchmarks.scripts import load_script


def test_throughput_is_samples_over_time_of_the_second_half():
    throughput = load_script("bench_scaleout").throughput
    # windows of 5, 5, 5, 5 and a last one of 1 step; 10 samples a step
    rows = [{"step": s, "samples_per_s": r} for s, r in zip((5, 10, 15, 20, 21), (1.0, 1.0, 50.0, 25.0, 100.0))]
    late_steps, late_seconds = 5 + 5 + 1, 50 / 50 + 50 / 25 + 10 / 100  # windows 3..5: samples / rate
    assert throughput(rows) == pytest.approx(10 * late_steps / late_seconds)
    assert throughput(rows) < (50 + 25 + 100) / 3  # a stalled window is not averaged away
