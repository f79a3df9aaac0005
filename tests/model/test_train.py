"""The trainer on CPU: it learns, resumes bit-exactly after a kill, DDP/FSDP2 equal one process,
and checkpoints appear atomically. Shards come from the project's own pipeline (tiny world)."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from model import train as train_mod
from model.train import find_checkpoint, train
from onegen.config import TrainConfig, TrainStage
from onegen.cli import app
from onegen.config import load_params, profile_path

FAMILIES = ["text2image", "depth", "multiview", "id"]  # one family per task group
REPO = Path(__file__).resolve().parents[2]


class Killed(Exception):
    pass


def build_project(root: Path, seed: int | None = None) -> Path:
    """A tiny world and the shards of FAMILIES under ``root``, built by the CLI (``seed``: another world)."""
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(scenes=6, id_groups=3, resolution=32, records_per_shard=4)
    d["shards"]["max_samples_per_shard"] = 8
    d["reader"]["shuffle_buffer"] = 16  # every data-stream restart refills it
    if seed is not None:
        d["seed"] = seed
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    runner = CliRunner()
    for args in [["world"]] + [["shards", f] for f in FAMILIES]:
        r = runner.invoke(app, args + ["-p", str(root / "params.yaml")])
        assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build_project(tmp_path_factory.mktemp("train_project"))


def run_params(project: Path, name: str):
    """The project's params with reports going to their own folder per run."""
    params = load_params(project / "params.yaml")
    return params.model_copy(update={"paths": params.paths.model_copy(update={"reports": project / name / "reports"})})


