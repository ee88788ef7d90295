"""A user's own data: reading and validating a table file, and the no-ground-truth "benchmark" it becomes.

:func:`read_table` reads CSV/TSV (with or without a header), ``.npy``, ``.npz`` (one array or a named one)
and Parquet (with ``pyarrow``), picks columns by name or index and checks the values; every problem is one
:class:`~vaefail.errors.DataError` with a readable message. :class:`UserData` is what the restart protocol
sees in place of a benchmark: ``x_dim``, ``labelled = False``, ``has_truth = False``, seeded
train/validation/test :meth:`~UserData.splits` of the (optionally standardised) rows, and no ``log_prob`` or
``f_gt``. Standardisation is ``x' = (x - mean) / scale`` per column (``scale`` the population standard
deviation); :meth:`UserData.unstandardise` undoes it for reported samples and figures.

A :class:`DataSpec` records everything that determines the data of a run (path, content hash, columns,
array key, standardisation, split fractions or column), so a run folder rebuilds exactly the same splits.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaefail.benchmarks.base import Dataset, Splits
from vaefail.errors import DataError

#: More columns than this need an explicit ``max_columns`` (``--max-columns``): a wide file is more often
#: a transposed one or the wrong file than a data set (MNIST's 784 pixels pass).
MAX_COLUMNS = 1024
#: The smallest split: every part needs at least this many rows (a standard error needs two).
MIN_SPLIT_ROWS = 2
#: Files whose in-memory size (as float64) would exceed this share of the available memory are refused.
MEMORY_SHARE = 0.5
#: Environment variable that overrides the available-memory figure (bytes), for tests and small machines.
MEMORY_ENV = "VAEFAIL_MEMORY_LIMIT"
SPLIT_NAMES = ("train", "val", "test")
_TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}


@dataclass(frozen=True)
class Table:
    """A validated numeric table: ``values`` (n, D) float64, its column ``names`` and, when the file had
    a split column, each row's part (``"train"``, ``"val"`` or ``"test"``)."""

    values: np.ndarray
    names: tuple[str, ...]
    split: np.ndarray | None = None


