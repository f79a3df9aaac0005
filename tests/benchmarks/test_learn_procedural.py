"""learn_procedural's step-time probe: compiles are no cost of the steps to come."""

import pytest

from tests.benchmarks.scripts import load_script


def test_steady_step_seconds_leaves_compiles_out_and_keeps_the_family_mix():
    learn = load_script("learn_procedural")
    mix = [0.1, 0.3] * 20  # a cheap and a dear family, alternating: both are training cost
    seconds, kept = learn.steady_step_seconds([25.0, *mix[:10], 8.0, *mix[10:]])
    assert kept == 40 and seconds == pytest.approx(0.2)
    assert learn.steady_step_seconds([0.2] * 5) == (pytest.approx(0.2), 5)