def losses(params) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (params.paths.reports / "train/metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_loss_decreases(project):
    params = run_params(project, "learn")
    cfg = TrainConfig(stages=[TrainStage(name="all", families=FAMILIES, steps=40, batch_size=4)],
                      lr=2e-3, warmup_steps=0, log_every=1, checkpoint_every=1000, out_dir=project / "learn/ck")
    summary = train(params, cfg)
    curve = losses(params)
    assert summary["step"] == 40 and sorted(curve) == list(range(1, 41))
    first = sum(curve[s] for s in range(1, 11)) / 10
    last = sum(curve[s] for s in range(31, 41)) / 10
    print(f"loss first 10 steps {first:.3f} -> last 10 steps {last:.3f}")
    assert last < 0.8 * first
    # the plot file DVC reads, and per-group / per-noise-level losses
    tsv = (params.paths.reports / "train/metrics.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["step", "stage", "loss"] and len(tsv) == 41
    row = json.loads((params.paths.reports / "train/metrics.jsonl").read_text().splitlines()[-1])
    assert row["samples_per_s"] > 0 and row["tflops"] > 0 and row["mfu"] is None
    assert any(row[k] is not None for k in ("loss_text2image", "loss_image2image", "loss_id", "loss_multiview"))
    ck = Path(summary["checkpoint"])
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "ema.safetensors", "optimizer.pt", "meta.json"}
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["step"] == 40 and meta["condition_prob"] == 0.0  # the model predictor's given-view label reads it
    assert meta["vae_shift"] is True  # and which latents it learned (SD3's, shifted: no released start)
    assert meta["depth_condition"] == 2  # and how its depth images were drawn
    assert meta["ray_frame"] == 2  # and in which world its rays were
    torch.load(ck / "optimizer.pt", weights_only=True)


def _two_stage_cfg(out_dir: Path) -> TrainConfig:
    # stage end (6) is no multiple of checkpoint_every (4): streams restart at 4, 6, 8, 12
    return TrainConfig(stages=[TrainStage(name="t2i", families=["text2image"], steps=6, batch_size=4),
                               TrainStage(name="mixed", families=FAMILIES, steps=8, batch_size=4, caption_dropout=0.5)],
                       lr=1e-3, warmup_steps=3, log_every=1, checkpoint_every=4, out_dir=out_dir,
                       condition_prob=0.5)  # its draws resume too


def test_kill_and_resume_equals_uninterrupted(project):
    ref = run_params(project, "ref")
    train(ref, _two_stage_cfg(project / "ref/ck"))

    params = run_params(project, "resumed")
    cfg = _two_stage_cfg(project / "resumed/ck")

    def kill_at_10(step, model):
        if step == 10:
            raise Killed  # after the checkpoint at 8, with steps 9-10 already logged

    with pytest.raises(Killed):
        train(params, cfg, on_step=kill_at_10)
    assert find_checkpoint(cfg.out_dir).name == "step_0000008" and max(losses(params)) == 10
    summary = train(params, cfg)
    assert summary["resumed_from"] == 8 and summary["step"] == 14
    # the committed summary is the model's: the same whether this process resumed or trained it whole
    written = json.loads((params.paths.reports / "train/summary.json").read_text())
    assert written == {k: v for k, v in summary.items() if k != "resumed_from"}
    assert losses(params) == losses(ref)  # bit-exact, steps 9-10 logged once
    for f in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(cfg.out_dir / "step_0000014" / f), load_file(project / "ref/ck/step_0000014" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert summary["loss"] == losses(ref)[14]


def test_master_weights_resume_exactly_and_train_as_plain_adamw(project, capsys, tmp_path):
    """``train.master_weights`` on the CPU (fp32 working weights: the masters' bookkeeping without the bf16 of a
    GPU, which tests/model/test_master_adamw.py checks): checkpoints hold the masters, a kill and resume repeats the
    run bit for bit, and the run follows plain AdamW's to float rounding."""
    def cfg_at(name):
        return _two_stage_cfg(project / name / "ck").model_copy(update={"master_weights": True})

    whole = run_params(project, "master_whole")
    train(whole, cfg_at("master_whole"))
    assert "no casts to save" in capsys.readouterr().out  # fp32 working weights here: said so
    params, cfg = run_params(project, "master_resumed"), cfg_at("master_resumed")

    def kill_at_10(step, model):
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        train(params, cfg, on_step=kill_at_10)
    plain_cfg = cfg.model_copy(update={"master_weights": False})
    with pytest.raises(ValueError, match="trained with train.master_weights True"):
        train(params, plain_cfg)  # its optimizer state is laid out for master weights
    assert train(params, cfg)["resumed_from"] == 8
    assert losses(params) == losses(whole)
    assert train(params, plain_cfg)["resumed_from"] == 14  # finished: no optimizer state needed
    ref_cfg = finished_reference_run(project)
    plain = losses(run_params(project, "ref"))
    # and a finished plain run started again with master weights (no optimizer state to load)
    shutil.copytree(ref_cfg.out_dir, tmp_path / "ref_ck")
    again = ref_cfg.model_copy(update={"master_weights": True, "out_dir": tmp_path / "ref_ck"})
    assert train(run_params(project, "ref_again"), again)["resumed_from"] == 14
    assert losses(whole).keys() == plain.keys()
    for step, loss in losses(whole).items():
        assert loss == pytest.approx(plain[step], rel=1e-4), step
    for f in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(cfg.out_dir / "step_0000014" / f), load_file(project / "master_whole/ck/step_0000014" / f)
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a), f


def test_master_weights_refuse_fsdp2_accumulation_and_a_model_ddp_wrapped_first(project):
    from model.nextdit import CONFIGS, NextDiT

    base = {**_two_stage_cfg(project / "master_refused/ck").model_dump(), "master_weights": True}
    for update, match in (({"parallel": "fsdp2"}, "fsdp2"), ({"grad_accum": 2}, "grad_accum 1")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{**base, **update})
    # DDP lays its buckets out by dtype: fp32 linear layers on a bf16 device mean the optimizer came too late
    # (a CUDA Dist is only read: the check comes before DDP touches a device)
    cuda_ranks = train_mod.Dist(rank=0, world=2, device=torch.device("cuda"))
    with pytest.raises(RuntimeError, match="before DDP"):
        train_mod.wrap_model(NextDiT(CONFIGS["tiny"]), TrainConfig(**base), cuda_ranks)


def test_master_weights_auto_are_on_in_bf16_where_they_run_and_a_resumed_run_as_it_was_trained():
    uses = train_mod.uses_master_weights
    auto = TrainConfig()
    assert uses(auto, True, {}) is True and uses(TrainConfig(parallel="none"), True, {}) is True
    assert uses(auto, False, {}) is False  # the CPU, or fp32: no casts to save
    assert uses(TrainConfig(parallel="fsdp2"), True, {}) is False and uses(TrainConfig(grad_accum=2), True, {}) is False
    # a checkpoint as it was trained, from before the key (without them) too; on the CPU as well
    assert uses(auto, True, {"step": 8, "master_weights": False}) is False and uses(auto, True, {"step": 8}) is False
    assert uses(auto, False, {"step": 8, "master_weights": True}) is True
    # but never where they do not run: the trainer then refuses the checkpoint ("which do not run under ...")
    assert uses(TrainConfig(parallel="fsdp2"), True, {"step": 8, "master_weights": True}) is False
    for given in (True, False):
        cfg = TrainConfig(master_weights=given)
        assert uses(cfg, not given, {}) is given and uses(cfg, given, {"step": 8, "master_weights": not given}) is given
    with pytest.raises(ValueError, match="'auto' reached the optimizer or DDP unresolved"):  # never read as true
        train_mod.make_optimizer(torch.nn.Linear(2, 2), auto, cuda=False)


def test_master_weights_auto_leave_a_cpu_run_plain_and_resume_a_run_as_it_was_trained(project):
    ref = finished_reference_run(project)
    assert ref.master_weights == "auto"
    assert json.loads((ref.out_dir / "step_0000014/meta.json").read_text())["master_weights"] is False  # no bf16
    params, cfg = run_params(project, "master_auto"), _two_stage_cfg(project / "master_auto/ck")

    def kill_at_4(step, model):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train(params, cfg.model_copy(update={"master_weights": True}), on_step=kill_at_4)
    with pytest.raises(ValueError, match="trained with master weights, which do not run under parallel ddp with "
                                         "grad_accum 2: resume it with ddp or none and grad_accum 1"):
        train(params, cfg.model_copy(update={"grad_accum": 2}))  # auto turns them off there
    assert train(params, cfg)["resumed_from"] == 4  # not refused for its masters
    assert json.loads((cfg.out_dir / "step_0000014/meta.json").read_text())["master_weights"] is True
    # a checkpoint set aside (another recipe) decides nothing: the fresh run resolves auto on this device, and the
    # config hash is the params' as written, not the resolved value's
    stages = [cfg.stages[0].model_copy(update={"caption_dropout": 0.3}), *cfg.stages[1:]]
    fresh = cfg.model_copy(update={"stages": stages})
    summary = train(params, fresh)
    meta = json.loads((cfg.out_dir / "step_0000014/meta.json").read_text())
    assert summary["resumed_from"] == 0 and meta["master_weights"] is False
    assert summary["config_hash"] == meta["config_hash"] == train_mod.config_hash(fresh, params)


def test_master_weights_in_bf16_checkpoint_ema_and_resume_hold_the_masters(tmp_path):
    """The GPU's layout (bf16 linear weights) through the trainer's optimizer, clipping, EMA and checkpoint code,
    on made-up gradients: what is saved and averaged are the fp32 masters, never their rounded copies."""
    from model.nextdit import CONFIGS, NextDiT

    cfg = TrainConfig(master_weights=True, parallel="none", lr=1e-2)
    torch.manual_seed(0)
    model = NextDiT(CONFIGS["tiny"])
    opt = train_mod.make_optimizer(model, cfg, cuda=False, dtype=torch.bfloat16)
    ema = train_mod.EMA(opt.named_masters(model), 0.9)
    expected_ema = {n: w.clone() for n, w in opt.named_masters(model)}
    lowered = [n for n, p in model.named_parameters() if p.dtype == torch.bfloat16]
    assert lowered and len(lowered) < len(list(model.parameters()))
    for step in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        assert train_mod.clip_gradients(model, opt, 1.0) > 1.0
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected_ema = {n: torch.lerp(expected_ema[n], w, 1 - decay) for n, w in opt.named_masters(model)}
    masters = {n: w.clone() for n, w in opt.named_masters(model)}
    path = train_mod.save_checkpoint(tmp_path, 3, model, opt, ema, {"step": 3}, train_mod.Dist(), keep=1)
    saved, saved_ema = load_file(path / "model.safetensors"), load_file(path / "ema.safetensors")
    for n in lowered:
        rounded = model.get_parameter(n).float()
        assert saved[n].dtype == torch.float32 and torch.equal(saved[n], masters[n]), n
        assert not torch.equal(saved[n], rounded), n  # the masters carry what bf16 drops
        torch.testing.assert_close(saved_ema[n], expected_ema[n], rtol=1e-6, atol=0, msg=n)

    resumed = NextDiT(CONFIGS["tiny"])
    resumed.load_state_dict(saved, strict=True)
    opt2 = train_mod.make_optimizer(resumed, cfg, cuda=False, dtype=torch.bfloat16)
    train_mod.load_optimizer(path / "optimizer.pt", resumed, opt2, train_mod.Dist())
    for (n, p), q in zip(resumed.named_parameters(), model.parameters()):
        assert torch.equal(opt2.master(p), masters[n]), n
        assert torch.equal(p.detach(), masters[n].to(p.dtype)), n
        for key, value in opt.state[q].items():  # steps and moments too, fp32 as saved
            assert opt2.state[p][key].dtype == value.dtype and torch.equal(opt2.state[p][key], value), (n, key)


def finished_reference_run(project: Path) -> TrainConfig:
    """The two-stage run of the resume test, finished at step 14 (trained here when run alone)."""
    cfg = _two_stage_cfg(project / "ref/ck")
    if find_checkpoint(cfg.out_dir) is None:
        train(run_params(project, "ref"), cfg)
    return cfg


def test_a_recipe_shorter_than_its_checkpoint_is_one_clear_error(project):
    cfg = finished_reference_run(project)
    short = cfg.model_copy(update={"stages": [cfg.stages[0]]})
    with pytest.raises(ValueError, match=r"at step 14, past the recipe's 6 steps"):
        train(run_params(project, "ref"), short)


def test_checkpoints_of_other_data_are_set_aside_not_resumed(project, tmp_path):
    """What `dvc repro` meets once the shards changed: the finished run's persisted checkpoints were made on the
    old data. They move aside, the recipe trains from step 0, and a rerun on the same data resumes as before."""
    cfg = finished_reference_run(project)
    out = tmp_path / "ck"
    shutil.copytree(cfg.out_dir, out)
    params = load_params(build_project(tmp_path / "other", seed=123) / "params.yaml")  # another world
    summary = train(params, cfg.model_copy(update={"out_dir": out}))
    assert summary["resumed_from"] == 0 and summary["step"] == 14
    old = json.loads((cfg.out_dir / "step_0000014" / "meta.json").read_text())["data_identity"]
    assert old.keys() == summary["data_identity"].keys() == set(FAMILIES)
    assert all(summary["data_identity"][f] != old[f] for f in FAMILIES)
    aside = out.with_name(f"{out.name}-superseded") / "step_0000014"
    assert sorted(p.name for p in aside.iterdir()) == sorted(p.name for p in cfg.out_dir.iterdir())
    assert load_file(aside / "step_0000014" / "model.safetensors").keys()  # kept whole, not rewritten
    again = train(params, cfg.model_copy(update={"out_dir": out}))
    assert again["resumed_from"] == 14 and again["data_identity"] == summary["data_identity"]
    assert [p.name for p in aside.parent.iterdir()] == [aside.name]


def test_a_changed_stage_sets_the_checkpoints_aside_and_a_lengthened_recipe_resumes(project, tmp_path, capsys):
    """`dvc repro` after an edit of train.stages: a stage the checkpoint already trained through, run at another
    side, would not have made it (set aside, trained anew); a stage added after it continues it."""
    cfg = finished_reference_run(project)
    meta = json.loads((cfg.out_dir / "step_0000014" / "meta.json").read_text())
    assert [(r["name"], r["steps"], r["sides"]["text2image"]) for r in meta["recipe"]] == [("t2i", 6, None),
                                                                                          ("mixed", 8, None)]
    longer = cfg.model_copy(update={"out_dir": tmp_path / "longer", "stages": [
        *cfg.stages, TrainStage(name="low", families=["text2image"], resolution=16, steps=2, batch_size=4)]})
    shutil.copytree(cfg.out_dir, longer.out_dir)
    summary = train(run_params(project, "longer"), longer)
    assert summary["resumed_from"] == 14 and summary["step"] == 16

    lower = cfg.model_copy(update={"out_dir": tmp_path / "lower", "stages": [
        cfg.stages[0].model_copy(update={"resolution": 16}), cfg.stages[1]]})
    shutil.copytree(cfg.out_dir, lower.out_dir)
    summary = train(run_params(project, "lower"), lower)
    assert summary["resumed_from"] == 0 and summary["step"] == 14
    assert (lower.out_dir.with_name(f"{lower.out_dir.name}-superseded") / "step_0000014" / "step_0000014").is_dir()
    assert not list(lower.out_dir.glob("superseded*"))  # the run's folder holds the run alone

    # a finished run is the model of its hyperparameters (set aside for another lr), not of how it computed; taken
    # up again under another config, it trains no step, so no continuation is announced as inexact
    for name, change, resumed in (("lr", {"lr": 2e-3}, 0), ("ckpting", {"activation_checkpointing": True}, 14),
                                  ("kernel", {"attention": "flex"}, 14)):
        out = tmp_path / name
        shutil.copytree(cfg.out_dir, out)
        capsys.readouterr()
        summary = train(run_params(project, name), cfg.model_copy(update={"out_dir": out, **change}))
        assert summary["resumed_from"] == resumed, name
        assert "no longer an exact continuation" not in capsys.readouterr().out, name
    # a finished checkpoint from before checkpoints kept their recipe: any other params retrain it
    old = tmp_path / "old"
    shutil.copytree(cfg.out_dir, old)
    meta_path = old / "step_0000014" / "meta.json"
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items()
                                     if k not in ("recipe", "optimization")}))
    summary = train(run_params(project, "old"), cfg.model_copy(update={"out_dir": old, "lr": 2e-3}))
    assert summary["resumed_from"] == 0


