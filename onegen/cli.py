"""The ``onegen`` command: one subcommand per pipeline stage (``dvc.yaml`` calls only these)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from onegen.config import FAMILIES, ConfigError, load_params, profile_path

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build the One-Gen dataset, train and evaluate OneDiffusion. Each pipeline subcommand is a "
                       "DVC stage (`dvc repro` runs them all); `check` and `params` manage params.yaml.")
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (validated against the schema)")


def _params(path: Path):
    try:
        return load_params(path)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _run(fn, *args):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return fn(*args)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) quotes its message
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(1) from None


@app.command()
def world(params: Path = PARAMS):
    """Render the procedural world (scenes seen by orbit rigs, identities across scenes) into data/world."""
    from pipelines import world as stage

    st = _run(stage.run, _params(params))
    typer.echo(f"world: {st['samples']} records in {st['shards']} shards ({st['bytes'] / 2**20:.1f} MB)")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        typer.echo(f"error: unknown family {family!r}; choose one of {', '.join(FAMILIES)}", err=True)
        raise typer.Exit(2)


@app.command()
def shards(family: str = typer.Argument(..., help=f"one of: {', '.join(FAMILIES)}"), params: Path = PARAMS):
    """Build one task family's shards in data/shards/<family> (resumes; skips finished shards)."""
    _check_family(family)
    from pipelines import shards as stage

    st = _run(stage.run, _params(params), family)
    typer.echo(f"{family}: {st['samples']} samples in {st['shards']} shards, {st['skipped']} skipped, tasks {st['tasks']}")


@app.command()
def latents(family: str = typer.Argument(..., help=f"one of: {', '.join(FAMILIES)}"), params: Path = PARAMS):
    """VAE-encode one family's shards (and cache its prompts' text features) into data/latents/<family>."""
    _check_family(family)
    from pipelines import latents as stage

    st = _run(stage.run, _params(params), family)
    typer.echo(f"latents {family}: {st['samples']} samples ({'; '.join(st['sides'])}) in {st['shards']} shards")


@app.command()
def stats(params: Path = PARAMS):
    """Write the dataset card reports/dataset.md with histograms and example grids."""
    from pipelines import stats as stage

    p = _params(params)
    st = _run(stage.run, p)
    typer.echo(f"stats: {st['samples']} samples; card at {p.paths.reports / 'dataset.md'}")


@app.command()
def train(params: Path = PARAMS):
    """Train OneDiffusion on the shards (resumes from checkpoints/latest; torchrun for many GPUs)."""
    from model import train as trainer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = trainer.train(_params(params))
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if summary:
        typer.echo(f"train: {summary}")


@app.command()
def sample(params: Path = PARAMS):
    """Sample a grid (text->image, depth->image, image->depth) from the latest checkpoint into reports/samples."""
    from pipelines import sample as stage

    p = _params(params)
    info = _run(stage.run, p)
    typer.echo(f"sample: {p.paths.reports / 'samples' / 'samples.png'} ({info['model']['weights']} weights)")


@app.command("eval")
def evaluate(name: str = typer.Argument(..., help="benchmark name, e.g. world_depth, depth_nyuv2, nvs_gso "
                                                   "(an unknown name lists them all)"),
             predictor: str = typer.Option(None, help="'baseline', 'baseline:<name>', 'folder:<path>' or "
                                                      "'model:<checkpoint>'; default: params' evals.predictor (the "
                                                      "'annotators' benchmark takes none: it scores the configured "
                                                      "annotators)"),
             limit: int = typer.Option(None, min=1, help="evaluate only the first N items"),
             params: Path = PARAMS):
    """Run one benchmark (resumable) into reports/evals/<name>/result.json, or for a --predictor other than
    params' evals.predictor into reports/evals/<name>/entries/<predictor>/: `onegen leaderboard` shows them all.
    A --limit run writes result.partial.json there instead, which the leaderboard leaves out."""
    from pipelines import evaluate as stage

    r = _run(stage.run, _params(params), name, predictor, limit)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items())
    typer.echo(f"{name} [{r['model']['kind']}: {r['model']['name']}] on {r['n_items']} items: {shown} "
               f"-> {r['file']}")


@app.command("world-detector")
def world_detector(params: Path = PARAMS):
    """Train the world GenEval detector (YOLOv8n-seg on procedural renders) into data/world_detector."""
    from evals.geneval import world_detector as stage

    m = _run(stage.run, _params(params))
    typer.echo(f"world-detector: held-out mAP50 {m['map50_box']:.3f} (masks {m['map50_mask']:.3f}), "
               f"{m['train_seconds']:.0f} s")


@app.command()
def leaderboard(params: Path = PARAMS):
    """Merge every result with the papers' published numbers into reports/leaderboard.{md,csv,html}."""
    from pipelines import evaluate as stage

    p = _params(params)
    _run(stage.leaderboard, p)
    typer.echo(f"leaderboard: {p.paths.reports / 'leaderboard'}.md, .csv, .html")


@app.command("params")
def write_params(profile: str = typer.Option("default", help="profile name (onegen/profiles/*.yaml)"),
                 output: Path = typer.Option(Path("params.yaml"), help="where to write it")):
    """Write a named profile (default, paper) as the params file DVC tracks."""
    try:
        src = profile_path(profile)
        load_params(src)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    output.write_text(src.read_text())
    typer.echo(f"wrote profile {profile!r} to {output}")


@app.command()
def check(params: Path = PARAMS):
    """Validate a params file against the schema and print it resolved."""
    typer.echo(_params(params).model_dump_json(indent=1))
