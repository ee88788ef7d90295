"""The one result type of every model family (selected model + every restart's record) and its run folder.

A run folder holds ``config.json`` (the format version, the model family as ``module:qualname``, the
selected restart, the full config and checksums of every file), ``models.eqx`` (the parameters of every
restart, stacked), ``restarts.csv`` (one row per restart) and ``summary.json``. Folders are written
atomically: into a temporary sibling, then renamed. Reading checks every file against the others
(:func:`read_run_folder`) and asks the recorded family for the models' skeleton, so a new family needs no
change here.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import pandas as pd

from vaefail._io import check_folder_writable
from vaefail.benchmarks import Benchmark
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
    truth
        The ground-truth model with its trained encoder when the fit computed it (``truth=True``), for
        the evaluation in the same session; not saved in the run folder.
    """

    config: Any
    models: Any
    restarts: pd.DataFrame
    selected: int
    summary: dict[str, Any] = field(default_factory=dict)
    family: Any = None
    truth: Any = None

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = family_from_path(_DEFAULT_FAMILY)

    @property
    def model(self) -> Any:
        """The selected restart's model."""
        return take(self.models, self.selected)

    @property
    def benchmark(self) -> Benchmark:
        """The benchmark (or, for a data run, the :class:`vaefail.userdata.UserData`) it was fitted on:
        the family's :meth:`~vaefail.protocol.ModelFamily.make_benchmark`."""
        return self.family.make_benchmark(self.config)

    def data(self) -> Any:
        """The data this result was fitted on, regenerated from its seeds (the family's
        :meth:`~vaefail.protocol.ModelFamily.make_data`: splits with ``train``, ``val``, ``test``)."""
        return self.family.make_data(self.benchmark, self.config)

    splits = data

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the run folder atomically; an existing run folder at ``path`` is replaced when
        ``overwrite`` (else :class:`~vaefail.errors.StoreError`)."""
        path = Path(path)
        check_writable(path, overwrite=overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name, data in self.to_files().items():
                (tmp / name).write_bytes(data)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
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
        """Read a run folder written by :meth:`save`.

        Raises :class:`~vaefail.errors.StoreError` if ``path`` is not a run folder, and a one-line
        "damaged run folder: PATH (what is wrong)" if any file is truncated, zeroed, edited or
        inconsistent with the others (see :func:`read_run_folder`).
        """
        parts = read_run_folder(path, hint="make one with `vaefail fit --out DIR`")
        return cls(parts.config, parts.models, parts.restarts, parts.selected, parts.summary,
                   family=parts.family)


@dataclass
class RunParts:
    """The checked contents of a run folder (see :func:`read_run_folder`)."""

    config: Any
    models: Any
    restarts: pd.DataFrame
    selected: int
    summary: dict[str, Any]
    family: Any


def damaged(path: Path, what: str) -> StoreError:
    """The one-line error of a damaged run folder: ``damaged run folder: PATH (what is wrong)``."""
    return StoreError(f"damaged run folder: {path} ({what})")


def read_run_folder(path: str | os.PathLike[str], *, hint: str = "") -> RunParts:
    """Read and check a run folder written by :func:`run_files`.

    The recorded family (``module:qualname``; for the older formats the MFG-VAE's or M2's) gives the config
    type (``family.config_type``) and the models' skeleton (``family.skeleton(config)``). Checks, each
    failing with :func:`damaged`: the four files exist and parse; ``config.json`` is an object of a known
    format whose family can be imported and whose config is valid; the SHA-256 checksums recorded in it (runs
    written since they were added) match ``models.eqx``, ``restarts.csv``, ``summary.json`` and the
    config itself; ``models.eqx`` holds exactly the arrays (shapes, dtypes) the config describes, with
    no bytes left over; ``restarts.csv`` has one row per restart; ``selected`` is an integer in
    ``[0, restarts)``.

    Parameters
    ----------
    path
        The folder.
    hint
        Appended to the "not a run folder" message.
    """
    path = Path(path)
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if not path.is_dir() or missing:
        raise StoreError(
            f"{path} is not a vaefail run folder (missing {', '.join(missing) or 'folder'})"
            + (f"; {hint}" if hint else "")
        )
    try:
        raw = {name: (path / name).read_bytes() for name in RUN_FILES}
    except OSError as err:
        raise damaged(path, f"cannot read: {err.strerror or err}") from err
    meta = _json(path, raw, "config.json", dict)
    found = meta.get("format")
    if found != RUN_FORMAT and found not in _OLD_FORMATS:
        raise StoreError(f"{path} was written in format {found!r}; this vaefail reads {RUN_FORMAT!r}")
    sums = meta.get("checksums")
    if sums is not None:
        if not isinstance(sums, dict):
            raise damaged(path, "config.json: 'checksums' is not an object")
        for name in RUN_FILES[1:]:
            if sums.get(name) != _sha256(raw[name]):
                raise damaged(path, f"{name} does not match its checksum in config.json: truncated, "
                                    "zeroed or edited")
        if sums.get("config") != _meta_checksum(meta):
            raise damaged(path, "config.json was edited: its config or selected restart no longer "
                                "matches the checksum written with the weights")
    if not isinstance(meta.get("config"), dict):
        raise damaged(path, "config.json has no 'config' object")
    family_name = meta.get("family") if found == RUN_FORMAT else _OLD_FORMATS[found]
    if not isinstance(family_name, str):
        raise damaged(path, "config.json has no model 'family'")
    try:
        family = family_from_path(family_name)
        config = family.config_type.from_dict(meta["config"])
    except VaefailError as err:
        raise damaged(path, f"config.json: {err}") from err
    except (TypeError, ValueError) as err:
        raise damaged(path, f"config.json: invalid config: {err}") from err
    selected = meta.get("selected")
    if isinstance(selected, bool) or not isinstance(selected, int):
        raise damaged(path, f"config.json: selected restart {selected!r} is not an integer")
    if not 0 <= selected < config.restarts:
        raise damaged(path, f"config.json: selected restart {selected} is out of range for "
                            f"{config.restarts} restarts")
    try:
        skeleton = family.skeleton(config)
    except VaefailError as err:
        raise damaged(path, f"config.json: {err}") from err
    buffer = io.BytesIO(raw["models.eqx"])
    try:
        models = eqx.tree_deserialise_leaves(buffer, skeleton)
    except Exception as err:  # equinox/NumPy raise RuntimeError, ValueError, EOFError, jax tree errors
        raise damaged(path, "models.eqx does not hold the weights config.json describes: truncated, "
                            "zeroed, or the config was edited") from err
    if buffer.read(1):
        raise damaged(path, "models.eqx has bytes left over after the weights config.json describes")
    try:
        restarts = pd.read_csv(io.BytesIO(raw["restarts.csv"]))
    except (ValueError, pd.errors.ParserError) as err:
        raise damaged(path, f"restarts.csv: {err}") from err
    if len(restarts) != config.restarts:
        raise damaged(path, f"restarts.csv has {len(restarts)} rows for {config.restarts} restarts")
    if "selected" in restarts.columns:
        flagged = [i for i, v in enumerate(restarts["selected"]) if str(v).strip().lower() in ("true", "1")]
        if flagged != [selected]:
            raise damaged(path, f"config.json selects restart {selected} but restarts.csv marks "
                                f"{flagged or 'none'}")
    summary = _json(path, raw, "summary.json", dict)
    return RunParts(config, models, restarts, selected, summary, family)


def _json(path: Path, raw: dict[str, bytes], name: str, kind: type) -> Any:
    try:
        value = json.loads(raw[name])
    except ValueError as err:  # includes UnicodeDecodeError
        raise damaged(path, f"{name} is not valid JSON: {err}") from err
    if not isinstance(value, kind):
        raise damaged(path, f"{name} is not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config.json``'s format, family, selected restart and config."""
    core = {k: meta.get(k) for k in ("format", "family", "selected", "config")}
    return _sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode())


