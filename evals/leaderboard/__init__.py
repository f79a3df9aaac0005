"""The leaderboard: our benchmark results beside the papers' published tables.

``load_results`` reads the result JSONs the benchmarks write (``evals.benchmark.run``),
``load_published`` the hand-transcribed rows of OneDiffusion Tables 1-4 and UniCon Tables 1-2
(``published.yaml``), and ``build_leaderboard`` writes leaderboard.md/.csv/.html.
"""

from evals.leaderboard.build import Row, ResultError, build_leaderboard, load_published, load_results

__all__ = ["ResultError", "Row", "build_leaderboard", "load_published", "load_results"]