def test_checkpoints_of_other_latents_are_set_aside_not_resumed(project, tmp_path):
    """A run whose checkpoint learned the released pipeline's unshifted latents (``model.vae_shift`` False: it
    started from the released weights) is not continued on shifted ones: its checkpoints move aside."""
    cfg = finished_reference_run(project)
    out = tmp_path / "ck"
    shutil.copytree(cfg.out_dir, out)
    meta_path = out / "step_0000014" / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | {"vae_shift": False}))
    summary = train(run_params(project, "ref"), cfg.model_copy(update={"out_dir": out}))
    assert summary["resumed_from"] == 0 and summary["step"] == 14
    assert (out.with_name(f"{out.name}-superseded") / "step_0000014" / "step_0000014" / "meta.json").is_file()


def test_resuming_another_model_size_is_one_clear_error(project):
    """The finished tiny reference run, resumed as `small`: refused before anything is built."""
    cfg = finished_reference_run(project)
    params = run_params(project, "ref")
    small = params.model_copy(update={"model": params.model.model_copy(update={"size": "small"})})
    with pytest.raises(ValueError, match=r"holds a 'tiny' model, not the architecture of model\.size 'small'"):
        train(small, cfg)


def test_latents_cached_for_another_model_size_are_refused(project, tmp_path):
    """The random text encoder is as wide as the model's caption input: `small`'s cached features never pass
    for `tiny`'s (they did, and failed later as a shape error inside the model)."""
    from pipelines.latents import encoder_identity

    params = run_params(project, "latents_check")
    small = params.model_copy(update={"model": params.model.model_copy(update={"size": "small"})})
    folder = tmp_path / "text2image"
    folder.mkdir()
    (folder / "latents.json").write_text(json.dumps(encoder_identity(small)))
    with pytest.raises(ValueError, match=r"text2image: cached text features come from another text encoder"):
        train_mod.check_latents(folder, params)
    train_mod.check_latents(folder, small)
    (folder / "latents.json").write_text(json.dumps(encoder_identity(params)))
    train_mod.check_latents(folder, params)
    # latents encoded before depth was drawn as disparity (near bright): refused, not trained on
    (folder / "latents.json").write_text(json.dumps(encoder_identity(params) | {"depth_condition": 1}))
    with pytest.raises(ValueError, match=r"text2image: latents hold depth images drawn by convention 1"):
        train_mod.check_latents(folder, params)


