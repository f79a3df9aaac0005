"""GenEval (Ghosh et al. 2023): object-focused text-to-image evaluation, and its procedural-world edition."""

from evals.geneval.rules import judge

__all__ = ["judge"]
