"""The ``vaefail`` command line: a thin layer over the Python API.

Every error a user can cause (:class:`vaefail.errors.VaefailError`, and the usage errors Typer/Click
detect, such as ``-n abc``) ends in one readable line on stderr and exit code 2, never a traceback.
Output paths are checked before any computation; progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from vaefail._io import check_output_file, write_atomic
from vaefail.errors import DataError, VaefailError

try:  # Typer >= 0.2x vendors Click as typer._click; older Typer uses Click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as _click_errors
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())

#: Largest ``sample -n``: the samples are held in memory and written as one CSV (10^7 rows of a 2-D
#: benchmark are about 0.5 GB of text); beyond it XLA aborts natively instead of raising.
MAX_SAMPLES = 10_000_000
#: Largest ``evaluate --samples``: k-hat keeps the ~3 sqrt(S) largest weights of every point in memory.
MAX_IMPORTANCE_SAMPLES = 100_000


class OneLineErrors(TyperGroup):
    """Typer's command group, with Click's usage errors (unknown option, ``-n abc``, a missing
    argument) printed as one ``error:`` line on stderr, exit code 2, instead of a multi-line box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as err:  # `vaefail` alone: the help, as Typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(err)
            code = err.exit_code
        except _click_errors.ClickException as err:
            where = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) else ""
            err_console.print(Text.assemble(("error: ", "bold red"), err.format_message() + where))
            code = err.exit_code
        except typer.Abort:
            err_console.print("aborted", markup=False)
            code = 1
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _version(value: bool) -> None:
    if value:
        from vaefail import __version__

        print(f"vaefail {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="vaefail",
    help="Failure modes of VAEs: ground-truth benchmarks, restart-protocol training, honest metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)
console = Console(highlight=False)
if not console.is_terminal:  # pipes and logs: wide enough that tables are not squeezed
    console = Console(highlight=False, width=160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn a :class:`VaefailError` (or Ctrl-C) into one message and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VaefailError as err:
            err_console.print(Text.assemble(("error: ", "bold red"), str(err)))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Failure modes of VAEs: ground-truth benchmarks, restart-protocol training, honest metrics."""


def _check_seed(seed: int) -> None:
    from vaefail.config import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise DataError(f"--seed must be in [0, {MAX_SEED}], got {seed}")


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["beta=100", "w=[1,2]"]`` -> ``{"beta": 100, "w": [1, 2]}`` (values parsed as JSON)."""
    params: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise DataError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"--param {name}: cannot parse {value!r} as a number or JSON list") from None
    return params


@app.command("benchmarks")
@friendly
def benchmarks_cmd() -> None:
    """List the ground-truth benchmarks and their parameters."""
    from vaefail.benchmarks import get_benchmark, list_benchmarks

    table = Table(title="vaefail benchmarks")
    for col in ("name", "x dim", "true K", "sigma_eps", "parameters", "description"):
        table.add_column(col)
    for name in list_benchmarks():
        b = get_benchmark(name)
        params = ", ".join(f"{k}={v}" for k, v in b.params().items() if k != "sigma_eps")
        # plain Text: summaries hold brackets ("x = [cos a_y, sin a_y] + eps") that Rich reads as markup
        cells = (name, str(b.x_dim), str(b.latent_dim), f"{b.sigma_eps:.4g}", params, b.summary)
        table.add_row(*(Text(c) for c in cells))
    console.print(table)


@app.command("sample")
@friendly
def sample_cmd(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name.")],
    n: Annotated[int, typer.Option("-n", help="Number of samples.")] = 1000,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")] = Path("samples.csv"),
    seed: Annotated[int, typer.Option(help="PRNG seed.")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="Benchmark parameter NAME=VALUE.")] = None,
) -> None:
    """Write N samples (x and the true z) of a benchmark to a CSV file."""
    import jax
    import pandas as pd

    from vaefail.benchmarks import get_benchmark

    _check_seed(seed)
    if not 1 <= n <= MAX_SAMPLES:
        raise DataError(f"-n must be between 1 and {MAX_SAMPLES:,} (held in memory and written as one "
                        f"CSV; use several --seed values for more), got {n}")
    bench = get_benchmark(benchmark, **_parse_params(param))
    check_output_file(out, "--out")
    data = bench.sample(jax.random.PRNGKey(seed), n)
    cols = {f"x{i}": data.x[:, i] for i in range(bench.x_dim)}
    cols |= {f"z{i}": data.z[:, i] for i in range(data.z.shape[1])}
    if bench.labelled:
        cols["y"] = data.y
    write_atomic(out, pd.DataFrame(cols).to_csv(index=False).encode())
    console.print(f"wrote {n} samples of {bench.name} to {out}", markup=False, soft_wrap=True)


