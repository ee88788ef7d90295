"""The bad-input matrix of the command line: every command, every kind of wrong input, one contract.

For each row: exit code 2, exactly one line on stderr starting with ``error:`` and containing the row's
message, nothing on stdout, no traceback, nothing written at the output path, the input run folder
untouched, and no computation started (fitting, evaluation and the sweep executor are replaced by stubs
that fail the row if reached: every error is found before any work).

A new command joins by adding rows to :data:`ROWS` (and, if it writes a file, its output option to
:data:`OUTPUT_OPTION`). Placeholders in a row's arguments: ``{run}`` a valid run folder, ``{file}`` an
existing regular file, ``{dir}`` an empty folder, ``{foreign}`` a non-empty folder that is not a run,
``{new}`` a fresh path that must still not exist afterwards, ``{damaged}`` a damaged copy of ``{run}``
(:data:`DAMAGES`); data files for ``fit --data`` and ``diagnose``: ``{csv}`` a valid table, ``{nancsv}``
one with a NaN, ``{infcsv}`` one with an inf, ``{textcsv}`` a non-numeric column, ``{headcsv}`` a header
only, ``{raggedcsv}`` ragged rows, ``{constcsv}`` a constant column, ``{tinycsv}`` too few rows. The
property test at the end draws option values for ``fit``, ``sample`` and ``evaluate`` with Hypothesis and
checks the same contract.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import vaefail
from vaefail.cli import app
from vaefail.config import LIMITS, MAX_PAIRS_PER_STEP, FitConfig
from vaefail.mfg import init_models
from vaefail.results import FitResult

runner = CliRunner()

#: The option each command writes its output to: added (as ``{new}``) to every row of that command that
#: does not give it, so that every row also checks that nothing was written.
OUTPUT_OPTION = {"fit": "--out", "sample": "--out", "evaluate": "--json", "reproduce": "--out",
                 "diagnose": "--out"}

UNWRITABLE = "/proc/vaefail-cannot-write/x"

ROWS: list[tuple[str, list[str], str]] = [
    # ---- usage errors (Typer/Click): one line too
    ("no-such-command", ["fitt"], "No such command 'fitt'"),
    ("benchmarks-extra-arg", ["benchmarks", "extra"], "unexpected extra argument"),
    ("unknown-option", ["fit", "--bogus"], "No such option: --bogus"),
    ("sample-n-not-int", ["sample", "-b", "linear", "-n", "abc"], "Invalid value for '-n'"),
    ("sample-n-float", ["sample", "-b", "linear", "-n", "1.5"], "Invalid value for '-n'"),
    ("sample-missing-benchmark", ["sample"], "Missing option '--benchmark'"),
    ("sample-seed-not-int", ["sample", "-b", "linear", "--seed", "x"], "Invalid value for '--seed'"),
    ("fit-steps-not-int", ["fit", "--steps", "many"], "Invalid value for '--steps'"),
    ("fit-lr-not-float", ["fit", "--learning-rate", "fast"], "Invalid value for '--learning-rate'"),
    ("fit-sigma-not-float", ["fit", "--sigma-eps", "small"], "Invalid value for '--sigma-eps'"),
    ("evaluate-missing-run", ["evaluate"], "Missing argument"),
    ("evaluate-samples-not-int", ["evaluate", "{run}", "--samples", "lots"], "Invalid value for '--samples'"),
    ("reproduce-repeats-not-int", ["reproduce", "px", "--repeats", "two"], "Invalid value for '--repeats'"),
    # ---- sample
    ("sample-unknown-benchmark", ["sample", "-b", "figure9"], "Did you mean 'figure8'"),
    ("sample-n-zero", ["sample", "-b", "linear", "-n", "0"], "-n must be between 1 and"),
    ("sample-n-negative", ["sample", "-b", "linear", "-n", "-5"], "-n must be between 1 and"),
    ("sample-n-huge", ["sample", "-b", "linear", "-n", "10000000000"], "-n must be between 1 and"),
    ("sample-seed-negative", ["sample", "-b", "linear", "--seed", "-1"], "--seed must be in"),
    ("sample-seed-huge", ["sample", "-b", "linear", "--seed", str(2**70)], "--seed must be in"),
    ("sample-param-format", ["sample", "-b", "linear", "--param", "w"], "NAME=VALUE"),
    ("sample-param-nan", ["sample", "-b", "linear", "--param", "w=NaN"], "finite"),
    ("sample-param-inf", ["sample", "-b", "clusters", "--param", "beta=Infinity"], "finite"),
    ("sample-param-unknown", ["sample", "-b", "clusters", "--param", "nope=1"], "has no parameter"),
    ("sample-param-range", ["sample", "-b", "clusters", "--param", "beta=-1"], "beta"),
    ("sample-out-unwritable", ["sample", "-b", "linear", "--out", UNWRITABLE], "cannot write"),
    ("sample-out-under-file", ["sample", "-b", "linear", "--out", "{file}/x.csv"], "is not a folder"),
    ("sample-out-folder", ["sample", "-b", "linear", "--out", "{dir}"], "is a folder"),
    # ---- fit
    ("fit-unknown-benchmark", ["fit", "--benchmark", "nope"], "unknown benchmark 'nope'"),
    ("fit-labelled-benchmark", ["fit", "-b", "semicircle", "--restarts", "2"], "is a labelled benchmark"),
    ("fit-unknown-objective", ["fit", "--objective", "elbo"], "unknown objective 'elbo'"),
    ("fit-latent-zero", ["fit", "--latent-dim", "0"], "K must be >= 1"),
    ("fit-latent-huge", ["fit", "--latent-dim", "100000"], "latent_dim must be <="),
    ("fit-restarts-zero", ["fit", "--restarts", "0"], "restarts must be >= 1"),
    ("fit-restarts-huge", ["fit", "--restarts", "100000000"], "restarts must be <="),
    ("fit-steps-zero", ["fit", "--steps", "0"], "steps must be >= 1"),
    ("fit-init-steps-negative", ["fit", "--init-steps", "-1"], "init_steps must be >= 0"),
    ("fit-samples-zero", ["fit", "--objective", "iwae", "--samples", "0"], "must be >= 1"),
    ("fit-samples-huge", ["fit", "--objective", "iwae", "--samples", "10000000"], "num_samples must be <="),
    ("fit-pairs-per-step", ["fit", "--objective", "iwae", "--samples", "5000", "--batch-size", "1000"],
     "(point, sample) pairs per step"),
    ("fit-sigma-zero", ["fit", "--sigma-eps", "0"], "sigma_eps must be > 0"),
    ("fit-sigma-nan", ["fit", "--sigma-eps", "nan"], "sigma_eps must be > 0"),
    ("fit-sigma-inf", ["fit", "--sigma-eps", "inf"], "sigma_eps must be > 0"),
    ("fit-sigma-underflow", ["fit", "--sigma-eps", "1e-300"], "sigma_eps must be in"),
    ("fit-lr-inf", ["fit", "--learning-rate", "inf"], "learning_rate must be finite"),
    ("fit-lr-nan", ["fit", "--learning-rate", "nan"], "learning_rate must be finite"),
    ("fit-lr-zero", ["fit", "--learning-rate", "0"], "learning_rate must be finite and > 0"),
    ("fit-lr-overflow", ["fit", "--learning-rate", "1e309"], "learning_rate must be finite"),
    ("fit-batch-zero", ["fit", "--batch-size", "0"], "batch_size must be >= 1"),
    ("fit-batch-above-data", ["fit", "--batch-size", "100000"], "larger than the 5000 training points"),
    ("fit-seed-negative", ["fit", "--seed", "-1"], "seed must be an integer in"),
    ("fit-seed-huge", ["fit", "--seed", str(2**40)], "seed must be an integer in"),
    ("fit-dreg-vae", ["fit", "--dreg"], "--dreg needs the 'iwae' objective"),
    ("fit-param-format", ["fit", "--param", "beta"], "NAME=VALUE"),
    ("fit-param-range", ["fit", "-b", "clusters", "--param", "beta=-1"], "beta"),
    ("fit-out-unwritable", ["fit", "--out", UNWRITABLE], "cannot write"),
    ("fit-out-is-file", ["fit", "--out", "{file}"], "exists and is not a folder"),
    ("fit-out-under-file", ["fit", "--out", "{file}/run"], "is not a folder"),
    ("fit-out-foreign", ["fit", "--out", "{foreign}"], "not a vaefail run"),
    ("fit-out-existing-run", ["fit", "--out", "{run}"], "holds a run already; pass --overwrite"),
    # ---- evaluate
    ("evaluate-not-a-run", ["evaluate", "{dir}"], "is not a vaefail run folder"),
    ("evaluate-missing-folder", ["evaluate", "{new}/nothing"], "is not a vaefail run folder"),
    ("evaluate-a-file", ["evaluate", "{file}"], "is not a vaefail run folder"),
    ("evaluate-samples-zero", ["evaluate", "{run}", "--samples", "0"], "--samples must be between 1"),
    ("evaluate-samples-huge", ["evaluate", "{run}", "--samples", str(10**12)], "--samples must be between"),
    ("evaluate-seed-negative", ["evaluate", "{run}", "--seed", "-4"], "--seed must be in"),
    ("evaluate-split", ["evaluate", "{run}", "--split", "holdout"], "split must be"),
    ("evaluate-json-unwritable", ["evaluate", "{run}", "--json", UNWRITABLE], "cannot write --json"),
    ("evaluate-json-under-file", ["evaluate", "{run}", "--json", "{file}/m.json"], "is not a folder"),
    ("evaluate-json-folder", ["evaluate", "{run}", "--json", "{dir}"], "is a folder"),
    # ---- reproduce
    ("reproduce-unknown-experiment", ["reproduce", "tabel1"], "unknown experiment 'tabel1'"),
    ("reproduce-unknown-preset", ["reproduce", "px", "--preset", "fast"], "unknown preset 'fast'"),
    ("reproduce-unknown-executor", ["reproduce", "px", "--executor", "dask"], "unknown executor 'dask'"),
    ("reproduce-address-without-ray", ["reproduce", "px", "--address", "127.0.0.1:9"],
     "needs --executor ray"),
    ("reproduce-address-format", ["reproduce", "px", "--executor", "ray", "--address", "nonsense"],
     "--address must be HOST:PORT"),
    ("reproduce-address-unreachable", ["reproduce", "px", "--executor", "ray", "--address", "127.0.0.1:9"],
     "no Ray cluster reachable"),
    ("reproduce-repeats-zero", ["reproduce", "px", "--repeats", "0"], "repeats must be >= 1"),
    ("reproduce-workers-zero", ["reproduce", "px", "--workers", "0"], "--workers must be >= 1"),
    ("reproduce-only-key", ["reproduce", "table1", "--only", "sigma=fixed"], "Did you mean 'sigma_mode'"),
    ("reproduce-only-value", ["reproduce", "table1", "--only", "latent_dim=4"], "latent_dim takes 1, 2, 3"),
    ("reproduce-only-format", ["reproduce", "table1", "--only", "objective"], "KEY=VALUE"),
    ("reproduce-out-file", ["reproduce", "px", "--out", "{file}"], "cannot use"),
    ("reproduce-out-foreign", ["reproduce", "px", "--out", "{foreign}"], "not a vaefail results store"),
    ("reproduce-out-unwritable", ["reproduce", "px", "--out", UNWRITABLE], "cannot use"),
    ("reproduce-damaged-store", ["reproduce", "px", "--out", "{badstore}"], "format 'unreadable'"),
    ("reproduce-downstream-preset", ["reproduce", "downstream", "--preset", "fast"], "unknown preset 'fast'"),
    ("reproduce-downstream-typo", ["reproduce", "downstrem"], "Did you mean 'downstream'"),
    ("reproduce-downstream-only", ["reproduce", "downstream", "--only", "latent_dim=9"],
     "latent_dim takes 1, 2, 3"),
    # ---- fit --encoder flow
    ("fit-encoder-unknown", ["fit", "--encoder", "maf"], "unknown encoder 'maf'"),
    ("fit-flow-type-unknown", ["fit", "--encoder", "flow", "--flow-type", "maf"], "unknown flow type 'maf'"),
    ("fit-flow-layers-zero", ["fit", "--encoder", "flow", "--flow-layers", "0"], "flow_layers must be >= 1"),
    ("fit-flow-bins-one", ["fit", "--encoder", "flow", "--flow-bins", "1"], "flow_bins must be >= 2"),
    ("fit-flow-k-zero", ["fit", "--encoder", "flow", "-k", "0"], "latent dimension K must be >= 1"),
    ("fit-flow-l2-negative", ["fit", "--encoder", "flow", "--decoder-l2", "-1"], "decoder_l2 must be >= 0"),
    ("fit-flow-l2-nan", ["fit", "--encoder", "flow", "--decoder-l2", "nan"], "decoder_l2 must be >= 0"),
    ("fit-flow-dreg", ["fit", "--encoder", "flow", "--objective", "iwae", "--dreg"],
     "--dreg is not available"),
    ("fit-flow-option-without-flow", ["fit", "--flow-layers", "3"], "--flow-layers needs --encoder flow"),
    # ---- fit --data (your own data)
    ("fit-data-missing-file", ["fit", "--data", "{new}/none.csv", "--sigma-eps", "1"], "does not exist"),
    ("fit-data-a-folder", ["fit", "--data", "{dir}", "--sigma-eps", "1"], "is not a file"),
    ("fit-data-nan", ["fit", "--data", "{nancsv}", "--sigma-eps", "1"], "missing, NaN or infinite"),
    ("fit-data-inf", ["fit", "--data", "{infcsv}", "--sigma-eps", "1"], "missing, NaN or infinite"),
    ("fit-data-text", ["fit", "--data", "{textcsv}", "--sigma-eps", "1"], "is not numeric"),
    ("fit-data-header-only", ["fit", "--data", "{headcsv}", "--sigma-eps", "1"], "no data rows"),
    ("fit-data-ragged", ["fit", "--data", "{raggedcsv}", "--sigma-eps", "1"], "ragged rows"),
    ("fit-data-constant", ["fit", "--data", "{constcsv}", "--sigma-eps", "1"], "constant"),
    ("fit-data-too-few-rows", ["fit", "--data", "{tinycsv}", "--sigma-eps", "1", "--batch-size", "2"],
     "too few"),
    ("fit-data-unknown-column", ["fit", "--data", "{csv}", "--sigma-eps", "1", "--columns", "x9"],
     "no column 'x9'"),
    ("fit-data-fraction-range", ["fit", "--data", "{csv}", "--sigma-eps", "1", "--val-fraction", "1.5"],
     "must be in (0, 1)"),
    ("fit-data-fraction-nan", ["fit", "--data", "{csv}", "--sigma-eps", "1", "--val-fraction", "nan"],
     "must be in (0, 1)"),
    ("fit-data-sigma-inf", ["fit", "--data", "{csv}", "--sigma-eps", "inf"], "sigma_eps"),
    ("fit-data-out-unwritable", ["fit", "--data", "{csv}", "--sigma-eps", "1", "--out", UNWRITABLE],
     "cannot write"),
    # ---- diagnose
    ("diagnose-missing-file", ["diagnose", "{new}/none.csv"], "does not exist"),
    ("diagnose-damaged-file", ["diagnose", "{raggedcsv}"], "ragged rows"),
    ("diagnose-nan", ["diagnose", "{nancsv}"], "missing, NaN or infinite"),
    ("diagnose-latent-dims-type", ["diagnose", "{csv}", "--latent-dims", "1,x"], "comma-separated ints"),
    ("diagnose-sigma-negative", ["diagnose", "{csv}", "--sigma", "-1"], "sigma_eps must be > 0, got -1.0"),
    ("diagnose-latent-dims-range", ["diagnose", "{csv}", "--latent-dims", "1,0"],
     "latent dimension K must be >= 1, got 0"),
    ("diagnose-restarts-range", ["diagnose", "{csv}", "--restarts", "0"], "restarts must be >= 1, got 0"),
    ("diagnose-unknown-family", ["diagnose", "{csv}", "--families", "vae,flw"], "unknown family 'flw'"),
    ("diagnose-unknown-executor", ["diagnose", "{csv}", "--executor", "spark"], "unknown executor 'spark'"),
    ("diagnose-ll-samples-range", ["diagnose", "{csv}", "--ll-samples", "10"], "--ll-samples must be >= 25"),
    ("diagnose-out-unwritable", ["diagnose", "{csv}", "--out", UNWRITABLE], "cannot"),
    ("diagnose-out-foreign", ["diagnose", "{csv}", "--out", "{foreign}"], "not a vaefail results store"),
]


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        meta = json.loads((run / "config.json").read_text())
        change(meta)
        (run / "config.json").write_text(json.dumps(meta))
    return edit


def _drop_checksums(meta: dict) -> None:
    meta.pop("checksums", None)


def _both(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        for e in edits:
            e(meta)
    return edit


def _set(key: str, value) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        if key == "selected":
            meta["selected"] = value
        else:
            meta["config"][key] = value
    return edit


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return edit


def _zero(name: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).write_bytes(bytes(len((run / name).read_bytes())))
    return edit


#: Damaged copies of a valid run folder: (id, damage, what the message says). The "legacy-" rows remove
#: the checksums first (a run folder written before they were recorded), so the structural checks alone
#: must catch the damage.
DAMAGES: list[tuple[str, Callable[[Path], None], str]] = [
    ("models-truncated", _truncate("models.eqx", 0.5), "models.eqx does not match its checksum"),
    ("models-zeroed", _zero("models.eqx"), "models.eqx does not match its checksum"),
    ("models-empty", _truncate("models.eqx", 0.0), "models.eqx does not match its checksum"),
    ("models-missing", lambda run: (run / "models.eqx").unlink(), "missing models.eqx"),
    ("restarts-csv-truncated", _truncate("restarts.csv", 0.5), "restarts.csv does not match"),
    ("summary-zeroed", _zero("summary.json"), "summary.json does not match"),
    ("config-not-json", lambda run: (run / "config.json").write_text("{"), "config.json is not valid JSON"),
    ("config-zeroed", _zero("config.json"), "config.json is not valid JSON"),
    ("config-a-list", lambda run: (run / "config.json").write_text("[]"), "config.json is not a JSON object"),
    ("restarts-edited", _edit_config(_set("restarts", 4)), "config.json was edited"),
    ("hidden-width-edited", _edit_config(_set("hidden_width", 10)), "config.json was edited"),
    ("selected-out-of-range", _edit_config(_set("selected", 7)), "config.json was edited"),
    ("legacy-models-truncated",
     lambda run: (_edit_config(_drop_checksums)(run), _truncate("models.eqx", 0.5)(run)),
     "models.eqx does not hold the weights"),
    ("legacy-models-zeroed", lambda run: (_edit_config(_drop_checksums)(run), _zero("models.eqx")(run)),
     "models.eqx does not hold the weights"),
    ("legacy-models-extra-bytes",
     lambda run: (_edit_config(_drop_checksums)(run),
                  (run / "models.eqx").write_bytes((run / "models.eqx").read_bytes() + b"\0\0")),
     "bytes left over"),
    ("legacy-restarts-edited", _edit_config(_both(_drop_checksums, _set("restarts", 4))),
     "models.eqx does not hold the weights"),
    ("legacy-hidden-width-edited", _edit_config(_both(_drop_checksums, _set("hidden_width", 10))),
     "models.eqx does not hold the weights"),
    ("legacy-latent-dim-edited", _edit_config(_both(_drop_checksums, _set("latent_dim", 2))),
     "models.eqx does not hold the weights"),
    ("legacy-selected-7-of-2", _edit_config(_both(_drop_checksums, _set("selected", 7))),
     "selected restart 7 is out of range for 2 restarts"),
    ("legacy-selected-negative", _edit_config(_both(_drop_checksums, _set("selected", -1))),
     "selected restart -1 is out of range"),
    ("legacy-selected-not-int", _edit_config(_both(_drop_checksums, _set("selected", "1"))),
     "is not an integer"),
    ("legacy-unknown-benchmark", _edit_config(_both(_drop_checksums, _set("benchmark", "nope"))),
     "unknown benchmark"),
    ("legacy-restarts-csv-rows",
     lambda run: (_edit_config(_drop_checksums)(run),
                  (run / "restarts.csv").write_text("\n".join(
                      (run / "restarts.csv").read_text().splitlines()[:2]) + "\n")),
     "restarts.csv has 1 rows for 2 restarts"),
    ("legacy-summary-a-list",
     lambda run: (_edit_config(_drop_checksums)(run), (run / "summary.json").write_text("[1]")),
     "summary.json is not a JSON object"),
]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A valid two-restart run folder (untrained parameters: loading does not care how they came about)."""
    config = FitConfig(benchmark="linear", restarts=2, n_train=300, n_val=100, n_test=100, batch_size=64)
    keys = list(jax.random.split(jax.random.PRNGKey(0), 2))
    models = init_models(config, vaefail.get_benchmark("linear"), keys)
    restarts = pd.DataFrame({"restart": [0, 1], "start": ["truth", "random"], "status": ["ok", "ok"],
                             "selected": [False, True]})
    path = tmp_path_factory.mktemp("bad-input") / "run"
    FitResult(config, models, restarts, 1, {"selected": 1, "start": "random"}).save(path)
    assert FitResult.load(path).selected == 1
    return path


