"""OneDiffusion's text-to-image answer to GenEval (``ModelPredictor.generate_images``) on tiny
random weights: the plumbing (shapes, seeding, labelling), never the method."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save_file

from evals.model_predictor import ModelPredictor
from model.nextdit import CONFIGS, NextDiT
from onegen.config import Params


def test_generate_images_gives_each_prompt_its_images(tmp_path):
    step = tmp_path / "step_0000001"
    step.mkdir()
    torch.manual_seed(0)
    save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    pred = ModelPredictor(Params(), step, steps=2, cfg_scale=2.0, seed=0)
    items = [{"id": "a", "prompt": "A photo of two cubes.", "n_images": 3, "size": (32, 32)},
             {"id": "b", "prompt": "A photo of a red sphere.", "n_images": 2, "size": (32, 48)}]
    out = pred.generate_images(items)
    assert [len(x) for x in out] == [3, 2]
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in out[0])
    assert all(im.shape == (32, 48, 3) for im in out[1])
    assert not np.array_equal(out[0][0], out[0][1])  # independent noise per image
    again = pred.generate_images(items[:1])
    assert all(np.array_equal(p, q) for p, q in zip(out[0], again[0]))  # seeded
    assert pred.describe()["weights"] == "random"
