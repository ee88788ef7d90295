"""Experiments as data: declarative grids shipped as TOML files in ``vaefail/experiments/grids``.

Each grid file has a ``description``, a ``[grid]`` table whose lists are crossed (cartesian product), an
optional ``[fixed]`` table of :class:`~vaefail.config.FitConfig` fields shared by every configuration, an
``[eval]`` table of evaluation settings, and ``[presets.<name>]`` tables (``restarts``, ``steps``,
``repeats`` and any other FitConfig field). A grid axis may also list ``benchmark_params`` tables
(TOML inline tables) to sweep a benchmark's parameters. Two grid keys are not FitConfig fields:

- ``sigma_mode``: ``"fixed"`` (sigma_eps at the benchmark's truth) or ``"learned"`` (trained from there);
- ``sigma_factor``: sigma_eps fixed at this multiple of the benchmark's true value.

Repetition ``r`` of a configuration uses ``seed = data_seed = r``: independent data and initialisation.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig
from vaefail.errors import ConfigError, unknown_name

EXPERIMENTS = ("table1", "px", "latent", "sigma", "sweep")
PRESETS = ("quick", "paper", "smoke")
LABEL_KEYS = ("benchmark", "benchmark_params", "objective", "latent_dim", "sigma_mode", "sigma_factor")


@dataclass(frozen=True)
class Task:
    """One configuration to run: the fit, the evaluation settings and its labels for the tables."""

    experiment: str
    labels: dict[str, Any]
    fit: dict[str, Any]
    eval: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """What determines the result (hashed for the store): the fit and the evaluation settings."""
        return {"fit": self.fit, "eval": self.eval}


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    tasks: list[Task]


def load_grid(name: str) -> dict[str, Any]:
    """The parsed TOML grid of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise unknown_name("experiment", name, (*EXPERIMENTS, "all"))
    text = resources.files("vaefail.experiments").joinpath("grids", f"{name}.toml").read_text()
    return tomllib.loads(text)


def load_experiment(name: str, preset: str = "quick", repeats: int | None = None) -> Experiment:
    """Expand experiment ``name`` at ``preset`` into tasks (one per configuration and repetition).

    Parameters
    ----------
    name
        One of :data:`EXPERIMENTS`.
    preset
        ``"quick"`` or ``"paper"``.
    repeats
        Override the preset's number of independent repetitions (>= 1).
    """
    grid = load_grid(name)
    if preset not in grid.get("presets", {}):
        raise unknown_name("preset", preset, grid.get("presets", {}))
    settings = dict(grid["presets"][preset])
    n_repeats = int(settings.pop("repeats", 1))
    if repeats is not None:
        n_repeats = int(repeats)
    if n_repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {n_repeats}")
    axes = grid.get("grid", {})
    tasks = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        for rep in range(n_repeats):
            fit = {**grid.get("fixed", {}), **settings, **point, "seed": rep, "data_seed": rep}
            labels = {k: _label(fit[k]) for k in LABEL_KEYS if k in fit} | {"repeat": rep}
            fit = _resolve_sigma(fit)
            config = FitConfig.from_dict(fit)  # validates every field
            tasks.append(Task(name, labels, config.to_dict(), dict(grid.get("eval", {}))))
    return Experiment(name, grid.get("description", ""), tasks)


def load_experiments(name: str, preset: str = "quick", repeats: int | None = None) -> list[Experiment]:
    """``"all"`` expands to every experiment; anything else to itself."""
    names = EXPERIMENTS if name == "all" else (name,)
    if name != "all" and name not in EXPERIMENTS:
        raise unknown_name("experiment", name, (*EXPERIMENTS, "all"))
    return [load_experiment(n, preset, repeats) for n in names]


def _label(value: Any) -> Any:
    """Hashable table label: ``{"sigma_eps": 0.1, "radius": 2}`` -> ``"sigma_eps=0.1 radius=2"``."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return value


def _resolve_sigma(fit: dict[str, Any]) -> dict[str, Any]:
    fit = dict(fit)
    mode = fit.pop("sigma_mode", "fixed")
    factor = fit.pop("sigma_factor", None)
    if mode not in ("fixed", "learned"):
        raise unknown_name("sigma_mode", mode, ("fixed", "learned"))
    fit["learn_sigma"] = mode == "learned"
    if factor is not None:
        bench = get_benchmark(fit["benchmark"], **fit.get("benchmark_params", {}))
        fit["sigma_eps"] = float(factor) * bench.sigma_eps
    return fit
