"""StepProfile on a CPU: the host ops of the profiled window only, and no GPU figures."""

import torch

from benchmarks.gpu_profile import StepProfile


def test_step_profile_covers_its_window_and_names_the_host_ops():
    profile = StepProfile(torch.device("cpu"), first=3, last=7, top=4)
    a = torch.randn(64, 64)
    for step in range(1, 11):
        if 3 < step <= 7:  # the steps after `first` through `last`
            a = torch.mm(a, a).tanh()
        else:
            a = a.cumsum(0).tanh()  # outside the window: never in the profile
        profile.at(step)
    r = profile.result
    assert r["steps"] == 4 and r["gpu_ms_per_step"] is None and r["top_gpu"] == []
    ops = {row["op"]: row for row in r["top_host"]}
    assert "aten::mm" in ops and ops["aten::mm"]["calls"] == 4
    assert "aten::cumsum" not in ops
    assert r["wall_ms_per_step"] > 0
