"""``onegen sample`` end to end on a tiny random checkpoint: a labelled grid, never a result."""

import json

import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from model.nextdit import CONFIGS, NextDiT
from onegen.cli import app
from onegen.config import profile_path


def test_sample_grid_is_written_and_labelled_random(tmp_path):
    step = tmp_path / "ck" / "step_0000001"
    step.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text("{}")
    (tmp_path / "ck" / "latest").write_text("step_0000001\n")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")}
    d["world"]["resolution"] = 32
    d["evals"].update(sampling_steps=2, cfg_scale=2.0)
    d["train"]["out_dir"] = str(tmp_path / "ck")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["sample", "-p", str(tmp_path / "params.yaml")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "reports/samples/samples.json").read_text())
    assert info["model"]["weights"] == "random" and info["scenes"] == 4
    grid = Image.open(tmp_path / "reports/samples/samples.png")
    assert grid.size == (5 * 96, 4 * 96 + 16)
