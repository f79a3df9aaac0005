"""``onegen latents``: precomputed VAE latents and text features, resumable, and what training reads."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from model.nextdit import CONFIGS
from model.text import TextEncoder
from model.train import TEXT_LENGTH_MULTIPLE, train, with_caption_dropout
from model.vae import LatentCodec
from onegen.cli import app
from onegen.config import load_params, profile_path
from onegen.format import decode_sample
from onegen.shards.reader import ReadReport, iter_tar_samples, sample_to_tensors, training_batches

FAMILIES = ["text2image", "depth", "multiview"]
runner = CliRunner()


def _invoke(*args):
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents_project")
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(scenes=4, id_groups=0, resolution=32, records_per_shard=4)
    d["shards"]["max_samples_per_shard"] = 6
    d["latents"] = {"text": True, "batch_size": 4}
    d["train"]["stages"] = [{"name": "mixed", "families": FAMILIES, "steps": 3, "batch_size": 4}]
    d["train"].update(checkpoint_every=3, log_every=1)
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    p = str(root / "params.yaml")
    _invoke("world", "-p", p)
    for fam in FAMILIES:
        _invoke("shards", fam, "-p", p)
        _invoke("latents", fam, "-p", p)
    return root


def _read(directory):
    report = ReadReport()
    out = [decode_sample(raw) for url in sorted(directory.glob("shard-*.tar")) for raw in iter_tar_samples(str(url), report)]
    assert not report.problems
    return out


def test_latents_match_the_codec_and_keep_everything_else(project):
    params = load_params(project / "params.yaml")
    codec = LatentCodec.load(None, seed=params.seed)
    text = TextEncoder.load(None, max_tokens=params.model.max_text_tokens, seed=params.seed,
                            dim=CONFIGS[params.model.size].caption_channels)
    for fam in FAMILIES:
        src, lat = _read(project / "data/shards" / fam), _read(project / "data/latents" / fam)
        assert [s.key for s in src] == [s.key for s in lat] and len(src) > 0
        for s, t in zip(src, lat):
            assert (s.task, s.prompt(), s.palette) == (t.task, t.prompt(), t.palette)
            body, feats = t.views[:-1], t.views[-1]
            assert [v.modality for v in body] == ["rays" if v.modality == "rays" else "latent" for v in s.views]
            for v, w in zip(s.views, body):
                if v.modality == "rays":
                    assert np.array_equal(v.data, w.data)
                    continue
                assert w.data.dtype == np.float16 and w.data.shape == (16, 4, 4) and w.meta["of"] == v.modality
                want = codec.encode(sample_to_tensors(s.__class__(s.key, s.task, s.caption, [v], s.provenance))
                                    ["views"][0][None])[0].numpy()
                np.testing.assert_allclose(w.data.astype(np.float32), want, atol=2e-3, rtol=2e-3)
            hidden, mask = text([s.prompt()])
            assert feats.role == "text" and feats.data.shape == (int(mask.sum()), hidden.shape[-1])
            np.testing.assert_allclose(feats.data.astype(np.float32), hidden[0][mask[0]].numpy(), atol=2e-3, rtol=2e-3)
            assert {a["name"] for a in t.provenance.annotators} >= {"vae", "text_encoder"}


def test_rerun_skips_and_a_lost_shard_comes_back_identical(project):
    p = str(project / "params.yaml")
    d = project / "data/latents/multiview"
    before = {f.name: f.read_bytes() for f in sorted(d.glob("shard-*.tar"))}
    assert len(before) >= 1
    victim = sorted(d.glob("shard-*.tar"))[-1]
    victim.unlink()
    _invoke("latents", "multiview", "-p", p)
    assert {f.name: f.read_bytes() for f in sorted(d.glob("shard-*.tar"))} == before


def test_batches_carry_padded_text_features(project):
    batch = next(training_batches([project / "data/latents/depth"], 3, resampled=False, shuffle=0))
    assert batch["text"].shape[:2] == batch["text_mask"].shape and batch["text_mask"].any(dim=1).all()
    assert batch["modalities"][0] == ["latent", "latent"]


def test_caption_dropout_substitutes_the_empty_prompt():
    text, mask = torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    empty = (torch.full((1, 5, 4), 7.0), torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool))
    t, m = with_caption_dropout(text.clone(), mask.clone(), [False, True], empty)
    assert t.shape == (2, TEXT_LENGTH_MULTIPLE, 4) and m.shape == (2, TEXT_LENGTH_MULTIPLE)
    assert torch.equal(t[1, :5], empty[0][0]) and torch.equal(m[1, :5], empty[1][0])
    assert torch.equal(t[0, :3], text[0]) and torch.equal(m[0, :3], mask[0])
    assert not m[:, 5:].any() and not t[:, 5:].any()  # padding: masked zero tokens


def test_prompt_lengths_are_padded_to_a_few_shapes():
    for length in (1, 63, 64, 65, 300):
        text, mask = torch.ones(2, length, 4), torch.ones(2, length, dtype=torch.bool)
        t, m = with_caption_dropout(text, mask, [False, False], (torch.ones(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)))
        assert t.shape[1] == m.shape[1] == -(-length // TEXT_LENGTH_MULTIPLE) * TEXT_LENGTH_MULTIPLE
        assert m.sum() == 2 * length and torch.equal(t[:, :length], text)


def test_training_on_latents_runs_and_refuses_other_weights(project, tmp_path):
    params = load_params(project / "params.yaml")
    params = params.model_copy(update={
        "train": params.train.model_copy(update={"latents": True, "out_dir": tmp_path / "ckpt"}),
        "paths": params.paths.model_copy(update={"reports": tmp_path / "reports"})})
    train(params)
    rows = [json.loads(x) for x in (tmp_path / "reports/train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    other = params.model_copy(update={"seed": params.seed + 1})  # another seed = another random VAE
    with pytest.raises(ValueError, match="rerun `onegen latents"):
        train(other)


def test_latents_of_other_shards_are_rebuilt_not_kept(project, tmp_path, monkeypatch):
    """A family's shards rebuilt with other bytes under the same fingerprint (its code changed without a version
    bump): the finished latents were made of the old shards, so they are rebuilt rather than skipped."""
    import shutil

    from onegen import families

    root = tmp_path / "p"
    shutil.copytree(project, root)
    d = yaml.safe_load((project / "params.yaml").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["build"].update(executor="local", cpu_workers=1)  # in this process: the patch below reaches the family code
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    p = str(root / "params.yaml")
    before = {s.caption for s in _read(root / "data/latents/text2image")}
    shutil.rmtree(root / "data/shards/text2image")
    monkeypatch.setattr(families, "_view_captions", lambda record, view, annotations: ("Other shards.", {}))
    _invoke("shards", "text2image", "-p", p)
    _invoke("latents", "text2image", "-p", p)
    assert "Other shards." not in before
    assert {s.caption for s in _read(root / "data/latents/text2image")} == {"Other shards."}


def test_a_stage_at_another_side_reads_resized_latents_or_images(project, tmp_path):
    """A stage at 16² over 32² shards: `onegen latents` encodes the resized samples into side16/ (rays recomputed
    at the new grid), and the trainer reads them there, or resizes the images itself without latents."""
    import shutil

    from model.train import family_dirs, slot_batches
    from onegen.plucker import rays_for_cameras
    from onegen.shards.resize import resize_sample

    root = tmp_path / "p"
    shutil.copytree(project, root)
    d = yaml.safe_load((project / "params.yaml").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["train"]["stages"] = [{"name": "low", "families": ["text2image", "multiview"], "resolution": 16, "steps": 2,
                             "batch_size": 2},
                            {"name": "full", "families": FAMILIES, "family_resolution": {"depth": 16}, "steps": 1,
                             "batch_size": 2}]
    d["train"].update(checkpoint_every=1, out_dir=str(root / "ckpt"))
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    p = str(root / "params.yaml")
    for fam in FAMILIES:
        r = _invoke("latents", fam, "-p", p)
        assert "resized to 16px" in r.output
    src = _read(root / "data/shards/multiview")
    low = _read(root / "data/latents/multiview/side16")
    assert [s.key for s in low] == [s.key for s in src]
    for s, t in zip(src, low):
        rays = [v for v in t.views if v.modality == "rays"]
        assert all(v.data.shape == (16, 2, 2) for v in t.views if v.modality in ("latent", "rays"))
        want = rays_for_cameras([v.camera for v in resize_sample(s, 16).views if v.modality == "rays"], normalize=True)
        np.testing.assert_allclose(np.stack([v.data for v in rays]).astype(np.float32), want, atol=2e-3)
    assert json.loads((root / "data/latents/multiview/side16/latents.json").read_text())["side"] == 16

    params = load_params(root / "params.yaml")
    dirs = family_dirs(params, params.train)
    assert dirs[1][root / "data/latents/depth/side16"] is None and root / "data/latents/text2image" in dirs[1]
    result = train(params)
    assert set(result["data_identity"]) == {"text2image/side16", "multiview/side16", "depth/side16", "text2image",
                                            "multiview"}
    on_images = params.model_copy(update={"train": params.train.model_copy(
        update={"latents": False, "out_dir": root / "ckpt_images"})})
    dirs = family_dirs(on_images, on_images.train)
    assert dirs[0] == {root / "data/shards/text2image": 16, root / "data/shards/multiview": 16}
    stream = slot_batches(dirs[0], 2, seed=0, shuffle=0, report=ReadReport())
    seen = set()
    for batch in (next(stream) for _ in range(6)):  # images at 16², rays at their 2x2 latent grid
        seen.add(batch["group"][0])
        assert [tuple(v.shape[2:]) for v in batch["views"]] == [(2, 2) if m == "rays" else (16, 16)
                                                               for m in batch["modalities"][0]]
    assert seen == {"text2image", "multiview"}
    assert np.isfinite(train(on_images)["loss"])


def test_sides_by_view_count_encode_each_sample_at_its_own_and_train(tmp_path):
    """The paper's ID finetune (512² for 2-3 views, 256² for 4-5; here 32² stored, 16² for 3+ views): `onegen
    latents` encodes each identity sample at its view count's side into one folder, the trainer reads it (and,
    without latents, resizes the images by the same rule), and the checkpoint's recipe names the rule."""
    from model.train import family_dirs, slot_batches

    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")}
    d["world"].update(scenes=1, id_groups=6, id_views=[2, 4], resolution=32, records_per_shard=4)
    d["latents"] = {"text": True, "batch_size": 4}
    d["train"]["stages"] = [{"name": "ft", "families": ["id"], "family_resolution": {"id": {2: 32, 4: 16}},
                             "steps": 2, "batch_size": 2}]
    d["train"].update(checkpoint_every=2, log_every=1, latents=True, out_dir=str(tmp_path / "ckpt"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    p = str(tmp_path / "params.yaml")
    _invoke("world", "-p", p)
    _invoke("shards", "id", "-p", p)
    r = _invoke("latents", "id", "-p", p)
    assert "resized to 32px up to 2 views, 16px up to 4 views, else as stored" in r.output
    src = _read(tmp_path / "data/shards/id")
    got = _read(tmp_path / "data/latents/id/side32to2v_16to4v")
    assert [s.key for s in got] == [s.key for s in src]
    counts = [len(s.views) for s in src]
    assert min(counts) == 2 and max(counts) > 2  # both branches of the rule are exercised
    for s, t in zip(src, got):
        grid = 4 if len(s.views) <= 2 else 2  # 32² -> 4x4 latents, 16² -> 2x2
        assert [v.data.shape for v in t.views if v.modality == "latent"] == [(16, grid, grid)] * len(s.views)

    params = load_params(tmp_path / "params.yaml")
    assert family_dirs(params, params.train) == [{tmp_path / "data/latents/id/side32to2v_16to4v": None}]
    result = train(params)
    assert np.isfinite(result["loss"]) and set(result["data_identity"]) == {"id/side32to2v_16to4v"}
    ckpt = tmp_path / "ckpt" / (tmp_path / "ckpt/latest").read_text().strip()
    recipe = json.loads((ckpt / "meta.json").read_text())["recipe"]
    assert recipe[0]["sides"] == {"id": "32to2v_16to4v"}
    # the rule read back from the checkpoint is the recipe's own: a rerun resumes, nothing is set aside
    assert train(params)["loss"] == result["loss"] and not (tmp_path / "ckpt-superseded").exists()

    on_images = params.model_copy(update={"train": params.train.model_copy(update={"latents": False})})
    dirs = family_dirs(on_images, on_images.train)
    stream = slot_batches(dirs[0], 2, seed=0, shuffle=0, report=ReadReport())
    for batch in (next(stream) for _ in range(4)):
        side = 32 if len(batch["views"]) <= 2 else 16
        assert {tuple(v.shape[2:]) for v in batch["views"]} == {(side, side)}