def available_memory() -> int:
    """Bytes of memory available to this process (``VAEFAIL_MEMORY_LIMIT`` overrides; else
    ``MemAvailable`` of ``/proc/meminfo``, else physical memory)."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return int(float(env))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_file(path: Path) -> int:
    """Size of ``path`` in bytes, after checking that it exists, is a non-empty readable file and fits in
    memory. A text file needs about its own size again as float64 (each value takes at least 2 bytes of
    text and 8 in memory, plus the parser's copy), so the refusal threshold is ``MEMORY_SHARE`` of the
    available memory for 4x the file size."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"cannot read data file {path}: permission denied")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"data file {path} is empty")
    need = 4 * size
    avail = available_memory()
    if need > MEMORY_SHARE * avail:
        raise DataError(
            f"data file {path} is {_size(size)}; reading it needs about {_size(need)} and only "
            f"{_size(avail)} is available: use a sample of its rows or a machine with more memory"
        )
    return size


def file_hash(path: Path) -> str:
    """SHA-256 of the file's bytes (first 16 hex digits), recorded so a run notices a changed file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_table(
    path: str | os.PathLike[str],
    columns: list[str] | tuple[str, ...] | None = None,
    *,
    key: str | None = None,
    split_column: str | None = None,
    max_columns: int = MAX_COLUMNS,
) -> Table:
    """Read and validate a numeric table.

    Parameters
    ----------
    path
        ``.csv``/``.tsv``/``.tab``/``.txt`` (delimiter from the suffix, else sniffed; a header is detected
        when its first row is not all numbers), ``.npy`` (2-D), ``.npz`` (one array, or ``key``) or
        ``.parquet``/``.pq`` (needs ``pyarrow``).
    columns
        Columns to keep, each a header name or a 0-based index (as text or int); default all (except
        ``split_column``).
    key
        The array of an ``.npz`` file holding several.
    split_column
        A column whose values (``train``, ``val``, ``test``) give each row's part of the split.
    max_columns
        Refuse more selected columns than this.

    Raises
    ------
    DataError
        Missing, empty, unreadable or too large file; header only; ragged rows; a non-numeric column (named,
        with its first offending value); NaN or infinite values (count and first row); unknown columns;
        too many columns.
    """
    path = Path(path)
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        frame = _from_array(_load_npy(path), path)
    elif suffix == ".npz":
        frame = _from_array(_load_npz(path, key), path)
    elif suffix in (".parquet", ".pq"):
        frame = _load_parquet(path)
    else:
        frame = _load_text(path, _TEXT_SUFFIXES.get(suffix))
    split = None
    if split_column is not None:
        if split_column not in frame.columns:
            raise DataError(f"--split-column {split_column!r} is not a column of {path}; columns: "
                            f"{_list(frame.columns)}")
        split = frame[split_column].astype(str).str.strip().to_numpy()
        bad = ~np.isin(split, SPLIT_NAMES)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"split column {split_column!r} must hold train, val or test; row {row + 1} has "
                            f"{split[row]!r}")
        frame = frame.drop(columns=[split_column])
    frame = _select(frame, columns, path)
    if frame.shape[1] > max_columns:
        raise DataError(
            f"{path} has {frame.shape[1]} columns, more than the limit of {max_columns}: pass "
            f"--max-columns {frame.shape[1]} if that is intended, or choose columns with --columns"
        )
    values = _numeric(frame, path)
    return Table(values=values, names=tuple(str(c) for c in frame.columns), split=split)


def _list(names: Any, limit: int = 12) -> str:
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} as a .npy array: {err}") from None


def _load_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if not names:
                raise DataError(f"{path} holds no arrays")
            if key is None:
                if len(names) > 1:
                    raise DataError(f"{path} holds several arrays ({_list(names)}): choose one with --key")
                key = names[0]
            if key not in names:
                raise DataError(f"{path} has no array {key!r}; arrays: {_list(names)}")
            return archive[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as a .npz archive: {err}") from None


def _from_array(array: np.ndarray, path: Path) -> Any:
    import pandas as pd

    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(f"{path} holds an array of shape {array.shape}; need 2-D (rows x columns)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path} holds an empty array (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        return pd.DataFrame(array.astype(object))
    return pd.DataFrame(array)


def _load_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'vaefail[parquet]'") from None
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises its own error types
        raise DataError(f"cannot read {path} as Parquet: {err}") from None
    if frame.shape[0] == 0:
        raise DataError(f"{path} has columns but no rows")
    return frame


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_text(path: Path, sep: str | None) -> Any:
    import pandas as pd

    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"cannot read {path} as text (not UTF-8 at byte {err.start}); is it a binary file?") \
            from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DataError(f"data file {path} is empty")
    if sep is None:
        first = lines[0][1]
        sep = "\t" if "\t" in first else ("," if "," in first else (";" if ";" in first else r"\s+"))
    splitter = (lambda s: s.split()) if sep == r"\s+" else (lambda s: s.split(sep))
    head = [c.strip() for c in splitter(lines[0][1])]
    header = not all(_is_number(c) for c in head)
    body = lines[1:] if header else lines
    if not body:
        raise DataError(f"{path} has a header ({_list(head)}) but no data rows")
    width = len(head)
    for lineno, line in body:
        n = len(splitter(line))
        if n != width:
            raise DataError(f"{path} has ragged rows: line {lineno} has {n} fields, the first line {width}")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None, skip_blank_lines=True,
                            engine="c" if sep != r"\s+" else "python")
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"cannot parse {path}: {err}") from None
    if header:
        frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _select(frame: Any, columns: list[str] | tuple[str, ...] | None, path: Path) -> Any:
    if columns is None:
        return frame
    names = [str(c) for c in frame.columns]
    picked = []
    for c in columns:
        c = str(c).strip()
        if c in names:
            picked.append(frame.columns[names.index(c)])
        elif c.lstrip("-").isdigit() and -len(names) <= int(c) < len(names):
            picked.append(frame.columns[int(c)])
        else:
            raise DataError(f"no column {c!r} in {path}; columns: {_list(names)} (or 0-based indices)")
    if len(set(map(str, picked))) != len(picked):
        raise DataError(f"--columns names a column twice: {', '.join(map(str, columns))}")
    return frame[picked]


def _numeric(frame: Any, path: Path) -> np.ndarray:
    import pandas as pd

    for name in frame.columns:
        col = frame[name]
        if col.dtype.kind in "biuf":
            continue
        parsed = pd.to_numeric(col, errors="coerce")
        bad = parsed.isna() & col.notna()
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(f"column {str(name)!r} of {path} is not numeric: row {row + 1} has "
                            f"{str(col.iloc[row])!r}")
        frame = frame.assign(**{str(name): parsed}) if isinstance(name, str) else frame
    values = frame.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path} has {int(bad.sum())} missing, NaN or infinite value(s); the first in row {row + 1}, "
            f"column {str(frame.columns[col])!r}"
        )
    return values


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a run's data: the file and how it is read, standardised and split.

    Attributes
    ----------
    path
        The file (absolute path); ``sha256`` its content hash when the run was fitted.
    columns
        The chosen columns (names or indices as text); ``None`` for all.
    key
        The ``.npz`` array.
    standardise
        Centre and scale every column to mean 0 and standard deviation 1 (on all rows).
    val_fraction, test_fraction
        Shares of the rows in the validation and test parts (a seeded permutation; the rest train), unless
        ``split_column`` gives each row's part.
    max_columns
        The column limit the file was read with.
    drop_constant
        Leave out columns with one value in every row (they carry no information and cannot be
        standardised) instead of refusing the file.
    """

    path: str
    sha256: str = ""
    columns: tuple[str, ...] | None = None
    key: str | None = None
    standardise: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_column: str | None = None
    max_columns: int = MAX_COLUMNS
    drop_constant: bool = False

    def __post_init__(self) -> None:
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v < 1):
                raise DataError(f"{name} must be in (0, 1), got {v!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise DataError("val_fraction + test_fraction must be < 1 (something must be left to train on)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = None if self.columns is None else list(self.columns)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**d)