def test_checkpoint_is_atomic_and_stale_temp_ignored(project, monkeypatch):
    params = run_params(project, "atomic")
    cfg = TrainConfig(stages=[TrainStage(name="all", families=["text2image"], steps=4, batch_size=2)],
                      log_every=1, checkpoint_every=2, keep_checkpoints=1, out_dir=project / "atomic/ck")
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # a kill in the middle of writing the second checkpoint
        if "step_0000004" in str(f):
            raise Killed
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        train(params, cfg)
    monkeypatch.setattr(torch, "save", real_save)
    out = cfg.out_dir
    stale = [p for p in out.iterdir() if p.name.startswith(".tmp_step_0000004")]
    assert stale and (stale[0] / "model.safetensors").is_file()  # half-written, but hidden
    assert sorted(p.name for p in out.glob("step_*")) == ["step_0000002"]
    assert (out / "latest").read_text().strip() == "step_0000002"
    # a step dir without meta.json (e.g. copied by hand, incomplete) is never resumed from
    (out / "step_0000003").mkdir()
    (out / "latest").write_text("step_0000003\n")
    assert find_checkpoint(out).name == "step_0000002"

    summary = train(params, cfg)
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    assert not list(out.glob(".tmp_*"))
    assert (out / "latest").read_text().strip() == "step_0000004"
    assert sorted(p.name for p in out.glob("step_*") if (p / "meta.json").is_file()) == ["step_0000004"]


