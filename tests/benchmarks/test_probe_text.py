"""probe_text: its scenes carry their caption's colours and shapes, its judge scores sets, and a short run
writes the judge's ceiling and floor, both guidance scales' accuracies and the prompt reliance."""

import json
import subprocess
import sys

import pytest
import torch

from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "probe_text.py"


def _named(label, names, offset=0):
    return {names[i] for i in range(len(names)) if label[offset + i]}


def test_scenes_show_one_object_of_their_captions_colour_and_shape():
    probe = load_script("probe_text")
    images, labels, captions, share, instances = probe.render_scenes(12, 0)
    assert images.shape == (12, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert labels.shape == (12, len(probe.COLORS) + len(probe.SHAPES))
    assert instances.shape == (12, 32, 32) and share == pytest.approx((instances > 0).float().mean().item())
    for label, caption in zip(labels.tolist(), captions):
        words = caption.lower().rstrip(".").split()
        colours, shapes = _named(label, probe.COLORS), _named(label, probe.SHAPES, len(probe.COLORS))
        assert len(colours) == len(shapes) == 1 and colours <= set(words) and shapes <= set(words), caption
    _, _, again, _, _ = probe.render_scenes(12, 0)
    assert again == captions and len(set(captions)) > 6
    _, same_labels, shapes_only, _, _ = probe.render_scenes(12, 0, colours=0.0)  # the held-out colourless prompts
    assert torch.equal(same_labels, labels)
    for label, caption in zip(labels.tolist(), shapes_only):
        words = set(caption.lower().rstrip(".").split())
        assert not words & set(probe.COLORS) and _named(label, probe.SHAPES, len(probe.COLORS)) <= words, caption
    far_share = probe.render_scenes(12, 0, radius=(8.5, 11.5))[3]
    assert probe.MIN_PIXELS / 32**2 < far_share < share < 0.5  # farther cameras: smaller objects, never empty


def test_scenes_of_several_objects_label_every_colour_and_shape_their_caption_names():
    probe = load_script("probe_text")
    images, labels, captions, share, _ = probe.render_scenes(16, 0, objects=(2, 5))
    counts = []
    for label, caption in zip(labels.tolist(), captions):
        words = {w.rstrip(".,").removesuffix("s") for w in caption.lower().split()}
        colours = _named(label, probe.COLORS)
        named = {c for c in probe.COLORS if c in words}
        assert colours == named, caption
        assert _named(label, probe.SHAPES, len(probe.COLORS)) == {s for s in probe.SHAPES if s in words}, caption
        counts.append(len(colours))
    assert max(counts) >= 3 and share > probe.render_scenes(16, 0)[3]


def test_the_judges_accuracy_is_the_share_of_named_colours_among_its_likeliest():
    probe = load_script("probe_text")
    truth = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    logits = torch.tensor([[5.0, 4, 0, 3], [0, 9, 1, 2]])  # first: top-2 = {0, 1}, one of {0, 2}; second: right
    assert probe._recall_at_k(logits, truth) == 0.75


def test_the_judge_learns_from_empty_floors_to_tell_an_empty_sample():
    probe = load_script("probe_text")
    images, labels = probe.render_scenes(96, 0)[:2]
    empties = probe.empty_floors(96, 0, (5.0, 6.5))
    assert empties.shape == images.shape and not torch.equal(empties[0], empties[1])  # each its own camera
    judge = probe.fit_judge(torch.cat([images, empties]), torch.cat([labels, torch.zeros_like(labels)]), 150, 0)
    held = probe.render_scenes(32, probe.HELD_OUT_SEED)
    seen = judge.accuracy(held[0], held[1])["object"]
    seen_on_empties = judge.accuracy(probe.empty_floors(32, probe.HELD_OUT_SEED, (5.0, 6.5)), held[1])["object"]
    assert seen > 0.9 and seen_on_empties < 0.1, (seen, seen_on_empties)


def test_opponent_colours_rotate_at_scale_one_and_weaken_only_the_chroma():
    probe = load_script("probe_text")
    images = probe.render_scenes(8, 0)[0]
    rotation = probe.opponent_colours(1.0)
    assert torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-6)  # the loss and the noise cannot tell
    grey = torch.full((1, 3, 2, 2), 0.3)
    assert torch.allclose(probe.recolour(grey, probe.opponent_colours(0.2))[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-6)
    weak = probe.opponent_colours(0.25)
    moved = probe.recolour(images, weak)
    assert torch.allclose(moved[:, 0], probe.recolour(images, rotation)[:, 0])  # the luma as it was
    assert torch.allclose(moved[:, 1:], 0.25 * probe.recolour(images, rotation)[:, 1:], atol=1e-6)
    assert torch.allclose(probe.recolour(moved, torch.linalg.inv(weak)), images, atol=1e-5)


def test_a_short_run_reports_the_judge_and_both_guidance_scales(tmp_path):  # in bf16, as a GPU trains
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--scenes", "64", "--steps", "4", "--eval-every", "2",
                        "--batch", "4", "--judge-steps", "5", "--prompt-prefix", "[[text2image]]", "--objects", "1", "3",
                        "--bf16", "--chroma-scale", "0.5", "--caption-colours", "0.5", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record["judge"]) == {"held_out", "other_prompts", "empty_floors_seen_as_objects"}
    assert 0 < record["object_share"] < 0.5
    assert [row["step"] for row in record["evals"]] == [2, 4]
    for scale in ("cfg1", "cfg3"):
        assert set(record["evals"][-1][scale]) == {"color", "shape", "object"}
        assert all(0 <= v <= 1 for v in record["evals"][-1][scale].values())
        # the colourless prompts' samples: their shapes, and how many show an object at all
        assert set(record["evals"][-1]["shapes_only"][scale]) == {"shape", "object"}
        assert all(0 <= v <= 1 for v in record["evals"][-1]["shapes_only"][scale].values())
    reliance = record["evals"][-1]["reliance"]
    assert set(reliance) == {"own", "other", "empty"} and set(reliance["own"]) == {"sigma_0.5", "sigma_0.75", "sigma_0.95"}
    assert all(v > 0 for losses in reliance.values() for v in losses.values())


