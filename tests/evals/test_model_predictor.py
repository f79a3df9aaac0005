"""OneDiffusion through the sampler as a benchmark predictor, end to end on tiny random weights.

These runs check the plumbing (shapes, view order, decoding, labelling), not the method: the
weights are random and the result says so.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from model.nextdit import CONFIGS, NextDiT
from onegen.cli import app
from tests.evals.cli_output import printed_result
from evals.model_predictor import ModelPredictor
from onegen.config import load_params, profile_path

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelpred")
    step = root / "ck" / "step_0000001"
    step.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text(json.dumps({"step": 1, "ray_frame": 2}))
    (root / "ck" / "latest").write_text("step_0000001\n")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["evals"].update(sampling_steps=2, cfg_scale=2.0, batch_size=2)
    d["evals"]["world"].update(items=2, resolution=32, nvs_views=3, pose_views=3)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    return root


@pytest.mark.parametrize(("name", "keys"), [("world_depth", {"abs_rel", "delta1"}),
                                            ("world_nvs", {"psnr", "ssim"}),
                                            ("world_pose", {"rot_acc_15", "centre_acc_10"})])
def test_model_predictor_answers_every_benchmark(setup, name, keys):
    r = runner.invoke(app, ["eval", name, "-p", str(setup / "params.yaml"), "--predictor", f"model:{setup / 'ck'}"])
    assert r.exit_code == 0, r.output
    res = json.loads(printed_result(r.output).read_text())
    assert printed_result(r.output).parent.parent.name == "entries"  # beside the configured predictor's result
    assert res["model"]["kind"] == "model" and res["model"]["weights"] == "random"
    assert res["model"]["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")
    assert set(res["metrics"]) == keys and all(v == v for v in res["metrics"].values())  # no NaN


def test_missing_checkpoint_is_a_clear_error(setup):
    r = runner.invoke(app, ["eval", "world_depth", "-p", str(setup / "params.yaml"),
                            "--predictor", f"model:{setup / 'nowhere'}"])
    assert r.exit_code == 1 and "checkpoint" in r.output and "not found" in r.output


def test_retrained_weights_at_the_same_path_are_scored_afresh(setup, tmp_path):
    """Cached item scores follow the weights' bytes, not the checkpoint's path or file sizes."""
    step = tmp_path / "ck" / "step_0000001"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    (tmp_path / "ck" / "latest").write_text("step_0000001\n")
    args = ["eval", "world_depth", "-p", str(setup / "params.yaml"), "--predictor", f"model:{tmp_path / 'ck'}"]
    keys = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        keys.append(json.loads(printed_result(r.output).read_text())["model"]["hash"])
    items = printed_result(r.output).with_name("items.jsonl")
    assert keys[0] != keys[1]
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert sum(row["key"]["model"] == keys[1] for row in rows) == 2  # both items predicted again


def test_an_items_prediction_does_not_depend_on_its_batch(setup):
    """Noise is keyed by item id: the same depth alone, first or second in a batch (a resumed run drops
    scored items from its batches, which must not change the rest's scores)."""
    from evals import registry
    from evals.model_predictor import ModelPredictor
    from onegen.config import load_params

    params = load_params(setup / "params.yaml")
    items = list(registry.get("world_depth")(params).items())
    assert len(items) == 2
    predictor = ModelPredictor(params, setup / "ck", steps=2, cfg_scale=2.0)
    together = predictor.predict_depth(items)
    alone = predictor.predict_depth(items[1:])[0]
    swapped = predictor.predict_depth(items[::-1])[0]
    assert np.abs(together[1] - alone).max() < 1e-4 and np.abs(swapped - alone).max() < 1e-4
    assert np.abs(together[0] - together[1]).max() > 1e-3  # different items, different noise
    other_seed = ModelPredictor(params, setup / "ck", steps=2, cfg_scale=2.0, seed=1)
    assert other_seed.describe()["hash"] != predictor.describe()["hash"]  # cached scores follow the seed


def test_batched_calls_answer_as_one_item_at_a_time(setup, monkeypatch):
    """Text-to-image prompts, novel-view objects, camera rigs and ID subjects of one layout share sampler calls
    (up to SAMPLE_TOKENS latent tokens a call); each item's answer is the one it gets alone (its noise is its own)."""
    from evals import registry
    from evals.model_predictor import ModelPredictor, layout_runs, token_runs

    assert token_runs([3, 3, 3, 5, 9, 1], budget=6) == [[0, 1], [2], [3], [4], [5]]  # never split, never merged past
    assert list(layout_runs(["a", "b", "a", "a"], [2, 1, 2, 3], budget=4)) == [("a", [0, 2]), ("a", [3]), ("b", [1])]
    params = load_params(setup / "params.yaml")
    pred = ModelPredictor(params, setup / "ck", steps=2, cfg_scale=2.0)
    calls = []
    sample = pred._sample
    pred._sample = lambda views, *a: calls.append(len(views)) or sample(views, *a)

    def close(a: np.ndarray, b: np.ndarray) -> bool:  # a batched GEMM may round differently: a grey level at most
        return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1

    prompts = [{"id": f"p{i}", "prompt": f"A photo of {i + 1} red cubes.", "n_images": 2, "size": (32, 32)}
               for i in range(3)] + [{"id": "wide", "prompt": "A blue sphere.", "n_images": 1, "size": (32, 48)}]
    together = pred.generate_images(prompts)
    assert calls == [6, 1]  # the square prompts in one call, the wide one in its own
    assert all(close(a, b) for it, imgs in zip(prompts, together) for a, b in zip(imgs, pred.generate_images([it])[0]))

    calls.clear()
    first, second = registry.get("world_nvs")(params).items()  # 3 views each
    unposed = {"condition_views": [0, 2], "target_views": [1], "poses_known": False}
    objects = [first, second | unposed, second, first | unposed]  # two layouts, interleaved
    views = pred.predict_views(objects)
    assert calls == [2, 2] and [sorted(v) for v in views] == [[1, 2], [1], [1, 2], [1]]
    assert all(close(views[n][i], pred.predict_views([it])[0][i]) for n, it in enumerate(objects) for i in views[n])

    import evals.model_predictor as mp

    rig_calls = []
    estimate = mp.estimate_cameras
    monkeypatch.setattr(mp, "estimate_cameras",
                        lambda d, z, *a, **k: rig_calls.append(len(z)) or estimate(d, z, *a, **k))
    world_rigs = list(registry.get("world_pose")(params).items())
    zoomed = world_rigs[0] | {"K": np.asarray(world_rigs[0]["K"]) * [[1.2, 1, 1], [1, 1.2, 1], [1, 1, 1]]}
    rigs = [*world_rigs, zoomed, world_rigs[1] | {"K": None}]  # None: intrinsics estimated too
    cams = pred.predict_cameras(rigs)
    assert rig_calls == [len(world_rigs), 1, 1]  # the world's rigs share their intrinsics
    for (rot, centre), it in zip(cams, rigs):
        rot_alone, centre_alone = pred.predict_cameras([it])[0]
        assert np.abs(rot - rot_alone).max() < 1e-3 and np.abs(centre - centre_alone).max() < 1e-3

    calls.clear()
    one, other = registry.get("world_id")(params).items()  # one reference each
    twice = other | {"reference": other["reference"] * 2, "reference_captions": other["reference_captions"] * 2}
    subjects = [one, twice, other, one]
    made = pred.generate_with_reference(subjects)
    assert calls == [3, 1]  # by reference count: [one, other, one], then the two-reference subject
    assert all(close(made[n], pred.generate_with_reference([it])[0]) for n, it in enumerate(subjects))


def test_the_transformer_samples_in_bf16_on_a_gpu_only_and_the_cache_knows():
    from evals.model_predictor import sampling_precision
    from onegen.config import Params

    assert Params().evals.precision == "bf16"  # as the released pipeline runs it
    assert sampling_precision("bf16", torch.device("cuda")) == "bf16"
    assert sampling_precision("fp32", torch.device("cuda")) == "fp32"
    assert sampling_precision("bf16", torch.device("cpu")) == "fp32"  # CPU autocast would only be slower


def test_a_checkpoint_of_another_size_is_refused_in_one_line(setup, tmp_path):
    import shutil

    from evals.model_predictor import ModelPredictor
    from onegen.config import load_params

    ck = tmp_path / "ck"
    shutil.copytree(setup / "ck", ck)
    meta = {"step": 1, "model_size": "small", "model_config": CONFIGS["small"].to_dict()}  # as the trainer writes
    (ck / "step_0000001" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"holds a 'small' model but model\.size is 'tiny'"):
        ModelPredictor(load_params(setup / "params.yaml"), ck)


def test_given_views_are_labelled_as_the_checkpoint_was_trained(setup, tmp_path):
    """A checkpoint trained with condition_prob > 0 saw its given views at σ 0: it is sampled so."""
    params = load_params(setup / "params.yaml")
    labels = {}
    for prob in (0.0, 0.5):
        step = tmp_path / f"p{prob}" / "step_0000001"
        step.mkdir(parents=True)
        torch.manual_seed(0)
        save_file(NextDiT(CONFIGS["tiny"]).state_dict(), str(step / "ema.safetensors"))
        (step / "meta.json").write_text(json.dumps({"step": 1, "condition_prob": prob}))
        pred = ModelPredictor(params, step)
        labels[prob] = (pred.given_label, pred.describe()["hash"])
    assert labels[0.0][0] == "released" and labels[0.5][0] == "zero"
    assert labels[0.0][1] != labels[0.5][1]  # other samples from the same weights: scored afresh
    # the latents it learned: SD3's shifted ones unless the trainer said otherwise (started from released weights)
    assert pred.codec.shift == pytest.approx(0.0609)
    assert pred.depth_space == "depth"  # a checkpoint from before the released depth convention: read as trained
    with pytest.raises(ValueError, match="learned depth drawn near-dark"):  # its depth inputs cannot be drawn so
        pred.generate_from_condition([{"condition_kind": "depth", "condition": np.zeros((32, 32, 3), np.uint8),
                                       "prompt": "p", "id": "x"}])
    (step / "meta.json").write_text(json.dumps({"step": 1, "condition_prob": 0.5, "vae_shift": False}))
    unshifted = ModelPredictor(params, step)
    assert unshifted.codec.shift == 0.0 and unshifted.describe()["hash"] != pred.describe()["hash"]
    (step / "meta.json").write_text(json.dumps({"step": 1, "condition_prob": 0.5, "depth_condition": 2}))
    disparity = ModelPredictor(params, step)
    assert disparity.depth_space == disparity.describe()["depth_space"] == "disparity"  # each result records it
    # rays: the current frame from the meta key on, and in the checkpoints of the depth convention that came after
    # it; before both, camera 0's OpenCV frame, whose model cannot read the rays drawn now
    assert ModelPredictor(params, step).ray_frame == 2
    (step / "meta.json").write_text(json.dumps({"step": 1, "ray_frame": 2}))
    current = ModelPredictor(params, step)
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    old_frame = ModelPredictor(params, step)
    assert old_frame.ray_frame == 1 and old_frame.describe()["hash"] != current.describe()["hash"]
    with pytest.raises(ValueError, match=r"learned ray maps in camera 0's OpenCV frame \(ray_frame 1\)"):
        old_frame.predict_views([{"condition_views": [0], "target_views": [1]}])


def _live_tiny_model() -> NextDiT:
    """A seeded tiny model whose velocity depends on its inputs: the zero-initialised output layer and gates
    would give v = 0 whatever the schedule or the rays."""
    torch.manual_seed(0)
    model = NextDiT(CONFIGS["tiny"])
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model


def test_a_released_folder_is_sampled_with_its_own_scheduler_config(setup, tmp_path):
    """The Hub layout keeps the σ shift in ``scheduler/scheduler_config.json`` beside ``transformer``;
    trainer checkpoints, and a transformer folder without that config, get SPEC's dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evals import registry
    from evals.model_predictor import schedule_shift
    from model.sampler import DynamicShift
    from tests.model.test_nextdit import _save_released_style

    hub = tmp_path / "OneDiffusion"
    _save_released_style(_live_tiny_model(), hub / "transformer", shards=1)
    assert schedule_shift(hub / "transformer") == DynamicShift()
    FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, max_shift=1.5).save_config(hub / "scheduler")
    assert schedule_shift(hub / "transformer") == DynamicShift(max_shift=1.5)
    weights = tmp_path / "step_0000001" / "ema.safetensors"  # a trainer checkpoint, beside a stray config
    weights.parent.mkdir()
    weights.write_bytes(b"")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_config(weights.parent / "scheduler")
    assert schedule_shift(weights) == DynamicShift()

    # the predictor samples with it: the same weights and noise give other depth under another schedule
    params = load_params(setup / "params.yaml")
    items = list(registry.get("world_depth")(params).items())[:1]
    dynamic = ModelPredictor(params, hub / "transformer", steps=2, cfg_scale=2.0)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_config(hub / "scheduler")
    static = ModelPredictor(params, hub / "transformer", steps=2, cfg_scale=2.0)
    assert static.describe()["shift"] == "3.0" and static.describe()["hash"] != dynamic.describe()["hash"]
    assert static.codec.shift == 0.0  # the released pipeline never applies the VAE's shift_factor
    assert static.depth_space == "disparity"  # its depth images are DA-V2's: near bright, linear in disparity
    assert np.abs(static.predict_depth(items)[0] - dynamic.predict_depth(items)[0]).max() > 1e-3


def test_unknown_poses_generate_the_later_condition_views_rays(setup, tmp_path):
    """GSO's 2- and 3-view settings without poses (paper Table 2): only the first condition view's camera is
    given. Moving another condition view's camera then changes no sample (its rays are generated, and it does
    not enter the given rays' frame), where with poses known it does; the baseline copies the first view."""
    from evals import registry
    from evals.predictors import NearestConditionView

    step = tmp_path / "step_0000001"
    step.mkdir()
    save_file(_live_tiny_model().state_dict(), str(step / "ema.safetensors"))
    (step / "meta.json").write_text(json.dumps({"step": 1, "ray_frame": 2}))
    params = load_params(setup / "params.yaml")
    pred = ModelPredictor(params, step, steps=2, cfg_scale=2.0)
    item = registry.get("world_nvs")(params).items()[0] | {"condition_views": [0, 1], "target_views": [2]}
    w2c = [np.asarray(m, dtype=np.float64) for m in item["world_to_camera"]]
    moved = [w2c[0], w2c[2], w2c[2]]  # view 1's camera where view 2's is
    out = {(known, name): pred.predict_views([item | {"world_to_camera": cams, "poses_known": known}])[0][2]
           for known in (True, False) for name, cams in (("true", w2c), ("moved", moved))}
    assert np.array_equal(out[False, "true"], out[False, "moved"])
    assert not np.array_equal(out[True, "true"], out[True, "moved"])
    seen = {}  # what the sampler got: view 1's ray slot (sequence position 3) generated, from zeros
    pred._sample = lambda views, start, *a: seen.update(views=views, start=start) or views
    pred.predict_views([item | {"world_to_camera": w2c, "poses_known": False}])
    assert seen["start"] == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0] and not seen["views"][0, 3].any()
    assert seen["views"][0, 1].any() and seen["views"][0, 5].any()  # the first view's and the target's rays given
    copied = NearestConditionView().predict_views([item | {"world_to_camera": moved, "poses_known": False}])[0][2]
    assert np.array_equal(copied, item["images"][0])  # with poses known it would copy view 1, now at view 2
    assert np.array_equal(NearestConditionView().predict_views([item | {"world_to_camera": moved}])[0][2],
                          item["images"][1])


