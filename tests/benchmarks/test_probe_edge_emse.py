"""probe_edge_emse: each reading is 0 for a copy, ranks a good generator above an unrelated image, and
the three-level maps' union reading sits an order of magnitude above the soft maps' one."""

import subprocess
import sys

import cv2
from skimage import data

from tests.benchmarks.scripts import BENCHMARKS, load_script


def test_readings_order_a_good_generator_before_an_unrelated_image():
    probe = load_script("probe_edge_emse")
    photo = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    reference = probe.stand_in_edges(photo, probe.SLOPES["soft"])
    copy = probe.readings(reference, reference)
    assert all(copy[k] == 0 for k in ("levels-union", "soft-union", "levels-all", "soft-all"))
    good = probe.readings(probe.stand_in_edges(probe.good_generator(photo, 0), probe.SLOPES["soft"]), reference)
    unrelated = probe.readings(probe.stand_in_edges(cv2.resize(data.rocket(), (128, 128)), probe.SLOPES["soft"]),
                               reference)
    for k in ("levels-union", "soft-union", "levels-all", "soft-all"):
        assert 0 < good[k] < unrelated[k], k
    assert good["levels-union"] > 10 * good["soft-union"]


def test_the_script_prints_every_photo_and_floor():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "probe_edge_emse.py"), "--side", "96"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("good generator") == 6 and out.count("unrelated") == 6