@dataclass(frozen=True, eq=False)
class UserData:
    """A data set without ground truth, in the place of a benchmark in the restart protocol.

    ``x`` holds every row, standardised when ``spec.standardise`` (``x = (raw - mean) / scale``).
    ``x_dim`` is the number of columns; there is no ``log_prob``, ``f_gt`` or ``posterior``
    (``has_truth = False``). ``sigma_eps`` is 1.0, a starting value only: a data fit must be given its
    ``sigma_eps`` or learn it.
    """

    spec: DataSpec
    x: np.ndarray
    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    split: np.ndarray | None = None
    labelled: bool = False
    has_truth: bool = False
    latent_dim: int = 0
    sigma_eps: float = 1.0
    summary: str = "user data (no ground truth)"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return Path(self.spec.path).stem

    @property
    def x_dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def params(self) -> dict[str, Any]:
        """The data spec as a JSON-ready dict (what a benchmark's parameters are to a benchmark)."""
        return self.spec.to_dict()

    def split_sizes(self) -> tuple[int, int, int]:
        """``(n_train, n_val, n_test)``: from the split column, else ``round(fraction * n)`` for validation
        and test (at least :data:`MIN_SPLIT_ROWS` each) and the rest for training."""
        if self.split is not None:
            return tuple(int(np.sum(self.split == s)) for s in SPLIT_NAMES)  # type: ignore[return-value]
        n_val = max(MIN_SPLIT_ROWS, round(self.spec.val_fraction * self.n))
        n_test = max(MIN_SPLIT_ROWS, round(self.spec.test_fraction * self.n))
        return self.n - n_val - n_test, n_val, n_test

    def check_split(self) -> tuple[int, int, int]:
        """:meth:`split_sizes`, after checking every part has at least :data:`MIN_SPLIT_ROWS` rows."""
        sizes = self.split_sizes()
        if min(sizes) < MIN_SPLIT_ROWS:
            spec = self.spec
            smallest = min(spec.val_fraction, spec.test_fraction, 1 - spec.val_fraction - spec.test_fraction)
            need = 3 * MIN_SPLIT_ROWS if self.split is not None else math.ceil(MIN_SPLIT_ROWS / smallest)
            raise DataError(
                f"{self.spec.path} has {self.n} rows: too few for a train/validation/test split "
                f"(train {sizes[0]}, val {sizes[1]}, test {sizes[2]}; each needs at least {MIN_SPLIT_ROWS}, "
                f"so at least {need} rows)"
            )
        return sizes

    def splits(self, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Splits:
        """The train/validation/test parts: rows permuted by ``numpy.random.default_rng(seed)`` (or the split
        column's parts, in file order), then the first ``n_train``, next ``n_val``, next ``n_test``. The
        latents ``z`` are empty (shape ``(n, 0)``): there is no truth."""
        sizes = self.check_split()
        if (n_train, n_val, n_test) != sizes:
            raise DataError(
                f"the run expects splits of {n_train}/{n_val}/{n_test} rows but {self.spec.path} gives "
                f"{sizes[0]}/{sizes[1]}/{sizes[2]}"
            )
        if self.split is not None:
            parts = [self.x[self.split == s] for s in SPLIT_NAMES]
        else:
            order = np.random.default_rng(seed).permutation(self.n)
            bounds = np.cumsum([0, n_train, n_val, n_test])
            parts = [self.x[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return Splits(*(Dataset(x=np.ascontiguousarray(p), z=np.zeros((len(p), 0))) for p in parts))

    def unstandardise(self, x: np.ndarray) -> np.ndarray:
        """Back to the file's units: ``x * scale + mean``."""
        return np.asarray(x, np.float64) * self.scale + self.mean


def load_data(spec: DataSpec, *, check_hash: bool = True) -> UserData:
    """Read and validate ``spec.path`` (:func:`read_table`), standardise, and check the split sizes.

    With ``check_hash`` and a recorded ``spec.sha256``, refuse a file whose content changed since.
    """
    return _load_cached(json.dumps(spec.to_dict(), sort_keys=True), check_hash)


#: In-memory tables given to the Python API, by ``memory:<hash>`` path (this process only).
_ARRAYS: dict[str, Table] = {}
MEMORY_PREFIX = "memory:"


def array_spec(data: Any, columns: list[str] | tuple[str, ...] | None = None, **options: Any) -> DataSpec:
    """A :class:`DataSpec` for an in-memory array or DataFrame (validated like a file's columns).

    The table is kept in this process under ``memory:<hash>``; a run fitted on it can be saved, but
    loading it in another process needs the data again (it is not copied into the run folder).
    """
    import pandas as pd

    frame = data if isinstance(data, pd.DataFrame) else _from_array(np.asarray(data), Path("the array"))
    frame = _select(frame, columns, Path("the array"))
    values = _numeric(frame, Path("the array"))
    digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]
    path = f"{MEMORY_PREFIX}{digest}"
    _ARRAYS[path] = Table(values=values, names=tuple(str(c) for c in frame.columns))
    return DataSpec(path=path, sha256=digest, **options)


@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str, check_hash: bool) -> UserData:
    spec = DataSpec.from_dict(json.loads(spec_json))
    path = Path(spec.path)
    if spec.path.startswith(MEMORY_PREFIX):
        if spec.path not in _ARRAYS:
            raise DataError(f"this run was fitted on an in-memory array ({spec.path}) that this process does "
                            "not hold; fit from a file to rebuild runs elsewhere")
        table = _ARRAYS[spec.path]
    else:
        check_file(path)
        if check_hash and spec.sha256 and file_hash(path) != spec.sha256:
            raise DataError(f"data file {path} changed since the run was fitted (content hash differs); "
                            "the run cannot be rebuilt from it")
        table = read_table(path, spec.columns, key=spec.key, split_column=spec.split_column,
                           max_columns=spec.max_columns)
    x, names = table.values, table.names
    if spec.drop_constant:
        keep = np.ptp(x, axis=0) > 0
        if not keep.any():
            raise DataError(f"every column of {path} is constant: nothing to fit")
        x, names = x[:, keep], tuple(n for n, k in zip(names, keep, strict=True) if k)
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if spec.standardise:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        const = np.flatnonzero(~(scale > 1e-12 * np.maximum(1.0, np.abs(mean))))
        if const.size:
            c = const[0]
            raise DataError(
                f"column {names[c]!r} of {path} is constant ({x[0, c]:.6g} in every row): it cannot be "
                f"standardised; drop it with --columns or --drop-constant, or pass --no-standardise"
                + (f" ({const.size} constant columns in all)" if const.size > 1 else "")
            )
        x = (x - mean) / scale
    data = UserData(spec=spec, x=x, names=names, mean=mean, scale=scale, split=table.split)
    data.check_split()
    return data


def data_spec(path: str | os.PathLike[str], columns: list[str] | tuple[str, ...] | None = None,
              **options: Any) -> DataSpec:
    """A :class:`DataSpec` for ``path`` (made absolute) with its current content hash."""
    p = Path(path).expanduser()
    check_file(p)
    cols = None if columns is None else tuple(columns)
    return DataSpec(path=str(p.resolve()), sha256=file_hash(p), columns=cols, **options)