def run_files(run_format: str, result: FitResult) -> dict[str, bytes]:
    """The files of a run folder as bytes: ``config.json`` (format, family, selected restart, config, and
    the SHA-256 checksums of the other files and of itself that :func:`read_run_folder` checks),
    ``models.eqx`` (every restart, stacked), ``restarts.csv`` and ``summary.json``."""
    meta: dict[str, Any] = {"format": run_format, "family": family_path(result.family),
                            "selected": int(result.selected), "config": result.config.to_dict()}
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, result.models)
    files = {
        "models.eqx": buffer.getvalue(),
        "restarts.csv": result.restarts.to_csv(index=False).encode(),
        "summary.json": json.dumps(result.summary, indent=2).encode(),
    }
    # config.json's own key order is kept, so the checksum is of its canonical JSON
    meta["config"] = json.loads(json.dumps(meta["config"]))
    meta["checksums"] = {name: _sha256(data) for name, data in files.items()} | {
        "config": _meta_checksum(meta)}
    return {"config.json": json.dumps(meta, indent=2).encode(), **files}


def check_writable(path: Path, *, overwrite: bool = False) -> None:
    """Fail early, with a clear message, if a run folder cannot be written at ``path``: it is a file, a
    non-empty folder that is not a run, an existing run (unless ``overwrite``), or not writable.

    Creates ``path``'s parent folders (where :meth:`FitResult.save` writes its temporary folder).
    """
    if path.exists() and not path.is_dir():
        raise StoreError(f"--out {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / "config.json").is_file():
            raise StoreError(f"--out {path} is a non-empty folder that is not a vaefail run; not touching it")
        if not overwrite:
            raise StoreError(f"--out {path} holds a run already; pass --overwrite to replace it")
    check_folder_writable(path.parent, f"to --out {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot write to --out {path}: {err.strerror or err}") from err
