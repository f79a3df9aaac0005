"""Importing this module registers every benchmark (each module registers its own)."""

from evals.annotators import benchmark as _annotators  # noqa: F401
from evals.condition import benchmark as _condition  # noqa: F401
from evals.depth import benchmark as _depth  # noqa: F401
from evals.geneval import benchmark as _geneval  # noqa: F401
from evals.identity import benchmark as _identity  # noqa: F401
from evals.nvs import benchmark as _nvs  # noqa: F401
from evals.pose import benchmark as _pose  # noqa: F401
