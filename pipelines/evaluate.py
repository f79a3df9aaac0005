"""``onegen eval <name>`` and ``onegen leaderboard``: run a benchmark, merge results into reports."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from evals import benchmark, registry
from evals.predictors import make_predictor
from onegen.config import Params


def canonical_spec(spec: str, baseline: str) -> str:
    """One spelling per predictor: ``baseline`` is the benchmark's own, paths lose ``./`` and trailing ``/``."""
    if spec == "baseline":
        return f"baseline:{baseline}"
    kind, _, arg = spec.partition(":")
    return f"{kind}:{Path(arg)}" if kind in ("folder", "model") and arg else spec


def eval_dir(params: Params, name: str, predictor_spec: str | None = None, baseline: str = "") -> Path:
    """``reports/evals/<name>`` for the predictor params configure (the DVC stage's result); any other
    predictor gets ``entries/<spec as a file name>-<hash>`` under it, so adding a model to the
    leaderboard never replaces the configured result, nor another model's."""
    folder = params.paths.reports / "evals" / name
    if predictor_spec is None:
        return folder
    spec = canonical_spec(predictor_spec, baseline)
    if spec == canonical_spec(params.evals.predictor, baseline):
        return folder
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[:60]
    return folder / "entries" / f"{slug}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def result_paths(params: Params) -> list[Path]:
    """Every result the leaderboard shows: each benchmark's configured predictor, then its entries, each with the
    results of the other settings run before (``settings/``, evals.benchmark)."""
    evals = params.paths.reports / "evals"
    return [p for pattern in ("*", "*/settings/*", "*/entries/*", "*/entries/*/settings/*")
            for p in sorted(evals.glob(f"{pattern}/result.json"))]


def run(params: Params, name: str, predictor_spec: str | None = None, limit: int | None = None) -> dict:
    bench = registry.get(name)(params)
    if bench.fixed_predictor:  # it scores something params configures, not a generative model
        if predictor_spec:
            raise ValueError(f"{name} always scores {bench.fixed_predictor}; --predictor does not apply")
        spec, out = bench.fixed_predictor, eval_dir(params, name)
    else:
        spec = predictor_spec or params.evals.predictor
        out = eval_dir(params, name, spec, bench.baseline)
    predictor = make_predictor(f"baseline:{bench.baseline}" if spec == "baseline" else spec, params)
    if bench.needs and not hasattr(predictor, bench.needs):
        who = predictor.describe()
        raise ValueError(f"{name}: the {who['kind']} {who['name']!r} cannot answer it (no {bench.needs}); "
                         f"its own baseline is baseline:{bench.baseline}")
    return {**benchmark.run(bench, predictor, out, params.evals.batch_size, limit),
            "file": str(out / benchmark.result_name(limit))}


def leaderboard(params: Params) -> dict:
    from evals.leaderboard.build import build_leaderboard

    return build_leaderboard(result_paths(params), params.paths.reports)