@app.command("fit")
@friendly
def fit_cmd(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name.")] = "figure8",
    objective: Annotated[str, typer.Option(help="vae or iwae.")] = "vae",
    latent_dim: Annotated[int, typer.Option("--latent-dim", "-k", help="Latent dimension K.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Run folder to write.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder at --out.")] = False,
    restarts: Annotated[int, typer.Option(help="Number of restarts (half from the truth).")] = 10,
    steps: Annotated[int, typer.Option(
        help="Maximum training steps of the restarts. The truth-started restarts first run two phases "
             "of --init-steps each, and --truth another two plus its encoder fit: not bounded by --steps."
    )] = 30000,
    seed: Annotated[int, typer.Option(help="PRNG seed.")] = 0,
    num_samples: Annotated[int, typer.Option("--samples", "-s", help="IWAE samples S.")] = 20,
    dreg: Annotated[bool, typer.Option(help="DReG gradients (iwae).")] = False,
    sigma_eps: Annotated[float | None, typer.Option(help="Noise std (default: the truth).")] = None,
    learn_sigma: Annotated[bool, typer.Option(help="Learn sigma_eps.")] = False,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 256,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-2,
    init_steps: Annotated[int, typer.Option(
        help="Steps of each truth-initialisation phase (decoder to f_gt, then its encoder).")] = 3000,
    converge: Annotated[bool, typer.Option(help="Stop when the validation bound converges.")] = True,
    truth: Annotated[bool, typer.Option(help="Also fit the true decoder's best encoder.")] = True,
    param: Annotated[list[str] | None, typer.Option(help="Benchmark parameter NAME=VALUE.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    data: Annotated[Path | None, typer.Option(
        help="Fit your own data instead of a benchmark: CSV/TSV, .npy, .npz or Parquet.")] = None,
    columns: Annotated[str | None, typer.Option(help="With --data: columns to use, names or 0-based "
                                                     "indices, comma-separated (default all).")] = None,
    standardise: Annotated[bool, typer.Option(help="With --data: standardise each column.")] = True,
    key: Annotated[str | None, typer.Option(help="With --data: the array of a .npz file.")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="With --data: a column of train/val/test giving each row's part.")] = None,
    val_fraction: Annotated[float, typer.Option(help="With --data: share of rows for validation.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="With --data: share of rows for test.")] = 0.15,
    max_columns: Annotated[int, typer.Option(help="With --data: refuse more columns than this.")] = 1024,
    drop_constant: Annotated[bool, typer.Option(help="With --data: leave out constant columns.")] = False,
    encoder: Annotated[str, typer.Option(help="gaussian (MFG) or flow (a normalising flow).")] = "gaussian",
    flow_type: Annotated[str, typer.Option(help="spline or affine (with --encoder flow).")] = "spline",
    flow_layers: Annotated[int, typer.Option(help="Coupling layers (with --encoder flow).")] = 2,
    flow_bins: Annotated[int, typer.Option(help="Spline bins (with --encoder flow).")] = 8,
    decoder_l2: Annotated[float, typer.Option(help="L2 penalty on the decoder (with --encoder flow).")] = 0.0,
) -> None:
    """Fit a VAE/IWAE with the paper's restart protocol and print the per-restart table."""
    from vaefail.api import encoder_config, fit_benchmark, fit_config
    from vaefail.config import FlowConfig
    from vaefail.results import check_writable

    config_type = encoder_config(encoder)
    flow = {"flow_type": flow_type, "flow_layers": flow_layers, "flow_bins": flow_bins,
            "decoder_l2": decoder_l2}
    if config_type is not FlowConfig:
        defaults = FlowConfig.__dataclass_fields__
        changed = [name for name, value in flow.items() if value != defaults[name].default]
        if changed:
            raise DataError(f"--{changed[0].replace('_', '-')} needs --encoder flow")
        flow = {}
    if data is not None:
        if flow:
            raise DataError("--data fits the Gaussian encoder only; --encoder flow is not available there")
        _fit_data_cmd(data, _data_options(columns, standardise, key, split_column, val_fraction,
                                          test_fraction, max_columns, drop_constant), out, quiet, overwrite,
                      objective=objective, latent_dim=latent_dim, restarts=restarts, steps=steps, seed=seed,
                      num_samples=num_samples, dreg=dreg, sigma_eps=sigma_eps, learn_sigma=learn_sigma,
                      batch_size=batch_size, learning_rate=learning_rate, converge=converge)
        return
    config = config_type(
        benchmark=benchmark, benchmark_params=_parse_params(param), objective=objective,
        latent_dim=latent_dim, restarts=restarts, steps=steps, seed=seed, num_samples=num_samples,
        dreg=dreg, sigma_eps=sigma_eps, learn_sigma=learn_sigma, batch_size=batch_size,
        learning_rate=learning_rate, init_steps=init_steps, converge=converge, **flow,
    )
    bench = fit_benchmark(config)
    if out is not None:
        check_writable(out, overwrite=overwrite)
    result = fit_config(config, bench, truth=truth, progress=not quiet)
    print_result(result)
    if out is not None:
        result.save(out, overwrite=overwrite)
        console.print(f"saved run to {out}", markup=False, soft_wrap=True)


def print_result(result: Any) -> None:
    """Print a fit's per-restart table and its summary."""
    c = result.config
    bound = "ELBO" if c.objective == "vae" else f"IWAE_{c.num_samples}"
    family = getattr(result.family, "name", "vae")
    encoder = f", {c.flow_type} flow encoder ({c.flow_layers} layers)" if family == "flow" else ""
    table = Table(
        title=f"{c.benchmark}, {c.objective}{encoder}, K={c.latent_dim}: restarts ({bound}, nats/point)")
    for col in ("restart", "start", "status", "steps", "train", "val", "test", "test ELBO", "sigma_eps"):
        table.add_column(col, justify="right")
    for row in result.restarts.itertuples():
        style = "bold green" if row.selected else ("red" if row.status != "ok" else None)
        table.add_row(
            str(row.restart), row.start, row.status, str(row.steps), f"{row.train_bound:.4f}",
            f"{row.val_bound:.4f}", f"{row.test_bound:.4f}", f"{row.test_elbo:.4f}",
            f"{row.sigma_eps:.4g}", style=style,
        )
    console.print(table)
    s = result.summary

    def test_scores(bound_value: float, elbo_value: float) -> str:
        # for the VAE the bound is the ELBO: one figure, not two Monte-Carlo estimates of the same thing
        text = f"test -{bound} {-bound_value:.4f}"
        return text if c.objective == "vae" else f"{text}, test -ELBO {-elbo_value:.4f}"

    lines = [
        f"selected restart {s['selected']} ({s['start']} start): "
        + test_scores(s["test_bound"], s["test_elbo"]),
    ]
    if "test_log_prob_true" in s:  # a data run has no ground truth
        lines.append(f"exact test -E[log p_gt(x)] {-s['test_log_prob_true']:.4f}")
    if "truth_test_elbo" in s:
        verdict = "learned beats the truth" if s["test_bound"] > s["truth_test_bound"] else (
            "truth beats the learned model"
        )
        lines.append(
            f"ground truth with its best encoder: {test_scores(s['truth_test_bound'], s['truth_test_elbo'])} "
            f"({verdict})"
        )
    console.print("\n".join(lines), markup=False)


@app.command("evaluate")
@friendly
def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `vaefail fit --out`.")],
    samples: Annotated[int, typer.Option("--samples", "-s", help="Importance samples per point.")] = 1000,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    seed: Annotated[int, typer.Option(help="PRNG seed of the estimators.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
    truth: Annotated[bool, typer.Option(
        help="Fit the true decoder's best encoder (as `fit --truth` does) for the truth's amortisation "
        "gap and the amortised truth-vs-learned comparison.")] = True,
    bound_points: Annotated[int, typer.Option(
        help="Points for the optimal-Gaussian bound ELBO* when K >= 2 (costly per point).")] = 500,
) -> None:
    """Evaluate a fitted run: likelihoods, ELBO split, optimal-Gaussian bounds, MI, posterior quality,
    failure checks."""
    import jax

    from vaefail.metrics.evaluate import evaluate_run, evaluation_table
    from vaefail.mfg import truth_model
    from vaefail.protocol import TRUTH_SEED_OFFSET
    from vaefail.results import FitResult

    if not 1 <= samples <= MAX_IMPORTANCE_SAMPLES:
        raise DataError(f"--samples must be between 1 and {MAX_IMPORTANCE_SAMPLES:,}, got {samples}")
    if bound_points < 2:
        raise DataError(f"--bound-points must be >= 2, got {bound_points}")
    _check_seed(seed)
    if split not in ("train", "val", "test"):
        raise DataError(f"--split must be train, val or test, got {split!r}")
    if json_out is not None:
        check_output_file(json_out, "--json")
    result = FitResult.load(run_dir)
    if not getattr(result.benchmark, "has_truth", True):
        _evaluate_data_cmd(result, samples, split, json_out, seed)
        return
    with err_console.status(f"evaluating {run_dir} ({split} split, {samples} importance samples per "
                            "point; the first call compiles)", spinner="dots") if not quiet else _nothing():
        truth_vae = None
        if truth:
            c = result.config
            truth_vae = truth_model(result.family, result.benchmark, result.data(), c,
                                    jax.random.PRNGKey(c.seed + TRUTH_SEED_OFFSET))
        report = evaluate_run(result, jax.random.PRNGKey(seed), num_samples=samples, split=split,
                              truth_model=truth_vae, bound_points=bound_points)
    console.print(evaluation_table(report))
    if json_out is not None:
        write_atomic(json_out, json.dumps(report, indent=2).encode())
        console.print(f"wrote {json_out}", markup=False, soft_wrap=True)


@app.command("reproduce")
@friendly
def reproduce_cmd(
    experiment: Annotated[str, typer.Argument(
        help="table1, px, latent, sigma, sweep, semisupervised, downstream, flexible or all.")] = "all",
    preset: Annotated[str, typer.Option(help="quick (minutes) or paper (the paper's protocol).")] = "quick",
    out: Annotated[Path, typer.Option(help="Results folder (a resumable store).")] = Path("results"),
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    repeats: Annotated[int | None, typer.Option(help="Repetitions (overrides the preset).")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel worker processes (default: cores).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    only: Annotated[list[str] | None, typer.Option(
        help="Run part of the grid: KEY=VALUE[,VALUE...] on a table label (benchmark, objective, "
             "latent_dim, sigma_mode, ...); repeat for several keys.")] = None,
    reuse_stale: Annotated[bool, typer.Option(
        help="Keep stored configurations computed by another version of the code (marked in the "
             "report) instead of computing them again.")] = False,
) -> None:
    """Reproduce the paper's experiments: tables, figures, claims.json and report.html under --out."""
    from vaefail.experiments.grid import parse_only
    from vaefail.experiments.reproduce import reproduce

    if workers is not None and workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    result = reproduce(experiment, preset, out, executor=executor, address=address, repeats=repeats,
                       workers=workers, progress=not quiet, only=parse_only(only or []),
                       reuse_stale=reuse_stale)
    for name, table in result.tables.items():
        print_table(name, table)
    for claim in result.claims:
        mark = {True: "[green]reproduced[/]", False: "[red]not reproduced[/]"}.get(claim["reproduced"], "n/a")
        console.print(f"{mark}  {claim['id']}: ", Text(claim["comparison"]))
    if result.stale_recomputed:
        console.print(f"recomputed {result.stale_recomputed} configurations computed by another version of "
                      "the code (different fingerprint)", markup=False, soft_wrap=True)
    if result.stale_kept:
        console.print(f"kept {len(result.stale_kept)} configurations computed by another version of the "
                      "code (--reuse-stale; marked in the report)", markup=False, soft_wrap=True)
    console.print(f"computed {result.computed} new configurations; outputs in {result.out} "
                  f"(report: {result.out / 'report.html'})", markup=False, soft_wrap=True)


def print_table(name: str, frame: Any) -> None:
    """Print an experiment table (mean +- std over repeats)."""
    table = Table(title=name)
    values = [c for c in frame.columns if not c.endswith("_std") and not c.endswith("keys")]
    for col in values:
        table.add_column(col, justify="right")
    for _, row in frame.iterrows():
        cells = []
        for col in values:
            v = row[col]
            if isinstance(v, float):
                std = row.get(f"{col}_std")
                cells.append(f"{v:.3f}" + (f" ± {std:.3f}" if std is not None and std == std else ""))
            else:
                cells.append(str(v))
        table.add_row(*(Text(c) for c in cells))
    console.print(table)


@contextlib.contextmanager
def _nothing() -> Any:
    yield


# ------------------------------------------------------------------------------- your own data


def _data_options(columns: str | None, standardise: bool, key: str | None, split_column: str | None,
                  val_fraction: float, test_fraction: float, max_columns: int,
                  drop_constant: bool) -> dict[str, Any]:
    """The :class:`vaefail.userdata.DataSpec` options of the --data commands (columns split on commas)."""
    if max_columns < 1:
        raise DataError(f"--max-columns must be >= 1, got {max_columns}")
    cols = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    if cols is not None and not cols:
        raise DataError("--columns is empty")
    return {"columns": cols, "standardise": standardise, "key": key, "split_column": split_column,
            "val_fraction": val_fraction, "test_fraction": test_fraction, "max_columns": max_columns,
            "drop_constant": drop_constant}


def _fit_data_cmd(path: Path, options: dict[str, Any], out: Path | None, quiet: bool, overwrite: bool,
                  **fit: Any) -> None:
    """``vaefail fit --data FILE``: read and validate everything before anything is trained or written."""
    from vaefail.datafit import DATA_FAMILY, data_config
    from vaefail.protocol import fit_family
    from vaefail.results import check_writable
    from vaefail.userdata import data_spec, load_data

    columns = options.pop("columns")
    spec = data_spec(path, columns, **options)
    config = data_config(spec, **fit)
    if out is not None:
        check_writable(out, overwrite=overwrite)
    data = load_data(spec)
    more = ", ..." if data.x_dim > 8 else ""
    console.print(f"{spec.path}: {data.n} rows x {data.x_dim} columns ({', '.join(data.names[:8])}{more}); "
                  f"split {config.n_train}/{config.n_val}/{config.n_test}"
                  f"{'; standardised' if spec.standardise else ''}", markup=False)
    result = fit_family(DATA_FAMILY, config, data, progress=not quiet)
    print_result(result)
    if out is not None:
        result.save(out, overwrite=overwrite)
        console.print(f"saved run to {out}", markup=False, soft_wrap=True)


def _evaluate_data_cmd(result: Any, samples: int, split: str, json_out: Path | None, seed: int) -> None:
    """``vaefail evaluate`` on a data run: the truth-free metrics, and which sections are unavailable."""
    import jax

    from vaefail.metrics.nogroundtruth import data_evaluation_table, evaluate_data_run

    report = evaluate_data_run(result, jax.random.PRNGKey(seed), num_samples=samples, split=split)
    console.print(data_evaluation_table(report))
    console.print("no ground truth: the sections marked unavailable need the true density, posterior, "
                  "decoder or latents", markup=False)
    if json_out is not None:
        write_atomic(json_out, json.dumps(report, indent=2).encode())
        console.print(f"wrote {json_out}")


@app.command("diagnose")
@friendly
def diagnose_cmd(
    data: Annotated[Path, typer.Argument(help="Your data: CSV/TSV, .npy, .npz or Parquet.")],
    latent_dims: Annotated[str, typer.Option(help="Latent dimensions K, comma-separated.")] = "1,2,3",
    sigma: Annotated[str, typer.Option(help="sigma_eps: 'auto' (a grid), one value or a comma list "
                                            "(standardised units unless --no-standardise).")] = "auto",
    families: Annotated[str, typer.Option(help="Model families, comma-separated: vae, iwae.")] = "vae,iwae",
    out: Annotated[Path, typer.Option(help="Output folder (a resumable results store).")] = Path("diagnosis"),
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel worker processes (default: cores).")] = None,
    restarts: Annotated[int, typer.Option(help="Random restarts per fit.")] = 3,
    steps: Annotated[int, typer.Option(help="Maximum training steps per fit.")] = 5000,
    ll_samples: Annotated[int, typer.Option(help="Importance samples per test point.")] = 500,
    max_points: Annotated[int, typer.Option(help="Test points evaluated.")] = 2000,
    seed: Annotated[int, typer.Option(help="PRNG seed (fits and split).")] = 0,
    columns: Annotated[str | None, typer.Option(help="Columns to use, names or 0-based indices, "
                                                     "comma-separated (default all).")] = None,
    standardise: Annotated[bool, typer.Option(help="Standardise each column.")] = True,
    key: Annotated[str | None, typer.Option(help="The array of a .npz file.")] = None,
    split_column: Annotated[str | None, typer.Option(help="A column of train/val/test.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of rows for validation.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="Share of rows for test.")] = 0.15,
    max_columns: Annotated[int, typer.Option(help="Refuse more columns than this.")] = 1024,
    drop_constant: Annotated[bool, typer.Option(help="Leave out constant columns.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Diagnose your data: fit each family x K x sigma_eps, then run the paper's guidelines as checks."""
    from vaefail.experiments import diagnose as dg
    from vaefail.userdata import data_spec

    settings = dg.DiagnoseSettings(
        latent_dims=dg.parse_list(latent_dims, int, "--latent-dims"), sigmas=dg.parse_sigma(sigma),
        families=dg.parse_list(families, str, "--families"), restarts=restarts, steps=steps,
        ll_samples=ll_samples, max_points=max_points, seed=seed)
    options = _data_options(columns, standardise, key, split_column, val_fraction, test_fraction, max_columns,
                            drop_constant)
    spec = data_spec(data, options.pop("columns"), **options)
    result = dg.diagnose(spec, settings, out, executor=executor, address=address, workers=workers,
                         progress=not quiet)
    print_diagnosis(result.report)
    console.print(f"wrote {out / 'diagnosis.json'} and {out / 'diagnosis.html'} "
                  f"({result.computed} fits computed, {result.seconds:.0f} s)", markup=False)


_VERDICT_STYLE = {"ok": "green", "warning": "yellow", "failure suspected": "bold red", "not checked": "dim",
                  "no failure found": "green"}


def print_diagnosis(report: dict[str, Any]) -> None:
    """The diagnosis as a Rich table: check, verdict, what it means and which guideline applies."""
    table = Table(title=f"diagnosis of {Path(report['data']['path']).name}: {report['overall']}",
                  title_justify="left", show_lines=True)
    for col in ("check", "verdict", "what it means", "guideline"):
        table.add_column(col, ratio=None if col in ("check", "verdict") else 1)
    for c in report["checks"]:
        table.add_row(Text(c["title"]), Text(c["verdict"], style=_VERDICT_STYLE[c["verdict"]]),
                      Text(c["meaning"]), Text(c["guideline"]))
    console.print(table)
    if "convergence" in report:
        console.print(f"convergence: {report['convergence']['note']}.", markup=False)


def main() -> None:
    """Console-script entry point: applies vaefail's JAX settings (:func:`vaefail.configure`), then runs."""
    from vaefail._jax import configure

    configure()
    try:
        app()
    except BrokenPipeError:  # e.g. `vaefail benchmarks | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
