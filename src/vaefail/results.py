"""The one result type of every model family (selected model + every restart's record) and its run folder.

A run folder holds ``config.json`` (the format version, the model family as ``module:qualname``, the
selected restart and the full config), ``models.eqx`` (the parameters of every restart, stacked),
``restarts.csv`` (one row per restart) and ``summary.json``. Folders are written atomically: into a
temporary sibling, then renamed. :meth:`FitResult.load` asks the recorded family for the models' skeleton,
so a new family needs no change here.
"""

from __future__ import annotations

import importlib
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

from vaefail.benchmarks import Benchmark, get_benchmark
from vaefail.errors import StoreError, VaefailError
from vaefail.stacking import take

#: 3: one format for every family, recorded as ``module:qualname`` (2 and M2's 1 are still read).
RUN_FORMAT = "vaefail-run/3"
RUN_FILES = ("config.json", "models.eqx", "restarts.csv", "summary.json")
#: Families of the older formats, which did not record theirs.
_OLD_FORMATS = {
    "vaefail-run/2": "vaefail.mfg:MFGFamily",
    "vaefail-m2-run/1": "vaefail.semisupervised.family:M2Family",
}
_DEFAULT_FAMILY = "vaefail.mfg:MFGFamily"


def family_path(family: Any) -> str:
    """``module:qualname`` of a family's class, as recorded in a run folder."""
    cls = type(family)
    return f"{cls.__module__}:{cls.__qualname__}"


def family_from_path(path: str) -> Any:
    """The family recorded as ``module:qualname`` (imported by name: a family is any importable class)."""
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise StoreError(f"unknown model family {path!r}: {err}") from None
    return obj()


@dataclass
class FitResult:
    """The outcome of a fit with the restart protocol (:func:`vaefail.fit`,
    :func:`vaefail.semisupervised.fit_semisupervised`, :func:`vaefail.protocol.fit_family`).

    Attributes
    ----------
    config
        The configuration that produced it.
    models
        Every restart's model, stacked along a leading restart axis (see :func:`vaefail.stacking.take`).
    restarts
        One row per restart: ``restart, start (truth|random), status (ok|diverged), steps``, the family's
        columns and ``selected``. For the MFG-VAE: ``train_bound`` (first 2,000 training points),
        ``val_bound, test_bound, test_elbo, sigma_eps``; bounds are means over points of the per-point bound,
        in nats (higher is better).
    selected
        Index of the selected restart (best validation score among those that did not diverge).
    summary
        Scalar results of the selected model (and of the ground-truth model, when computed).
    family
        The model family (:class:`vaefail.protocol.ModelFamily`); default the MFG-VAE.
    """

    config: Any
    models: Any
    restarts: pd.DataFrame
    selected: int
    summary: dict[str, Any] = field(default_factory=dict)
    family: Any = None

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = family_from_path(_DEFAULT_FAMILY)

    @property
    def model(self) -> Any:
        """The selected restart's model."""
        return take(self.models, self.selected)

    @property
    def benchmark(self) -> Benchmark:
        """The benchmark (or, for a data run, the :class:`vaefail.userdata.UserData`) it was fitted on."""
        return _benchmark_of(self.family, self.config)

    def data(self) -> Any:
        """The data this result was fitted on, regenerated from its seeds (the family's
        :meth:`~vaefail.protocol.ModelFamily.make_data`: splits with ``train``, ``val``, ``test``)."""
        return self.family.make_data(self.benchmark, self.config)

    splits = data

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
            found = meta.get("format")
            if found != RUN_FORMAT and found not in _OLD_FORMATS:
                raise StoreError(
                    f"{path} was written in format {found!r}; this vaefail reads {RUN_FORMAT!r}"
                )
            family = family_from_path(meta["family"] if found == RUN_FORMAT else _OLD_FORMATS[found])
            config = family.config_type.from_dict(meta["config"])
            benchmark = _benchmark_of(family, config)
            keys = list(jax.random.split(jax.random.PRNGKey(0), config.restarts))
            skeleton = family.init(config, benchmark, keys)
            models = eqx.tree_deserialise_leaves(path / "models.eqx", skeleton)
            restarts = pd.read_csv(path / "restarts.csv")
            summary = json.loads((path / "summary.json").read_text())
        except VaefailError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{path} is a damaged run folder: {err}") from err
        return cls(config, models, restarts, int(meta["selected"]), summary, family=family)


def _benchmark_of(family: Any, config: Any) -> Any:
    """The family's ``make_benchmark(config)`` when it has one (a data run rebuilds its data from the
    recorded file), else the registered benchmark named in the config."""
    make = getattr(family, "make_benchmark", None)
    if make is not None:
        return make(config)
    return get_benchmark(config.benchmark, **config.benchmark_params)


def run_files(run_format: str, result: FitResult) -> dict[str, bytes]:
    """The files of a run folder as bytes: ``config.json`` (format, family, selected restart, config),
    ``models.eqx`` (every restart, stacked), ``restarts.csv`` and ``summary.json``."""
    meta = {"format": run_format, "family": family_path(result.family), "selected": result.selected,
            "config": result.config.to_dict()}
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
