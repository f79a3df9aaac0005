"""learn_procedural's step-time probe: compiles are no cost of the steps to come, dear families are."""

import pytest

from tests.benchmarks.scripts import load_script


def test_steady_step_seconds_leaves_compiles_out_and_keeps_the_family_mix():
    learn = load_script("learn_procedural")
    # text2image, depth and 8-view multiview batches in turn: the last costs 16x the first, 8x the median
    mix = [0.05, 0.1, 0.8] * 20
    seconds, kept = learn.steady_step_seconds([25.0, *mix[:10], 8.0, *mix[10:], 6.0])
    assert kept == 60 and seconds == pytest.approx((0.05 + 0.1 + 0.8) / 3)
    assert learn.steady_step_seconds([0.2] * 5) == (pytest.approx(0.2), 5)
