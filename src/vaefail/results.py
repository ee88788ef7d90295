"""A fitted result (selected model + every restart's record) and its on-disk run folder.

A run folder holds ``config.json`` (the full :class:`FitConfig`, the format version and the selected
restart), ``models.eqx`` (the parameters of every restart, stacked), ``restarts.csv`` (one row per restart)
and ``summary.json``. Folders are written atomically: into a temporary sibling, then renamed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import pandas as pd

from vaefail.benchmarks import Benchmark, Splits, get_benchmark
from vaefail.config import FitConfig
from vaefail.errors import StoreError, VaefailError
from vaefail.models import VAE
from vaefail.training import init_models, take

RUN_FORMAT = "vaefail-run/2"  # 2: VAE.learn_sigma became an array leaf of models.eqx
RUN_FILES = ("config.json", "models.eqx", "restarts.csv", "summary.json")


@dataclass
class FitResult:
    """The outcome of :func:`vaefail.fit`.

    Attributes
    ----------
    config
        The configuration that produced it.
    models
        Every restart's model, stacked along a leading restart axis (see :func:`vaefail.training.take`).
    restarts
        One row per restart: ``restart, start (truth|random), status (ok|diverged), steps,
        train_bound (first 2,000 training points), val_bound, test_bound, test_elbo, sigma_eps, selected``.
        Bounds are means over points of the per-point bound, in nats (higher is better).
    selected
        Index of the selected restart (best validation bound among those that did not diverge).
    summary
        Scalar results of the selected model (and of the ground-truth model, when computed).
    truth
        The ground-truth model with its trained encoder when the fit computed it (``truth=True``), for
        the evaluation in the same session; not saved in the run folder.
    """

    config: FitConfig
    models: VAE
    restarts: pd.DataFrame
    selected: int
    summary: dict[str, Any] = field(default_factory=dict)
    truth: VAE | None = None

    @property
    def model(self) -> VAE:
        """The selected restart's model."""
        return take(self.models, self.selected)

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.config.benchmark, **self.config.benchmark_params)

    def splits(self) -> Splits:
        """The train/validation/test data this result was fitted on (regenerated from its seed)."""
        c = self.config
        return self.benchmark.splits(c.n_train, c.n_val, c.n_test, seed=c.split_seed)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the run folder atomically; an existing run folder at ``path`` is replaced."""
        path = Path(path)
        check_writable(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name, data in self.to_files().items():
                (tmp / name).write_bytes(data)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    def to_files(self) -> dict[str, bytes]:
        """The run folder's files as bytes (what :meth:`save` writes), e.g. to ship from a worker."""
        return run_files(RUN_FORMAT, self)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FitResult:
        """Read a run folder written by :meth:`save` (clear error if ``path`` is not one)."""
        path = Path(path)
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise StoreError(
                f"{path} is not a vaefail run folder (missing {', '.join(missing) or 'folder'}); "
                "make one with `vaefail fit --out DIR`"
            )
        try:
            meta = json.loads((path / "config.json").read_text())
            if meta.get("format") != RUN_FORMAT:
                raise StoreError(
                    f"{path} was written in format {meta.get('format')!r}; this vaefail reads "
                    f"{RUN_FORMAT!r}"
                )
            config = FitConfig.from_dict(meta["config"])
            benchmark = get_benchmark(config.benchmark, **config.benchmark_params)
            keys = list(jax.random.split(jax.random.PRNGKey(0), config.restarts))
            skeleton = init_models(config, benchmark, keys)
            models = eqx.tree_deserialise_leaves(path / "models.eqx", skeleton)
            restarts = pd.read_csv(path / "restarts.csv")
            summary = json.loads((path / "summary.json").read_text())
        except VaefailError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{path} is a damaged run folder: {err}") from err
        return cls(config, models, restarts, int(meta["selected"]), summary)


def run_files(run_format: str, result: Any) -> dict[str, bytes]:
    """The files of a run folder as bytes: ``config.json`` (format, selected restart, config),
    ``models.eqx`` (every restart, stacked), ``restarts.csv`` and ``summary.json``.

    Shared by every result type with ``config.to_dict()``, ``selected``, ``models``, ``restarts`` and
    ``summary`` (the unsupervised :class:`FitResult` and the semi-supervised result).
    """
    meta = {"format": run_format, "selected": result.selected, "config": result.config.to_dict()}
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, result.models)
    return {
        "config.json": json.dumps(meta, indent=2).encode(),
        "models.eqx": buffer.getvalue(),
        "restarts.csv": result.restarts.to_csv(index=False).encode(),
        "summary.json": json.dumps(result.summary, indent=2).encode(),
    }


def check_writable(path: Path) -> None:
    """Fail early, with a clear message, if a run folder cannot be written at ``path``."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"--out {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise StoreError(f"--out {path} is a non-empty folder that is not a vaefail run; not touching it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise StoreError(f"cannot write to --out {path}: {err.strerror or err}") from err
