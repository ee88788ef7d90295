"""A fitted M2 result (selected model + every restart's record) and its files.

The files mirror :class:`vaefail.results.FitResult`'s run folder: ``config.json`` (the full
:class:`SemiSupervisedConfig`, the format and the selected restart), ``models.eqx`` (every restart's
parameters, stacked), ``restarts.csv`` and ``summary.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import pandas as pd

from vaefail.benchmarks import LabelledBenchmark, get_benchmark
from vaefail.errors import StoreError
from vaefail.results import read_run_folder, run_files
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.model import M2
from vaefail.training import take

RUN_FORMAT = "vaefail-m2-run/1"
RUN_FILES = ("config.json", "models.eqx", "restarts.csv", "summary.json")


@dataclass
class SemiSupervisedResult:
    """The outcome of :func:`vaefail.semisupervised.fit_semisupervised`.

    Attributes
    ----------
    config
        The configuration that produced it.
    models
        Every restart's M2, stacked along a leading restart axis.
    restarts
        One row per restart (see :func:`~vaefail.semisupervised.training.fit_semisupervised`).
    selected
        Index of the selected restart (best mean validation J among those that did not diverge).
    summary
        Scalar results of the selected model (and of the ground-truth model, when computed).
    """

    config: SemiSupervisedConfig
    models: M2
    restarts: pd.DataFrame
    selected: int
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> M2:
        """The selected restart's model."""
        return take(self.models, self.selected)

    @property
    def benchmark(self) -> LabelledBenchmark:
        return get_benchmark(self.config.benchmark, **self.config.benchmark_params)  # type: ignore[return-value]

    def data(self):
        """The splits and labelled subsets this result was fitted on (regenerated from its seeds)."""
        from vaefail.semisupervised.training import make_data

        return make_data(self.benchmark, self.config)

    def to_files(self) -> dict[str, bytes]:
        """The run folder's files as bytes, e.g. for a results store."""
        return run_files(RUN_FORMAT, self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the files into the folder ``path`` (created if needed; existing files are replaced)."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for name, data in self.to_files().items():
                tmp = path / f".{name}.tmp"
                tmp.write_bytes(data)
                tmp.replace(path / name)
        except OSError as err:
            raise StoreError(f"cannot write M2 run folder {path}: {err.strerror or err}") from err
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemiSupervisedResult:
        """Read a folder written by :meth:`save` (or :meth:`to_files`)."""
        from vaefail.semisupervised.training import init_m2_models

        def skeleton(config: SemiSupervisedConfig) -> M2:
            bench = get_benchmark(config.benchmark, **config.benchmark_params)
            keys = list(jax.random.split(jax.random.PRNGKey(0), config.restarts))
            return init_m2_models(config, bench, keys)  # type: ignore[arg-type]

        parts = read_run_folder(path, RUN_FORMAT, SemiSupervisedConfig.from_dict, skeleton)
        return cls(parts.config, parts.models, parts.restarts, parts.selected, parts.summary)
