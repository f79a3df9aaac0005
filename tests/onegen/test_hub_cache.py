"""``hf:<org>/<name>[@rev][/path]`` weights keys: resolved in a local Hugging Face cache, never fetched.

Each test writes the cache the way ``hf download`` leaves it (``models--org--name/refs/main`` naming a
commit, ``snapshots/<commit>/`` holding the files) in a temporary ``HF_HUB_CACHE``.
"""

import numpy as np
import pytest
from huggingface_hub import constants

from model.vae import LatentCodec
from onegen.annotators.base import AnnotatorError
from onegen.annotators.depth import DepthAnnotator
from onegen.config import ConfigError, DepthAnnotatorConfig, load_profile, parse_params
from onegen.hub_cache import resolve_model_path
from tests.tiny_annotators import save_tiny_depth_anything

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cached_snapshot(cache, repo: str):
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def test_resolves_a_repo_a_revision_and_a_file_in_it(hub_cache):
    snapshot = cached_snapshot(hub_cache, "org/weights")
    (snapshot / "model.pt").write_bytes(b"x")
    assert resolve_model_path("hf:org/weights") == snapshot
    assert resolve_model_path(f"hf:org/weights@{COMMIT}") == snapshot
    assert resolve_model_path("hf:org/weights/model.pt") == snapshot / "model.pt"
    assert resolve_model_path("weights/local.pt") == "weights/local.pt"  # a plain path is left alone
    assert resolve_model_path(None) is None


@pytest.mark.parametrize("spec, says", [
    ("hf:org/absent", "org/absent is not in the local Hugging Face cache"),
    (f"hf:org/weights@{'f' * 40}", f"--revision {'f' * 40}` beforehand"),
    ("hf:org/weights/missing.pt", "no missing.pt in the cached snapshot"),
])
def test_what_is_missing_is_named(hub_cache, spec, says):
    cached_snapshot(hub_cache, "org/weights")
    with pytest.raises(FileNotFoundError, match=f"the.key: {spec}: .*{says}"):
        resolve_model_path(spec, "the.key")


def test_a_part_downloaded_alone_resolves(hub_cache):
    # `hf download org/sd3 --include "vae/*"`: the snapshot holds vae/ only
    snapshot = cached_snapshot(hub_cache, "org/sd3")
    (snapshot / "vae").mkdir()
    (snapshot / "vae" / "config.json").write_text("{}")
    assert resolve_model_path("hf:org/sd3/vae") == snapshot / "vae"
    with pytest.raises(FileNotFoundError, match=r"no unet in the cached snapshot"):
        resolve_model_path("hf:org/sd3/unet")


def test_a_file_whose_blob_is_missing_is_named_incomplete(hub_cache):
    snapshot = cached_snapshot(hub_cache, "org/weights")
    (snapshot / "vae").mkdir()
    (snapshot / "vae" / "model.safetensors").symlink_to(hub_cache / "models--org--weights" / "blobs" / "absent")
    for spec in ("hf:org/weights/vae", "hf:org/weights/vae/model.safetensors"):
        with pytest.raises(FileNotFoundError, match=r"is incomplete \(1 file\(s\) without their blob, "
                                                    r"e\.g\. vae/model\.safetensors\)"):
            resolve_model_path(spec)


@pytest.mark.parametrize("spec", ["hf:org", "hf:/name", "hf:org/name@"])
def test_a_malformed_spec_fails_at_params_load_naming_the_key(spec):
    data = load_profile("default").model_dump(mode="json")
    data["model"]["vae"] = spec
    with pytest.raises(ConfigError, match=r"^params.yaml: model\.vae: hf:.*: expected hf:<org>/<name>"):
        parse_params(data, "params.yaml")


def test_an_annotator_loads_from_the_cache_as_from_its_folder(hub_cache, tmp_path):
    snapshot = save_tiny_depth_anything(cached_snapshot(hub_cache, "org/tiny-depth"))
    data = load_profile("default").model_dump(mode="json")
    data["annotators"]["depth"].update(path="hf:org/tiny-depth", input_size=56)
    cfg = parse_params(data).annotators.depth
    assert str(cfg.path) == "hf:org/tiny-depth"  # looked up where the weights are opened, not at params load
    from_cache = DepthAnnotator.load(cfg, device="cpu")
    from_folder = DepthAnnotator.load(DepthAnnotatorConfig(path=snapshot, input_size=56), device="cpu")
    assert from_cache.record == from_folder.record  # the provenance hash is of the same bytes
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(from_cache([image])[0].data, from_folder([image])[0].data)


def test_a_key_not_in_the_cache_fails_where_it_is_opened_naming_the_key(hub_cache):
    data = load_profile("default").model_dump(mode="json")
    data["annotators"]["depth"]["path"] = "hf:depth-anything/absent"
    data["model"]["vae"] = "hf:stabilityai/absent/vae"
    params = parse_params(data)  # stages that open neither still run
    with pytest.raises(AnnotatorError, match=r"^annotators\.depth\.path: hf:depth-anything/absent: .*not in the local"):
        DepthAnnotator.load(params.annotators.depth, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"^model\.vae: hf:stabilityai/absent/vae: .*not in the local"):
        LatentCodec.load(params.model.vae)