def test_depth_benchmarks_align_in_the_predictors_space(setup):
    """The model's depth images are disparity (near bright, the released convention): a predictor says so with
    ``depth_space`` and the benchmark aligns in that space, where an exact affine disparity scores 0."""
    from evals import registry

    class Disparity:
        depth_space = "disparity"

        def predict_depth(self, items):
            return [3.0 / np.maximum(it["depth"], 1e-3) + 2.0 for it in items]

    bench = registry.get("world_depth")(load_params(setup / "params.yaml"))
    items = bench.items()
    preds = bench.predict(Disparity(), items)
    assert bench.space == "disparity" and all(bench.score(it, p)["abs_rel"] < 1e-6 for it, p in zip(items, preds))
    bench.space = "depth"  # the same maps read as depth: far off
    assert all(bench.score(it, p)["abs_rel"] > 0.05 for it, p in zip(items, preds))


def test_in_bf16_the_linear_weights_are_cast_once_to_the_same_velocities(setup, monkeypatch):
    """bf16 sampling (a GPU's; CPU autocast stands in) holds the linear layers in bf16, and the velocity is
    bit for bit what autocast gives with the fp32 weights it would cast at every forward."""
    from safetensors.torch import load_file

    from evals import model_predictor
    from model.nextdit import linear_parameters

    monkeypatch.setattr(model_predictor, "sampling_precision", lambda precision, device: precision)
    pred = ModelPredictor(load_params(setup / "params.yaml"), setup / "ck", steps=2, cfg_scale=2.0)
    assert pred.precision == "bf16" and {p.dtype for p in linear_parameters(pred.model)} == {torch.bfloat16}
    fp32 = NextDiT(CONFIGS["tiny"]).eval()
    fp32.load_state_dict(load_file(setup / "ck" / "step_0000001" / "ema.safetensors"))
    with torch.no_grad():
        for name, p in fp32.named_parameters():  # the saved gates and output layer are zero: every product counts
            p.add_(torch.randn_like(p) * 0.05)
            pred.model.get_parameter(name).copy_(p)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 2, 16, 4, 4, generator=g), torch.tensor([[0.0, 700.0]])
    cond = pred._cond(["a red cube"])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        expected = fp32(x, t, cond.embeds, cond.mask).float()
    assert torch.equal(pred._denoise(x, t, cond), expected)
