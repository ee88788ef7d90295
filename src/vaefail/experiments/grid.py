"""Experiments as data: declarative grids shipped as TOML files in ``vaefail/experiments/grids``.

Each grid file has a ``description``, a ``[grid]`` table whose lists are crossed (cartesian product), an
optional ``[fixed]`` table of :class:`~vaefail.config.FitConfig` fields shared by every configuration, an
``[eval]`` table of evaluation settings, and ``[presets.<name>]`` tables (``restarts``, ``steps``,
``repeats`` and any other FitConfig field). A grid axis may also list ``benchmark_params`` tables
(TOML inline tables) to sweep a benchmark's parameters. Three grid keys are not FitConfig fields:

- ``sigma_mode``: ``"fixed"`` (sigma_eps at the benchmark's truth) or ``"learned"`` (trained from there);
- ``sigma_factor``: sigma_eps fixed at this multiple of the benchmark's true value;
- ``encoder`` (optional): ``"gaussian"`` (a :class:`~vaefail.config.FitConfig`, the MFG family) or
  ``"flow"`` (a :class:`~vaefail.config.FlowConfig`, the flow family); the config keeps the key, and the
  :class:`~vaefail.config.FlowConfig` fields in ``[fixed]`` are dropped from Gaussian rows.

Repetition ``r`` of a configuration uses ``seed = data_seed = r``: independent data and initialisation.
Tasks are listed repetition-major (every configuration's first repetition, then every second one, ...).

Two optional keys generalise this, and grids without them mean what they always meant:

- ``kind`` (top level): what a configuration is. ``"fit"`` (default): a :class:`~vaefail.config.FitConfig`
  run by the unsupervised protocol; ``"semisupervised"``: a
  :class:`~vaefail.semisupervised.SemiSupervisedConfig` (M2 on a labelled benchmark); ``"digits"``: a
  :class:`~vaefail.semisupervised.DigitsConfig` with one seed per repetition (``seeds = [r]``).
- ``[tables.<name>]``: a further grid of the same experiment (its own ``kind``, ``grid``, ``fixed``,
  ``eval`` and ``presets``), whose rows form the table ``<name>`` (written to ``<name>.csv``); the main
  grid's rows form the table named after the experiment. A further grid with ``rows_in = "<table>"`` adds
  its rows to that table instead (a grid is a cartesian product, so one table may need several).
- ``[common_grid]`` (top level): axes added to the main grid and to every further grid (e.g. the model
  families, listed once).

A preset may also replace grid axes and evaluation settings: ``[presets.<name>.grid]`` and
``[presets.<name>.eval]`` list the entries it changes (e.g. more encoders at the paper preset than at the
quick one, fewer evaluation samples in the smoke preset).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from vaefail.api import encoder_config
from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig, FlowConfig
from vaefail.errors import ConfigError, unknown_name
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.digits import DigitsConfig

EXPERIMENTS = ("table1", "px", "latent", "sigma", "sweep", "semisupervised", "downstream", "flexible")
PRESETS = ("quick", "paper", "smoke")
LABEL_KEYS = ("benchmark", "benchmark_params", "objective", "encoder", "latent_dim", "sigma_mode",
              "sigma_factor", "decoder_l2")
#: Kinds of configuration and the config keys that label their table rows.
KIND_LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "fit": LABEL_KEYS,
    "semisupervised": ("benchmark", "benchmark_params", "objective", "encoder"),
    "digits": ("labels_per_class", "encoder", "objective"),
}
KINDS = tuple(KIND_LABEL_KEYS)


@dataclass(frozen=True)
class Task:
    """One configuration to run: the fit, the evaluation settings and its labels for the tables.

    ``kind`` is one of :data:`KINDS`; ``table`` names the table its row goes to (default: the experiment).
    """

    experiment: str
    labels: dict[str, Any]
    fit: dict[str, Any]
    eval: dict[str, Any]
    kind: str = "fit"
    table: str = ""

    @property
    def table_name(self) -> str:
        return self.table or self.experiment

    def spec(self) -> dict[str, Any]:
        """What determines the result (hashed for the store): the fit, the evaluation settings and,
        for kinds other than ``"fit"`` (whose specs, and so store keys, are unchanged), the kind."""
        spec = {"fit": self.fit, "eval": self.eval}
        if self.kind != "fit":
            spec["kind"] = self.kind
        return spec


@dataclass(frozen=True)
class Experiment:
    """An expanded grid: its tasks, its description and, per further table, that table's description."""

    name: str
    description: str
    tasks: list[Task]
    table_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def tables(self) -> list[str]:
        """The experiment's table names, in order (the experiment's own name first when it has rows)."""
        return list(dict.fromkeys(t.table_name for t in self.tasks)) or [self.name]


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
        ``"quick"``, ``"paper"`` or ``"smoke"``.
    repeats
        Override the preset's number of independent repetitions (>= 1).
    """
    grid = load_grid(name)
    common = grid.get("common_grid", {})
    tasks = _expand(name, name, _with_axes(grid, common), preset, repeats)
    for table, sub in grid.get("tables", {}).items():
        tasks += _expand(name, sub.get("rows_in", table), _with_axes(sub, common), preset, repeats)
    notes = {t: sub.get("description", "") for t, sub in grid.get("tables", {}).items()
             if "rows_in" not in sub}
    return Experiment(name, grid.get("description", ""), tasks, notes)


def _with_axes(grid: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """``grid`` with the axes of ``common_grid`` added to its ``[grid]`` (its own entries win)."""
    return {**grid, "grid": {**common, **grid.get("grid", {})}} if common else grid


def _expand(name: str, table: str, grid: dict[str, Any], preset: str, repeats: int | None) -> list[Task]:
    """The tasks of one grid (the experiment's main grid or one of its ``[tables.<name>]``)."""
    kind = grid.get("kind", "fit")
    if kind not in KIND_LABEL_KEYS:
        raise unknown_name("kind", kind, KINDS)
    if preset not in grid.get("presets", {}):
        raise unknown_name("preset", preset, grid.get("presets", {}))
    settings = dict(grid["presets"][preset])
    n_repeats = int(settings.pop("repeats", 1))
    if repeats is not None:
        n_repeats = int(repeats)
    if n_repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {n_repeats}")
    axes = {**grid.get("grid", {}), **settings.pop("grid", {})}
    evaluation = {**grid.get("eval", {}), **settings.pop("eval", {})}
    tasks = []
    for rep in range(n_repeats):  # every configuration once, then the next repetition of each
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values, strict=True))
            fit = {**grid.get("fixed", {}), **settings, **point}
            labels = {k: _label(fit[k]) for k in KIND_LABEL_KEYS[kind] if k in fit} | {"repeat": rep}
            tasks.append(Task(name, labels, _config(kind, fit, rep), dict(evaluation), kind,
                              "" if table == name else table))
    return tasks