class Reached(Exception):
    """Raised by the stubs: the command started computing."""


def _reached(*args, **kwargs):
    raise Reached(args, kwargs)


@pytest.fixture
def no_computation(monkeypatch):
    """Replace fitting, evaluation and the sweep executor with stubs that raise :class:`Reached`."""
    monkeypatch.setattr("vaefail.api.fit_config", _reached)
    monkeypatch.setattr("vaefail.metrics.evaluate.evaluate_run", _reached)
    monkeypatch.setattr("vaefail.experiments.reproduce.execute", _reached)
    monkeypatch.setattr("vaefail.protocol.fit_family", _reached)
    monkeypatch.setattr("vaefail.experiments.diagnose.execute", _reached)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _places(tmp_path: Path, run_folder: Path) -> dict[str, str]:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "dir").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("keep me")
    (tmp_path / "badstore").mkdir()
    (tmp_path / "badstore" / "store.json").write_text("{not json")
    rows = [f"{i / 10},{(i * 7) % 13 / 5}" for i in range(400)]
    tables = {
        "csv": ["a,b", *rows], "nancsv": ["a,b", *rows[:5], "0.5,nan", *rows[5:]],
        "infcsv": ["a,b", *rows[:9], "inf,0.5", *rows[9:]],
        "textcsv": ["a,b", *rows[:3], "0.1,high", *rows[3:]],
        "headcsv": ["a,b"], "raggedcsv": ["a,b", *rows[:4], "1,2,3", *rows[4:]],
        "constcsv": ["a,b", *(f"{i / 10},1.0" for i in range(400))], "tinycsv": ["a,b", *rows[:3]],
    }
    places = {"run": str(run_folder), "file": str(tmp_path / "file"), "dir": str(tmp_path / "dir"),
              "foreign": str(tmp_path / "foreign"), "new": str(tmp_path / "new"),
              "badstore": str(tmp_path / "badstore")}
    for name, lines in tables.items():
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
        places[name] = str(tmp_path / f"{name}.csv")
    return places