DIST_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from pathlib import Path
    sys.path.insert(0, {test_dir!r})
    from test_train import dist_cfg, run_params
    from model.train import EMA, train

    project, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def save_grads(step, model):
        if step == 1 and rank == 0:
            torch.save({{n: p.grad.clone() for n, p in model.named_parameters()}}, out / "ddp_grads.pt")

    train(run_params(project, "ddp"), dist_cfg(out / "ddp_ck", "ddp", 1), on_step=save_grads)

    class Killed(Exception):
        pass

    def kill_at_3(step, model):
        if step == 3:
            raise Killed

    # the EMA's full tensors: every rank takes part in the gathers, only the writer keeps them
    kept = []
    full_state_dict = EMA.full_state_dict
    EMA.full_state_dict = lambda self, keep=True: kept.append(len(sd := full_state_dict(self, keep))) or sd
    for name, cfg in (("fsdp", dist_cfg(out / "fsdp_ck", "fsdp2", 1)),
                      ("ddp_master", dist_cfg(out / "ddp_master_ck", "ddp", 1, master_weights=True))):
        try:
            train(run_params(project, name), cfg, on_step=kill_at_3)
        except Killed:
            pass
        summary = train(run_params(project, name), cfg)
        assert summary["resumed_from"] == 2, (name, summary)
    assert kept and all(n > 0 if rank == 0 else n == 0 for n in kept), (rank, kept)
    dist.destroy_process_group()