def _config(kind: str, fit: dict[str, Any], rep: int) -> dict[str, Any]:
    """The validated full config of repetition ``rep`` (every field, so the hash sees the defaults)."""
    if kind == "digits":
        return DigitsConfig.from_dict({**fit, "seeds": [rep]}).to_dict()
    fit = {**fit, "seed": rep, "data_seed": rep}
    if kind == "semisupervised":
        return SemiSupervisedConfig.from_dict(fit).to_dict()
    encoder = fit.pop("encoder", None)  # "gaussian" or "flow": which family fits it (tasks.run_fit_task)
    if encoder is None:
        return FitConfig.from_dict(_resolve_sigma(fit)).to_dict()  # validates every field
    config_type = encoder_config(encoder)
    own = {f.name for f in dataclasses.fields(config_type)}
    flow_only = {f.name for f in dataclasses.fields(FlowConfig)} - {f.name for f in
                                                                    dataclasses.fields(FitConfig)}
    fit = {k: v for k, v in fit.items() if k in own or k not in flow_only}  # a Gaussian row: no flow keys
    return {**config_type.from_dict(_resolve_sigma(fit)).to_dict(), "encoder": encoder}


def load_experiments(name: str, preset: str = "quick", repeats: int | None = None) -> list[Experiment]:
    """``"all"`` expands to every experiment; anything else to itself."""
    names = EXPERIMENTS if name == "all" else (name,)
    if name != "all" and name not in EXPERIMENTS:
        raise unknown_name("experiment", name, (*EXPERIMENTS, "all"))
    return [load_experiment(n, preset, repeats) for n in names]


def parse_only(items: Iterable[str]) -> dict[str, set[str]]:
    """``["sigma_mode=fixed", "latent_dim=1,2"]`` -> ``{"sigma_mode": {"fixed"}, "latent_dim": {"1", "2"}}``.

    Each item is ``KEY=VALUE[,VALUE...]``; a key given twice keeps the values of both.
    """
    only: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not key.strip() or not wanted:
            raise ConfigError(f"--only takes KEY=VALUE[,VALUE...], e.g. sigma_mode=fixed; got {item!r}")
        only.setdefault(key.strip(), set()).update(wanted)
    return only


def select(experiments: list[Experiment], only: Mapping[str, Collection[str]]) -> list[Experiment]:
    """The part of ``experiments`` whose configurations match ``only``: run part of a grid.

    A task is kept when, for every key of ``only``, it has that table label (:data:`KIND_LABEL_KEYS`:
    benchmark, objective, latent_dim, sigma_mode, ...) and its value, written as in the tables, is one of
    the listed ones (``latent_dim`` ``"1"``, ``benchmark_params`` ``"sigma_eps=0.1 radius=2"``). Tasks
    without the label are dropped, and so are experiments with no task left. Raises
    :class:`~vaefail.errors.ConfigError` for a key no configuration has, a value none has, or a selection
    that leaves nothing to run.
    """
    if not only:
        return experiments
    tasks = [t for e in experiments for t in e.tasks]
    labels = {k for t in tasks for k in t.labels} - {"repeat"}
    for key, values in only.items():
        if key not in labels:
            raise unknown_name("label (--only)", key, labels)
        present = {str(t.labels[key]) for t in tasks if key in t.labels}
        if missing := sorted(set(values) - present):
            raise ConfigError(f"no configuration has {key}={', '.join(missing)}; "
                              f"{key} takes {', '.join(sorted(present))}")

    def keep(task: Task) -> bool:
        return all(k in task.labels and str(task.labels[k]) in v for k, v in only.items())

    chosen = [replace(e, tasks=[t for t in e.tasks if keep(t)]) for e in experiments]
    chosen = [e for e in chosen if e.tasks]
    if not chosen:
        wanted = " ".join(f"{k}={','.join(sorted(v))}" for k, v in only.items())
        raise ConfigError(f"no configuration matches all of: {wanted}")
    return chosen


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
