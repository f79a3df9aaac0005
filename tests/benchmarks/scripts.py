"""Import a script of ``benchmarks/`` (not a package) as a module, for its functions; a tiny world's latents."""

import importlib.util
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from onegen.cli import app
from onegen.config import Params, load_params, profile_path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_text2image_latents(root: Path) -> Params:
    """A 3-scene world's text2image shards encoded to latents with their prompts' features, under ``root``."""
    d = yaml.safe_load(profile_path("default").read_text())
    d["paths"] = {"data": str(root / "data"), "reports": str(root / "reports")}
    d["world"].update(scenes=3, id_groups=0, resolution=32, records_per_shard=4)
    d["latents"] = {"text": True, "batch_size": 4}
    (root / "params.yaml").write_text(yaml.safe_dump(d))
    for args in (["world"], ["shards", "text2image"], ["latents", "text2image"]):
        r = CliRunner().invoke(app, [*args, "-p", str(root / "params.yaml")])
        assert r.exit_code == 0, r.output
    return load_params(root / "params.yaml")
