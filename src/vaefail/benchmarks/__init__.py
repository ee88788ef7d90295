"""Ground-truth benchmarks with exact log p(x) and posteriors (docs/science.md, "Ground-truth
benchmarks").

Use :func:`get_benchmark` to build one by name::

    bench = get_benchmark("clusters", beta=300.0)
    data = bench.splits(seed=0)
    bench.log_prob(data.test.x)

New benchmarks (e.g. the labelled ``semicircle``) register themselves by adding their class to
:data:`BENCHMARKS`.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Any

from vaefail.benchmarks.base import DEFAULT_Z_GRID, Benchmark, Dataset, Splits
from vaefail.benchmarks.labelled import LabelledBenchmark, LabelledDataset, Semicircle, SharedLine
from vaefail.benchmarks.unsupervised import Clusters, Figure8, Linear, Quadratic
from vaefail.errors import ConfigError, unknown_name

#: Benchmark classes by name.
BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (Linear, Quadratic, Figure8, Clusters, Semicircle, SharedLine)
}


def list_benchmarks() -> list[str]:
    """Names of all registered benchmarks, sorted."""
    return sorted(BENCHMARKS)


def get_benchmark(name: str, **params: Any) -> Benchmark:
    """Build a benchmark by name, overriding its default parameters.

    Parameters
    ----------
    name
        A key of :data:`BENCHMARKS`.
    **params
        Generator parameters, e.g. ``sigma_eps=0.05``; see ``BENCHMARKS[name]``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered (the message lists the known names).
    ConfigError
        If a parameter is unknown or has an impossible value.
    """
    if name not in BENCHMARKS:
        raise unknown_name("benchmark", name, BENCHMARKS)
    cls = BENCHMARKS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"benchmark {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(valid)}"
        )
    try:
        return _build(name, tuple(sorted(params.items())))
    except TypeError:  # an unhashable parameter value: build uncached
        return cls(**params)


@functools.lru_cache(maxsize=64)
def _build(name: str, params: tuple[tuple[str, Any], ...]) -> Benchmark:
    """One shared instance per (name, parameters): benchmarks are immutable, and functions compiled for
    one instance (its ``f_gt`` is part of a model's static structure) are then reused by the next task."""
    return BENCHMARKS[name](**dict(params))


__all__ = [
    "BENCHMARKS",
    "DEFAULT_Z_GRID",
    "Benchmark",
    "Clusters",
    "Dataset",
    "Figure8",
    "LabelledBenchmark",
    "LabelledDataset",
    "Linear",
    "Quadratic",
    "Semicircle",
    "SharedLine",
    "Splits",
    "get_benchmark",
    "list_benchmarks",
]
