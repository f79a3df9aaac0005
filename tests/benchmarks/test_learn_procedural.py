"""learn_procedural: its step-time probe (compiles are no cost of the steps to come, dear families are), its
stages, and its check that a trained model reads its prompt."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evals import model_predictor
from model.nextdit import CONFIGS, NextDiT
from onegen.config import TrainStage
from tests.benchmarks.scripts import load_script, tiny_text2image_latents


def test_steady_step_seconds_leaves_compiles_out_and_keeps_the_family_mix():
    learn = load_script("learn_procedural")
    # text2image, depth and 8-view multiview batches in turn: the last costs 16x the first, 8x the median
    mix = [0.05, 0.1, 0.8] * 20
    seconds, kept = learn.steady_step_seconds([25.0, *mix[:10], 8.0, *mix[10:], 6.0])
    assert kept == 60 and seconds == pytest.approx((0.05 + 0.1 + 0.8) / 3)
    assert learn.steady_step_seconds([0.2] * 5) == (pytest.approx(0.2), 5)


def test_stage_timing_says_where_the_train_seconds_went(tmp_path):
    learn = load_script("learn_procedural")
    # text2image at batch 256, 10 steps a logged window at 40 ms a step, one window slowed by a compile to 2 s a step;
    # then the mix at batch 64, 70 ms a step
    rates = [("t2i", 256 / 0.04)] * 5 + [("t2i", 256 / 2.0)] + [("t2i", 256 / 0.04)] * 4 + [("mixed", 64 / 0.07)] * 6
    rows = [{"step": 10 * (i + 1), "stage": stage, "samples_per_s": rate} for i, (stage, rate) in enumerate(rates)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = learn.stage_timing(tmp_path / "metrics.jsonl", {"t2i": 256, "mixed": 64})
    assert timing["t2i"] == {"steps": 100, "seconds": pytest.approx(23.6), "steady_ms_a_step": pytest.approx(40.0),
                             "left_out_seconds": pytest.approx(20.0)}
    assert timing["mixed"] == {"steps": 60, "seconds": pytest.approx(4.2), "steady_ms_a_step": pytest.approx(70.0),
                               "left_out_seconds": 0.0}


@pytest.fixture(scope="module")
def text2image_latents(tmp_path_factory):
    """A tiny world's text2image shards encoded to latents with their prompts' features, as the run makes them."""
    return tiny_text2image_latents(tmp_path_factory.mktemp("reliance"))


def _checkpoint(folder, model):
    folder.mkdir(parents=True)
    save_file(model.state_dict(), str(folder / "ema.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"step": 1}))
    return folder


def _open_text_path(model: NextDiT) -> NextDiT:
    """Cross-attention gates and the final layer drawn away from their zero start, so the prompt reaches the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name or "final_layer" in name:
                p.normal_(0, 0.5)
    return model


def test_stages_mix_the_families_from_the_start_or_after_text2image_alone():
    learn = load_script("learn_procedural")
    (mixed,) = learn.stages(1000, 0.0, 64)
    assert mixed["families"] == learn.FAMILIES and mixed["steps"] == 1000 and mixed["batch_size"] == 64
    first, then = learn.stages(1000, 0.4, 64)
    assert (first["families"], first["steps"], then["families"], then["steps"]) == (["text2image"], 400, learn.FAMILIES, 600)
    assert first["name"] != then["name"] and first["batch_size"] == then["batch_size"] == 64
    first, then = learn.stages(1000, 0.4, 64, t2i_batch=512)  # one-view samples: a bigger batch for the same GPU
    assert (first["batch_size"], then["batch_size"]) == (512, 64)
    with pytest.raises(ValueError, match="none of the 1000 steps"):
        learn.stages(1000, 1.0, 64)


def test_the_run_is_sized_by_each_stage_s_step_time_and_share():
    learn = load_script("learn_procedural")
    assert learn.steps_for_minutes(1.0, {"mixed": 0.1}, 0.0) == 600
    # 30% of the steps at 0.05 s, 70% at 0.1 s: 0.085 s a step on average
    assert learn.steps_for_minutes(1.0, {"t2i": 0.05, "mixed": 0.1}, 0.3) == 705
    assert learn.steps_for_minutes(0.01, {"mixed": 0.1}, 0.0) == 60  # a floor, so the run still learns something


