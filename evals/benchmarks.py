"""Importing this module registers every benchmark (each module registers its own)."""

from evals.depth import benchmark as _depth  # noqa: F401
from evals.nvs import benchmark as _nvs  # noqa: F401
from evals.pose import benchmark as _pose  # noqa: F401