def check_contract(result, message: str | None, new: Path) -> None:
    """Exit 2, one ``error:`` line on stderr (with ``message``), empty stdout, no traceback, nothing at
    ``new``."""
    assert not isinstance(result.exception, Reached), f"computation started: {result.exception!r}"
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if message is not None:
        assert message in lines[0], lines[0]
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.output
    assert not new.exists(), f"{new} was written"


def _with_output(args: list[str]) -> list[str]:
    option = OUTPUT_OPTION.get(args[0]) if args else None
    if option is None or option in args or (args[0] == "sample" and "-o" in args):
        return args
    return [*args, option, "{new}"]


@pytest.mark.parametrize(("args", "message"), [(a, m) for _, a, m in ROWS], ids=[i for i, _, _ in ROWS])
def test_bad_input_matrix(args, message, tmp_path, run_folder, no_computation):
    places = _places(tmp_path, run_folder)
    before = _digest(run_folder)
    result = runner.invoke(app, [a.format(**places) for a in _with_output(args)])
    check_contract(result, message, tmp_path / "new")
    assert _digest(run_folder) == before  # the input run folder is untouched
    assert (tmp_path / "foreign" / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == []


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in DAMAGES],
                         ids=[i for i, _, _ in DAMAGES])
def test_damaged_run_folder_matrix(damage, message, tmp_path, run_folder, no_computation):
    damaged = tmp_path / "damaged"
    shutil.copytree(run_folder, damaged)
    damage(damaged)
    result = runner.invoke(app, ["evaluate", str(damaged), "--json", str(tmp_path / "new")])
    check_contract(result, message, tmp_path / "new")
    if "missing" not in message:
        assert result.stderr.startswith(f"error: damaged run folder: {damaged} (")
    with pytest.raises(vaefail.VaefailError, match="damaged run folder|not a vaefail run folder"):
        FitResult.load(damaged)