def test_the_training_world_takes_its_object_counts_and_stages_from_the_command_line(tmp_path):
    learn = load_script("learn_procedural")
    params = learn.make_params(learn.parse_args(["--out", str(tmp_path), "--objects", "1", "4", "--steps", "100",
                                                 "--t2i-first", "0.3", "--t2i-batch", "256"]))
    assert (params.world.min_objects, params.world.max_objects) == (1, 4)
    assert [(s.name, s.steps, s.batch_size) for s in params.train.stages] == [("t2i", 30, 256), ("mixed", 70, 64)]
    with pytest.raises(SystemExit):  # a batch for a stage the run does not have
        learn.parse_args(["--out", str(tmp_path), "--t2i-batch", "256"])
    graphs = learn.make_params(learn.parse_args(["--out", str(tmp_path), "--compile", "--compile-mode", "reduce-overhead"]))
    assert graphs.train.compile and graphs.train.compile_mode == "reduce-overhead"
    assert graphs.train.master_weights is False  # off unless asked for, not the trainer's auto: runs stay comparable
    asked = learn.make_params(learn.parse_args(["--out", str(tmp_path), "--master-weights"]))
    assert asked.train.master_weights is True
    with pytest.raises(SystemExit):  # a compile mode without compiling
        learn.parse_args(["--out", str(tmp_path), "--compile-mode", "reduce-overhead"])
    default = learn.make_params(learn.parse_args(["--out", str(tmp_path), "--steps", "100"]))
    assert (default.world.min_objects, default.world.max_objects) == (2, 5) and len(default.train.stages) == 1
    assert default.world.caption_colours == learn.load_profile("default").world.caption_colours
    always = learn.make_params(learn.parse_args(["--out", str(tmp_path), "--caption-colours", "1"]))
    assert always.world.caption_colours == 1.0
    with pytest.raises(ValueError, match="caption_colours"):  # the schema's bounds hold
        learn.make_params(learn.parse_args(["--out", str(tmp_path), "--caption-colours", "1.5"]))


def test_a_detector_from_elsewhere_must_suit_the_run_and_be_current(tmp_path):
    learn = load_script("learn_procedural")
    params = learn.make_params(learn.parse_args(["--out", str(tmp_path / "run"), "--steps", "10"]))
    given = tmp_path / "detector"
    given.mkdir()
    (given / "weights.pt").write_bytes(b"weights")
    metrics = {**learn.world_detector.settings(params.evals.geneval.world, params.world.resolution),
               "negative_fp_rate": 0.0}
    (given / "metrics.json").write_text(json.dumps({**metrics, "epochs": 1}))
    with pytest.raises(ValueError, match="trained otherwise than this run's world: epochs 1"):
        learn.use_world_detector(params, given)
    (given / "metrics.json").write_text(json.dumps(metrics))  # the right world, from before the counting threshold
    with pytest.raises(FileNotFoundError, match="predates the counting threshold"):
        learn.use_world_detector(params, given)
    (given / "metrics.json").write_text(json.dumps({**metrics, "counting_threshold": 0.3}))
    learn.use_world_detector(params, given)
    assert (learn.world_detector.detector_dir(params) / "weights.pt").read_bytes() == b"weights"


def test_prompt_reliance_is_nil_where_text_cannot_reach_and_shows_where_it_can(text2image_latents, tmp_path,
                                                                               monkeypatch):
    learn = load_script("learn_procedural")
    torch.manual_seed(0)
    model = NextDiT(CONFIGS["tiny"])  # cross-attention gates at 0, as trained models start: text reaches nothing
    silent = learn.model_prompt_reliance(text2image_latents, _checkpoint(tmp_path / "silent", model), sigmas=(0.5, 0.9))
    # one view of each of the 3 scenes (two views of a scene name the same objects), and the 6 sample photos
    assert silent["samples"] == silent["scenes"] == 9 and set(silent) == {"samples", "scenes", "own", "other", "empty"}
    assert set(silent["own"]) == {"sigma_0.5", "sigma_0.9"}
    assert all(v > 0 for v in silent["own"].values())
    # the pooled caption still reaches the time embedding, but the final layer starts at 0: all equal
    assert silent["own"] == silent["other"] == silent["empty"]
    _open_text_path(model)
    heard = learn.model_prompt_reliance(text2image_latents, _checkpoint(tmp_path / "heard", model), sigmas=(0.5,))
    assert heard["own"] != heard["other"] and heard["own"] != heard["empty"]
    # sampling in bf16 (a GPU's) the predictor holds its linear layers in bf16; the reliance stays float32's
    monkeypatch.setattr(model_predictor, "sampling_precision", lambda precision, device: precision)
    assert learn.model_prompt_reliance(text2image_latents, tmp_path / "heard", sigmas=(0.5,)) == heard


