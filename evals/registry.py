"""Benchmarks register themselves by name; ``onegen eval <name>`` looks them up here."""

from __future__ import annotations

from collections.abc import Callable

BENCHMARKS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        cls.name = name
        BENCHMARKS[name] = cls
        return cls
    return deco


def get(name: str) -> type:
    import evals.benchmarks  # noqa: F401 -- importing registers every benchmark

    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