""")

# bf16 gradients through DDP with master weights: the mean of the ranks' gradients in fp32, rounded once. On 4 ranks
# (on 2, DDP's own bf16 sum of halves rounds once too, and the check could not tell the hook was missing)
HOOK_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from model.master_adamw import MasterWeightAdamW
    from model.nextdit import linear_parameters
    from model.train import allreduce_in_fp32

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.Linear(32, 4))
        MasterWeightAdamW(net.parameters(), lowered=linear_parameters(net), dtype=torch.bfloat16)
        return net

    def backward(net):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x).float().square().mean().backward()

    calls = []

    def counted(group, bucket):
        calls.append(bucket.index())
        return allreduce_in_fp32(group, bucket)

    local = make()
    backward(local)
    ddp = DDP(make(), gradient_as_bucket_view=True)
    ddp.register_comm_hook(None, counted)
    backward(ddp)
    assert len(calls) == len(set(calls)) >= 2, calls  # once a bucket: a bf16 one and an fp32 one
    dtypes = set()
    for (name, mine), p in zip(local.named_parameters(), ddp.module.parameters()):
        parts = [torch.empty_like(mine.grad, dtype=torch.float32) for _ in range(world)]
        dist.all_gather(parts, mine.grad.float())
        expected = sum(g / world for g in parts).to(mine.dtype)
        assert p.grad.dtype == mine.dtype and torch.equal(p.grad, expected), name
        assert rank == 0 or not torch.equal(parts[0], parts[1]), name  # the ranks' gradients do differ
        dtypes.add(p.dtype)
    assert dtypes == {torch.bfloat16, torch.float32}, dtypes
    dist.destroy_process_group()
""")