def test_the_trainer_loop_trains_from_latent_shards_and_scores_its_ema(tmp_path):
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--scenes", "48", "--steps", "4", "--eval-every", "2", "--batch", "4",
                        "--judge-steps", "5", "--prompt-prefix", "[[text2image]]", "--loop", "trainer",
                        "--work", str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [row["step"] for row in record["evals"]] == [2, 4] and record["ema"]["step"] == 4
    assert set(record["ema"]) == {"step", "cfg1", "cfg3", "shapes_only", "reliance"}
    assert len(list((tmp_path / "work" / "data" / "latents" / "text2image").glob("shard-*.tar"))) == 1
    metrics = (tmp_path / "work" / "reports" / "train" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == 4


def test_the_trainer_loop_refuses_what_it_cannot_train(tmp_path):
    for extra, says in ((["--width", "128"], "trains `tiny`"), ([], "pass --prompt-prefix"),
                        (["--bf16"], "autocasts on a GPU only")):
        prefix = [] if not extra else ["--prompt-prefix", "[[text2image]]"]
        r = subprocess.run([sys.executable, str(SCRIPT), "--loop", "trainer", *prefix, *extra], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and says in r.stderr, r.stderr


def test_the_vae_codec_gives_the_model_standardised_channels_and_decodes_to_images():
    probe = load_script("probe_text")
    images, held = probe.render_scenes(16, 0)[0], probe.render_scenes(8, probe.HELD_OUT_SEED)[0]
    encode, decode, summary = probe.vae_codec(images, held, "channel", steps=2, seed=0)
    latents = encode(images)  # the training renders the channels are standardised on
    assert latents.shape == (16, 1, 16, probe.RES // 2, probe.RES // 2)
    assert torch.allclose(latents.std((0, 1, 3, 4)), torch.ones(16), atol=1e-3)
    assert not torch.allclose(encode(held).std((0, 1, 3, 4)), torch.ones(16), atol=1e-3)
    assert decode(encode(held)).shape == held.shape and summary["steps"] == 2 and summary["latent_norm"] == "channel"
    pixels_in, pixels_out = probe.pixel_codec(None)
    assert torch.allclose(pixels_out(pixels_in(held)), held)


def test_a_vae_run_reports_the_fit_and_the_judge_of_its_round_trips(tmp_path):
    out = tmp_path / "probe.json"
    common = [sys.executable, str(SCRIPT), "--scenes", "32", "--steps", "2", "--eval-every", "2", "--batch", "4",
              "--judge-steps", "3", "--vae-steps", "2"]
    r = subprocess.run([*common, "--vae", "global", "--vae-downsample", "4", "--vae-object-weight", "20", "--json",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["vae"]["latent_norm"] == "global" and len(record["vae"]["channel_std"]) == 16
    assert record["vae"]["object_weight"] == 20 and record["vae"]["held_out_objects"]["objects"] > 100
    assert set(record["judge"]) == {"held_out", "other_prompts", "empty_floors_seen_as_objects"}
    assert [row["step"] for row in record["evals"]] == [2]
    r = subprocess.run([*common, "--vae", "channel", "--chroma-scale", "0.5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--chroma-scale recolours the pixels that --vae replaces" in r.stderr


def test_the_trainer_is_held_to_the_probes_device():  # model/train.py alone takes CUDA whenever there is one
    probe = load_script("probe_text")
    original = probe.trainer.setup_distributed
    with probe.trainer_on(torch.device("cpu")):
        assert probe.trainer.setup_distributed().device == torch.device("cpu")
    assert probe.trainer.setup_distributed is original


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there is no CUDA")
def test_a_cuda_run_is_refused_where_there_is_none():
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr, r.stderr
