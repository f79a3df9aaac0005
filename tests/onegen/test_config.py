from pathlib import Path

import pytest
import yaml

from onegen.config import FAMILIES, ConfigError, load_params, load_profile, parse_params, profile_path

REPO = Path(__file__).resolve().parents[2]


def _default() -> dict:
    return yaml.safe_load(profile_path("default").read_text())


def test_pose_is_built_only_where_asked_for_and_a_family_left_out_is_off():
    d = _default()
    d["shards"]["families"]["pose"] = {"enabled": False, "sources": ["world"]}  # off: its sources do not matter
    assert not parse_params(d).shards.families["pose"].enabled
    del d["shards"]["families"]["pose"]  # params from before the family existed
    assert parse_params(d).shards.families["pose"].model_dump() == {"enabled": False, "sources": [],
                                                                    "max_samples": None}
    assert not parse_params({}).shards.families["pose"].enabled  # the schema's own default: the world, no people
    paper = load_profile("paper")
    assert paper.shards.families["pose"].sources == ["unsplash"] and "pose" in paper.train.stages[2].families
    # every model annotator can have its own Ray actor pool
    from onegen.families import MODEL_ANNOTATORS

    d = _default()
    d["build"]["annotator_pools"] = {name: {"concurrency": 1, "num_gpus": 0.5} for name in MODEL_ANNOTATORS}
    assert set(parse_params(d).build.annotator_pools) == set(MODEL_ANNOTATORS)
    assert "pose" in paper.build.annotator_pools


def test_committed_params_are_the_default_profile():
    assert load_params(REPO / "params.yaml") == load_profile("default")


def test_profiles_load_and_differ_where_the_paper_does():
    d, p = load_profile("default"), load_profile("paper")
    assert d.world.resolution == 128 and p.world.resolution == 256
    assert p.world.views_per_scene >= 4 and p.world.id_views == (2, 5)
    assert set(p.shards.families) == set(FAMILIES)
    # the paper's sides: text2image 256² then 512² alone, 512² among the other tasks' 256², a 1024² finetune
    assert [s.side_of("text2image") for s in p.train.stages] == [256, 512, 512, 1024]
    assert p.train.stages[2].side_of("depth") is None and p.train.sides_of("text2image") == [256, 512, 1024]
    # photos for text-to-image stored at 1024² (never upscaled), the same photos for the 256² conditions at 256²
    assert p.sources["unsplash_hr"].resolution == 1024 and p.sources["unsplash"].resolution is None
    assert "world" not in p.shards.families["text2image"].sources
    assert d.train.sides_of("text2image") == d.train.sides_of("depth") == [None]  # the default: as built
    # the ID finetune's side by view count (512² for 2-3 views, 256² for 4-5) over subjects stored at 512²
    assert [str(side) for side in p.train.sides_of("id")] == ["256", "512px up to 3 views, 256px up to 5 views, else as stored"]
    assert p.shards.families["id"].sources == ["faces"] and p.sources["faces"].scene_side == 512


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["world"].__setitem__("scenes", "many"), r"world\.scenes: Input should be a valid integer.*'many'"),
        (lambda d: d["world"].__setitem__("sceens", 3), r"world\.sceens: unknown key"),
        (lambda d: d["shards"]["families"]["depth"].__setitem__("enabld", True), r"shards\.families\.depth\.enabld: unknown key"),
        (lambda d: d["shards"]["families"].__setitem__("dept", {}), r"shards\.families\.dept"),
        (lambda d: d["world"].__setitem__("resolution", 100), r"world\.resolution: .*multiple of 8"),
        (lambda d: d["world"].__setitem__("views_per_scene", 13), r"world\.views_per_scene: .*less than or equal to 12"),
        (lambda d: d["world"].__setitem__("min_objects", 9), r"min_objects must be <= max_objects"),
        (lambda d: d["shards"]["families"]["text2image"].__setitem__("sources", ["nowhere"]), r"unknown source 'nowhere'"),
        (lambda d: d.__setitem__("reader", [1, 2]), r"reader: Input should be a valid dictionary"),
        (lambda d: d["train"]["stages"][0].__setitem__("resolution", 72), r"train\.stages\.0\.resolution: .*multiple of 16"),
        (lambda d: d["train"]["stages"][0].__setitem__("family_resolution", {"depth": 64}),
         r"train\.stages\.0: family_resolution names \['depth'\], not among this stage's families \['text2image'\]"),
        (lambda d: d["train"]["stages"][0].__setitem__("family_resolution", {"text2image": {}}),
         r"train\.stages\.0: family_resolution gives \['text2image'\] sides by view count without any view count"),
        (lambda d: d["train"]["stages"][0].__setitem__("family_resolution", {"text2image": {0: 64}}),
         r"train\.stages\.0\.family_resolution\.text2image\.by_views\.0\.\[key\]: .*greater than or equal to 1"),
        (lambda d: d["train"].update(compile=False, compile_mode="reduce-overhead"),
         r"train: compile_mode reduce-overhead needs compile: true and activation_checkpointing: false"),
        (lambda d: d["train"].update(compile=True, compile_mode="reduce-overhead", activation_checkpointing=True),
         r"train: compile_mode reduce-overhead needs compile: true and activation_checkpointing: false"),
        (lambda d: d["train"].update(compile=True, compile_mode="reduce-overhead", grad_accum=2),
         r"train: compile_mode reduce-overhead runs one micro-step a step \(grad_accum: 1\)"),
        (lambda d: d["train"].__setitem__("attention", "flash"), r"train\.attention: Input should be 'auto', 'cudnn' or 'flex'"),
        (lambda d: d["train"].__setitem__("master_weights", "yes"),
         r"train\.master_weights\.bool: Input should be a valid boolean \(got 'yes'\).*Input should be 'auto'"),
        (lambda d: d["train"].update(master_weights=True, parallel="fsdp2"),
         r"train: master_weights does not run under parallel fsdp2"),
        (lambda d: d["train"].update(master_weights=True, grad_accum=2), r"train: master_weights needs grad_accum 1"),
        (lambda d: d["shards"]["families"]["pose"].__setitem__("sources", ["world", "sample_photos"]),
         r"shards\.families\.pose\.sources: the procedural world has no people to pose"),
    ],
)
def test_bad_params_name_the_dotted_key(edit, message):
    d = _default()
    edit(d)
    with pytest.raises(ConfigError, match=message):
        parse_params(d, "params.yaml")