def run_ranks(script: Path, *args: str, ranks: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                        str(script), *args], capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def dist_cfg(out_dir: Path, parallel: str, grad_accum: int, master_weights: bool = False) -> TrainConfig:
    return TrainConfig(stages=[TrainStage(name="all", families=FAMILIES, steps=4, batch_size=4)],
                       warmup_steps=0, log_every=1, checkpoint_every=2, grad_accum=grad_accum, parallel=parallel,
                       master_weights=master_weights, out_dir=out_dir)


def test_ddp_and_fsdp2_match_one_process(project, tmp_path):
    # one process, 2 micro-steps = slots 0 and 1 of the global batch of 4
    grads = {}

    def keep_grads(step, model):
        if step == 1:
            grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

    single = run_params(project, "single")
    train(single, dist_cfg(tmp_path / "single_ck", "none", 2), on_step=keep_grads)

    # two gloo ranks, 1 micro-step each: DDP (grads), FSDP2 and DDP with master weights (both killed at step 3,
    # resumed from step 2)
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT.format(test_dir=str(Path(__file__).parent)))
    run_ranks(script, str(project), str(tmp_path))

    ddp_grads = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    scale = max(g.abs().max().item() for g in grads.values())
    worst = max((grads[k] - ddp_grads[k]).abs().max().item() for k in grads)
    print(f"max |grad(1 proc) - grad(DDP)| = {worst:.2e} (max |grad| {scale:.2e})")
    assert worst <= 1e-5 * max(scale, 1.0)

    ref = losses(single)
    for name in ("ddp", "fsdp", "ddp_master"):  # on a CPU master weights are fp32 copies: AdamW's curve
        got = losses(run_params(project, name))
        assert sorted(got) == [1, 2, 3, 4]
        assert all(abs(got[s] - ref[s]) <= 1e-5 * abs(ref[s]) for s in ref), (name, got, ref)
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "single_ck/step_0000004" / f)
        for name in ("ddp", "fsdp", "ddp_master"):
            b = load_file(tmp_path / f"{name}_ck/step_0000004" / f)
            assert a.keys() == b.keys()
            assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a), (name, f)


def test_ddp_sums_master_weights_bf16_gradients_in_fp32_once(tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    run_ranks(script, ranks=4)


def test_batch_must_split_evenly(project):
    cfg = TrainConfig(stages=[TrainStage(name="all", families=FAMILIES, steps=1, batch_size=3)], grad_accum=2,
                      out_dir=project / "bad/ck")
    with pytest.raises(ValueError, match="not divisible"):
        train(run_params(project, "bad"), cfg)


def test_missing_family_names_the_stage(project):
    cfg = TrainConfig(stages=[TrainStage(name="x", families=["semantic"], steps=1, batch_size=1)],
                      out_dir=project / "missing/ck")
    with pytest.raises(FileNotFoundError, match=r"train.stages\[0\] \(x\): family 'semantic'"):
        train(run_params(project, "missing"), cfg)


def test_a_family_without_samples_names_the_stage(project):
    # the default builds pose from photos of people only with annotators.pose set: here it is empty
    r = CliRunner().invoke(app, ["shards", "pose", "-p", str(project / "params.yaml")])
    assert r.exit_code == 0 and "annotators.pose.detector_path + annotators.pose.path" in r.output, r.output
    cfg = TrainConfig(stages=[TrainStage(name="x", families=["depth", "pose"], steps=1, batch_size=2)],
                      out_dir=project / "empty/ck")
    with pytest.raises(ValueError, match=r"train.stages\[0\] \(x\): family 'pose' has no samples"):
        train(run_params(project, "empty"), cfg)


def test_main_reads_train_section(project, tmp_path):
    d = yaml.safe_load((project / "params.yaml").read_text())
    d["paths"]["reports"] = str(tmp_path / "reports")
    d["train"] = {"stages": [{"name": "a", "families": ["text2image"], "steps": 2, "batch_size": 2}],
                  "out_dir": str(tmp_path / "ck"), "log_every": 1}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(d))
    train_mod.main(["--params", str(tmp_path / "p.yaml")])
    assert (tmp_path / "ck/latest").read_text().strip() == "step_0000002"
    shutil.rmtree(tmp_path / "ck")


