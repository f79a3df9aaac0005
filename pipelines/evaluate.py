"""``onegen eval <name>`` and ``onegen leaderboard``: run a benchmark, merge results into reports."""

from __future__ import annotations

from pathlib import Path

from evals import benchmark, registry
from evals.predictors import make_predictor
from onegen.config import Params


def eval_dir(params: Params, name: str) -> Path:
    return params.paths.reports / "evals" / name


def run(params: Params, name: str, predictor_spec: str | None = None, limit: int | None = None) -> dict:
    bench = registry.get(name)(params)
    if bench.fixed_predictor:  # it scores something params configures, not a generative model
        if predictor_spec:
            raise ValueError(f"{name} always scores {bench.fixed_predictor}; --predictor does not apply")
        spec = bench.fixed_predictor
    else:
        spec = predictor_spec or params.evals.predictor
    predictor = make_predictor(f"baseline:{bench.baseline}" if spec == "baseline" else spec, params)
    if bench.needs and not hasattr(predictor, bench.needs):
        who = predictor.describe()
        raise ValueError(f"{name}: the {who['kind']} {who['name']!r} cannot answer it (no {bench.needs}); "
                         f"its own baseline is baseline:{bench.baseline}")
    return benchmark.run(bench, predictor, eval_dir(params, name), params.evals.batch_size, limit)


def leaderboard(params: Params) -> dict:
    from evals.leaderboard.build import build_leaderboard

    results = sorted((params.paths.reports / "evals").glob("*/result.json"))
    return build_leaderboard(results, params.paths.reports)