def test_another_s_prompt_comes_from_another_scene():
    from benchmarks.prompt_reliance import other_scene_prompts

    views = ["red cube, left", "red cube, right", "blue ball", "green cone, near", "green cone, far"]
    scenes = ["s1", "s1", "s2", "s3", "s3"]
    assert other_scene_prompts(views, scenes) == ["blue ball", "blue ball", "green cone, near", "red cube, left",
                                                  "red cube, left"]
    with pytest.raises(ValueError, match="every sample is of one scene"):
        other_scene_prompts(views[:2], scenes[:2])


def test_the_text2image_stage_s_last_checkpoint_is_kept_and_scored_on_its_own(text2image_latents, tmp_path):
    learn = load_script("learn_procedural")
    args = learn.parse_args(["--out", str(tmp_path), "--steps", "101", "--t2i-first", "0.3"])
    # checkpoints at the stage's end (30), every 50 steps (50, 100) and at the end (101): the oldest is the stage's
    assert learn.make_params(args).train.keep_checkpoints >= 4

    def with_stages(t2i_steps: int):
        stages = [TrainStage.model_validate(s) for s in learn.stages(10, t2i_steps / 10, 4)]
        return text2image_latents.model_copy(update={"train": text2image_latents.train.model_copy(
            update={"stages": stages, "out_dir": tmp_path / "ckpt"})})

    torch.manual_seed(0)
    model = _open_text_path(NextDiT(CONFIGS["tiny"]))
    _checkpoint(tmp_path / "ckpt" / "step_0000005", model)
    scores = learn.score_text2image_stage(with_stages(5), tmp_path, geneval=False)
    assert scores["step"] == 5 and set(scores) == {"step", "prompt_reliance"}
    assert scores["prompt_reliance"]["own"] != scores["prompt_reliance"]["other"]
    with pytest.raises(FileNotFoundError):  # the stage ended at another step: no checkpoint stands in for it
        learn.score_text2image_stage(with_stages(4), tmp_path, geneval=False)


def test_the_oracle_through_the_vae_is_its_renders_round_tripped_in_geneval_s_folder_layout(tmp_path):
    from evals.geneval.world_prompts import make_prompts
    from evals.predictors import FolderPredictions, make_predictor
    from model.vae import LatentCodec

    learn = load_script("learn_procedural")
    items = [{"id": f"w{i}", "metadata": m, "prompt": m["prompt"], "n_images": 2, "size": (32, 32)}
             for i, m in enumerate(make_prompts(3, seed=0))]
    codec = LatentCodec.load(None, seed=0)
    (tmp_path / "trips" / "stale" / "samples").mkdir(parents=True)
    folder = learn.write_oracle_round_trips(codec, items, tmp_path / "trips")
    assert sorted(p.name for p in folder.iterdir()) == ["w0", "w1", "w2"]
    written = FolderPredictions(folder).generate_images(items)
    renders = make_predictor("baseline:oracle").generate_images(items)
    for got, truth in zip(written, renders):
        x = torch.from_numpy(np.stack(truth)).permute(0, 3, 1, 2).float() / 127.5 - 1
        want = ((codec.decode(codec.encode(x)) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
        assert np.stack(got).shape == (2, 32, 32, 3)
        assert np.abs(np.stack(got) - want).max() <= 1  # PNG keeps the round trip to the 8-bit step
        assert np.abs(np.stack(got).astype(int) - np.stack(truth)).mean() > 5  # a random VAE is no identity


def test_the_vae_fits_on_each_view_s_image_and_depth_with_that_view_s_instance_map(text2image_latents):
    learn = load_script("learn_procedural")
    data, instances, is_image = learn.world_views(text2image_latents, 1000)
    views = text2image_latents.world.views_per_scene
    assert data.shape == (3 * views * 2, 3, 32, 32) and instances.shape == (3 * views * 2, 32, 32)
    assert is_image.tolist() == [True, False] * 3 * views
    assert torch.equal(instances[0::2], instances[1::2]) and (instances > 0).any()
    assert not torch.equal(instances[0], instances[2])  # each view its own map
    first = learn.world_views(text2image_latents, 5)
    assert len(first[0]) == 5 and torch.equal(first[1], instances[:5])