def test_logged_losses_leave_given_views_out():
    window = train_mod.Window(torch.device("cpu"))
    per_view = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    sigmas = torch.tensor([[0.0, 0.5], [0.3, 0.5]])  # sample 0's first view is given (σ 0)
    given = torch.tensor([[True, False], [False, False]])
    window.add_micro(torch.tensor(3.0), per_view, sigmas, given, ["multiview", "image2image"], tokens=8, flops=1.0)
    rec = window.record(train_mod.Dist(), peak=None)
    assert rec["loss_multiview"] == 3.0 and rec["loss_image2image"] == 3.0
    assert rec["loss_sigma_00_20"] is None  # the given view is no σ-0 target
    assert rec["loss_sigma_20_40"] == 2.0 and rec["loss_sigma_40_60"] == 3.5


def test_samples_skipped_inside_loader_workers_reach_the_summary(project, tmp_path):
    """Every other text2image sample corrupt: the run trains on the rest, and the skipped ones are counted
    whether the shards are read in this process or in DataLoader workers (each with a report of its own)."""
    import tarfile

    root = tmp_path / "p"
    shutil.copytree(project / "data", root / "data")
    for shard in sorted((root / "data/shards/text2image").glob("shard-*.tar")):
        with tarfile.open(shard) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
        keys = sorted({m.name.split(".")[0] for m, _ in members})
        with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
            for m, data in members:
                if m.name.endswith(".png") and keys.index(m.name.split(".")[0]) % 2:
                    data = b"not a png" + data[9:]
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
    base = run_params(project, "skipped")
    base = base.model_copy(update={"paths": base.paths.model_copy(update={"data": root / "data"})})
    cfg = TrainConfig(stages=[TrainStage(name="t2i", families=["text2image"], steps=3, batch_size=4)],
                      checkpoint_every=3, log_every=1, out_dir=tmp_path / "ck")
    for workers in (0, 1):
        params = base.model_copy(update={"reader": base.reader.model_copy(update={"num_workers": workers})})
        summary = train(params, cfg.model_copy(update={"out_dir": tmp_path / f"ck{workers}"}))
        assert summary["step"] == 3 and summary["read_problems"] > 0, workers


@pytest.mark.parametrize("attention", ["auto", "cudnn", "flex"])
def test_the_attention_kernel_is_the_models_on_cuda_only(attention):
    from model.nextdit import CONFIGS, NextDiT

    # wrap_model places nothing on the device: a CUDA Dist is only read here
    for device, expected in (("cuda", attention), ("cpu", "auto")):  # off CUDA, auto is the exact math path
        model = NextDiT(CONFIGS["tiny"])
        dist = train_mod.Dist(rank=0, world=1, device=torch.device(device))
        train_mod.wrap_model(model, TrainConfig(attention=attention), dist)
        assert model.attn_backend == expected, device


def test_cuda_graphs_refuse_several_processes():
    from model.nextdit import CONFIGS, NextDiT

    cfg = TrainConfig(compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="reduce-overhead runs in one process started without torchrun only"):
        train_mod.wrap_model(NextDiT(CONFIGS["tiny"]), cfg, train_mod.Dist(rank=0, world=2))


def test_a_single_rank_torchrun_launched_runs_under_ddp(monkeypatch):
    """torchrun with one process (WORLD_SIZE=1) joins a process group and wraps DDP, as N ranks would: the one-GPU
    check of the DDP path (bench_scaleout --gpus 1 --parallel ddp). Without torchrun, one process stays unwrapped."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model.nextdit import CONFIGS, NextDiT

    cfg = TrainConfig(parallel="ddp", master_weights=False)  # as the trainer resolves "auto" on a CPU
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not train_mod.setup_distributed().distributed
    model = NextDiT(CONFIGS["tiny"])
    assert train_mod.wrap_model(model, cfg, train_mod.Dist()) is model
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist = train_mod.setup_distributed()
    try:
        assert dist.distributed and dist.world == 1 and dist.owns_group and torch.distributed.get_world_size() == 1
        assert isinstance(train_mod.wrap_model(NextDiT(CONFIGS["tiny"]), cfg, dist), DDP)
        with pytest.raises(ValueError, match="reduce-overhead"):
            train_mod.wrap_model(NextDiT(CONFIGS["tiny"]), TrainConfig(compile=True, compile_mode="reduce-overhead"),
                                 dist)
    finally:
        torch.distributed.destroy_process_group()