def test_matrix_covers_every_command():
    """A new command must add rows: every command of the CLI appears in the matrix."""
    from typer.main import get_command

    commands = set(get_command(app).commands)
    assert commands == {args[0] for _, args, _ in ROWS if args[0] in commands}


# --------------------------------------------------------------------------------------------------
# Property test: drawn option values for fit, sample and evaluate
# --------------------------------------------------------------------------------------------------

_NOT_NUMBERS = st.sampled_from(["", "abc", "1,5", "0x10", "--", "1e", "NaNx"])
# valid values drawn about half the time (listed three times), so that both outcomes are exercised


def _ints(top: int = 3000) -> st.SearchStrategy:
    valid = st.integers(1, top)
    return st.one_of(valid, valid, valid, st.integers(-5, 0), st.integers(top + 1, 10 * top + 10),
                     st.sampled_from([2**31, 2**70, 10**12]), _NOT_NUMBERS)


_INTS = _ints()
_VALID_FLOATS = st.floats(1e-4, 1.0).map(repr)
_FLOATS = st.one_of(
    _VALID_FLOATS, _VALID_FLOATS, _VALID_FLOATS,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e309", "-1e309", "1e-300", "-0.0"]),
    _NOT_NUMBERS,
)


def _option(name: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [name, str(v)]))