def test_master_weights_default_to_auto_which_fsdp2_and_accumulation_accept():
    from onegen.config import TrainConfig

    assert TrainConfig().master_weights == "auto" and "master_weights" not in _default()["train"]
    for update in ({"parallel": "fsdp2"}, {"grad_accum": 2}):  # where auto turns them off (model/train.py)
        d = _default()
        d["train"].update(update)
        assert parse_params(d).train.master_weights == "auto"
        d["train"]["master_weights"] = False
        assert parse_params(d).train.master_weights is False


def test_error_is_one_line_and_names_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("world: {scenes: -1}\n")
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value) and "world.scenes" in str(e.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("world: {scenes: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_params(p)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown profile 'tiny'; known: default, paper"):
        load_profile("tiny")


def test_captioner_batch_follows_the_weights_dtype_unless_set():
    from onegen.config import CaptionerConfig

    assert CaptionerConfig().batch_size == 40  # bf16: 64 ran an 80 GB H100 out of memory
    assert CaptionerConfig(quantize="fp8").batch_size == 96 and CaptionerConfig(quantize="fp8").prefill_mlp_rows == 16
    assert CaptionerConfig(quantize="fp8", batch_size=8).batch_size == 8
    assert CaptionerConfig(quantize="fp8", batch_size=96).prefill_mlp_rows == 16
    assert CaptionerConfig(quantize="fp8", kv_cache="fp8").batch_size == 128  # the FP8 cache leaves room for 128 rows
    assert CaptionerConfig(kv_cache="fp8").batch_size == 40
    assert CaptionerConfig(quantize="fp8", prefill_mlp_rows=None).prefill_mlp_rows is None
    assert CaptionerConfig(quantize="fp8", prefill_mlp_rows=8).prefill_mlp_rows == 8
    for bad in (0, None):  # null in params.yaml is an error, not the default
        with pytest.raises(ValueError):
            CaptionerConfig(batch_size=bad)