def _options(*pairs: tuple[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.tuples(*(_option(n, v) for n, v in pairs)).map(lambda parts: [a for p in parts for a in p])


FIT_OPTIONS = _options(
    ("--benchmark", st.sampled_from(["figure8", "linear", "quadratic", "clusters", "semicircle", "nope"])),
    ("--objective", st.sampled_from(["vae", "iwae", "elbo"])),
    ("--latent-dim", _ints(4)), ("--restarts", _ints(8)), ("--steps", _INTS), ("--samples", _ints(50)),
    ("--batch-size", _INTS), ("--init-steps", _INTS), ("--seed", _INTS),
    ("--learning-rate", _FLOATS), ("--sigma-eps", _FLOATS),
)
SAMPLE_OPTIONS = _options(
    ("-n", st.one_of(st.integers(-3, 50), st.sampled_from([10**7 + 1, 10**10]), _NOT_NUMBERS)),
    ("--seed", _INTS), ("--param", st.sampled_from(["beta=100", "beta=-1", "beta=NaN", "x", "beta=[1]"])),
)
EVALUATE_OPTIONS = _options(
    ("--samples", _INTS), ("--split", st.sampled_from(["train", "val", "test", "holdout", ""])),
    ("--seed", _INTS),
)


def _valid_fit_config(config: FitConfig) -> None:
    """What a config that reaches the fit must satisfy."""
    assert math.isfinite(config.learning_rate) and config.learning_rate > 0
    assert config.sigma_eps is None or (math.isfinite(config.sigma_eps) and config.sigma_eps > 0)
    assert 1 <= config.batch_size <= config.n_train
    assert config.batch_size * config.train_samples <= MAX_PAIRS_PER_STEP
    assert 0 <= config.seed < 2**31
    for name, top in LIMITS.items():
        assert getattr(config, name) <= top
    assert min(config.restarts, config.steps, config.latent_dim, config.num_samples) >= 1


_counts = {"fit": [0, 0], "fit-valid": [0, 0], "sample": [0, 0], "evaluate": [0, 0]}  # [tried, accepted]


def _check(command: str, args: list[str], tmp: Path, accept: Callable | None = None) -> None:
    new = tmp / f"new-{_counts[command][0]}"
    result = runner.invoke(app, [command, *args, OUTPUT_OPTION[command], str(new)])
    _counts[command][0] += 1
    if isinstance(result.exception, Reached) or result.exit_code == 0:
        _counts[command][1] += 1
        if accept is not None and isinstance(result.exception, Reached):
            accept(result.exception)
        if result.exit_code == 0:
            assert new.is_file()
            new.unlink()
        else:
            assert not new.exists()
        return
    check_contract(result, None, new)


_PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(_PROPERTY, max_examples=150)
@given(args=FIT_OPTIONS)
def test_fit_options_property(args, tmp_path, no_computation):
    """Any drawn fit options: one clear error (exit 2), or a fit that starts with a valid config."""
    _check("fit", args, tmp_path, accept=lambda reached: _valid_fit_config(reached.args[0][0]))


FIT_VALID_OPTIONS = _options(
    ("--benchmark", st.sampled_from(["figure8", "linear", "quadratic", "clusters"])),
    ("--objective", st.sampled_from(["vae", "iwae"])), ("--latent-dim", st.integers(1, 64)),
    ("--restarts", st.integers(1, 100)), ("--steps", st.integers(1, 10**8)),
    ("--samples", st.integers(1, 200)), ("--batch-size", st.integers(1, 5000)),
    ("--init-steps", st.integers(0, 10**8)), ("--seed", st.integers(0, 2**31 - 1)),
    ("--learning-rate", st.floats(1e-12, 1e6).map(repr)), ("--sigma-eps", st.floats(1e-8, 1e8).map(repr)),
)


@settings(_PROPERTY, max_examples=100)
@given(args=FIT_VALID_OPTIONS)
def test_fit_valid_options_are_accepted(args, tmp_path, no_computation):
    """The converse: options drawn from the documented valid ranges are never rejected."""
    result = runner.invoke(app, ["fit", *args])
    assert isinstance(result.exception, Reached), (args, result.output)
    _valid_fit_config(result.exception.args[0][0])
    _counts["fit-valid"][0] += 1
    _counts["fit-valid"][1] += 1


@_PROPERTY
@given(args=SAMPLE_OPTIONS)
def test_sample_options_property(args, tmp_path):
    """Any drawn sample options: one clear error (exit 2) or a CSV of the requested length."""
    _check("sample", ["-b", "clusters", *args], tmp_path)


@_PROPERTY
@given(args=EVALUATE_OPTIONS)
def test_evaluate_options_property(args, tmp_path, run_folder, no_computation):
    """Any drawn evaluate options on a valid run: one clear error (exit 2) or an evaluation that starts."""
    _check("evaluate", [str(run_folder), *args], tmp_path)


def test_property_counts_reported(capsys):
    """Runs after the property tests (file order): prints how many cases each tried and accepted."""
    with capsys.disabled():
        print("\nproperty cases (tried, accepted):", {k: tuple(v) for k, v in _counts.items()})
