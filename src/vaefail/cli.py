"""The ``vaefail`` command line: a thin layer over the Python API.

Every error a user can cause (:class:`vaefail.errors.VaefailError`) ends in one readable line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

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

from vaefail._io import write_atomic
from vaefail.errors import DataError, VaefailError

app = typer.Typer(
    name="vaefail",
    help="Failure modes of VAEs: ground-truth benchmarks, restart-protocol training, honest metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
        table.add_row(name, str(b.x_dim), str(b.latent_dim), f"{b.sigma_eps:.4g}", params, b.summary)
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

    if n < 1:
        raise DataError(f"-n must be >= 1, got {n}")
    bench = get_benchmark(benchmark, **_parse_params(param))
    data = bench.sample(jax.random.PRNGKey(seed), n)
    cols = {f"x{i}": data.x[:, i] for i in range(bench.x_dim)}
    cols |= {f"z{i}": data.z[:, i] for i in range(data.z.shape[1])}
    if bench.labelled:
        cols["y"] = data.y
    write_atomic(out, pd.DataFrame(cols).to_csv(index=False).encode())
    console.print(f"wrote {n} samples of {bench.name} to {out}")


@app.command("fit")
@friendly
def fit_cmd(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name.")] = "figure8",
    objective: Annotated[str, typer.Option(help="vae or iwae.")] = "vae",
    latent_dim: Annotated[int, typer.Option("--latent-dim", "-k", help="Latent dimension K.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Run folder to write.")] = None,
    restarts: Annotated[int, typer.Option(help="Number of restarts (half from the truth).")] = 10,
    steps: Annotated[int, typer.Option(help="Maximum training steps.")] = 30000,
    seed: Annotated[int, typer.Option(help="PRNG seed.")] = 0,
    num_samples: Annotated[int, typer.Option("--samples", "-s", help="IWAE samples S.")] = 20,
    dreg: Annotated[bool, typer.Option(help="DReG gradients (iwae).")] = False,
    sigma_eps: Annotated[float | None, typer.Option(help="Noise std (default: the truth).")] = None,
    learn_sigma: Annotated[bool, typer.Option(help="Learn sigma_eps.")] = False,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 256,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-2,
    init_steps: Annotated[int, typer.Option(help="Steps of each truth-initialisation phase.")] = 3000,
    converge: Annotated[bool, typer.Option(help="Stop when the validation bound converges.")] = True,
    truth: Annotated[bool, typer.Option(help="Also fit the true decoder's best encoder.")] = True,
    param: Annotated[list[str] | None, typer.Option(help="Benchmark parameter NAME=VALUE.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    encoder: Annotated[str, typer.Option(help="gaussian (MFG) or flow (a normalising flow).")] = "gaussian",
    flow_type: Annotated[str, typer.Option(help="spline or affine (with --encoder flow).")] = "spline",
    flow_layers: Annotated[int, typer.Option(help="Coupling layers (with --encoder flow).")] = 2,
    flow_bins: Annotated[int, typer.Option(help="Spline bins (with --encoder flow).")] = 8,
    decoder_l2: Annotated[float, typer.Option(help="L2 penalty on the decoder (with --encoder flow).")] = 0.0,
) -> None:
    """Fit a VAE/IWAE with the paper's restart protocol and print the per-restart table."""
    from vaefail.api import encoder_config, fit_config
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
    config = config_type(
        benchmark=benchmark, benchmark_params=_parse_params(param), objective=objective,
        latent_dim=latent_dim, restarts=restarts, steps=steps, seed=seed, num_samples=num_samples,
        dreg=dreg, sigma_eps=sigma_eps, learn_sigma=learn_sigma, batch_size=batch_size,
        learning_rate=learning_rate, init_steps=init_steps, converge=converge, **flow,
    )
    if out is not None:
        check_writable(out)
    result = fit_config(config, truth=truth, progress=not quiet)
    print_result(result)
    if out is not None:
        result.save(out)
        console.print(f"saved run to {out}")


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
        f"exact test -E[log p_gt(x)] {-s['test_log_prob_true']:.4f}",
    ]
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
) -> None:
    """Evaluate a fitted run: likelihoods, ELBO split, MI, posterior quality, failure checks."""
    import jax

    from vaefail.metrics.evaluate import evaluate_run, evaluation_table
    from vaefail.results import FitResult

    if samples < 1:
        raise DataError(f"--samples must be >= 1, got {samples}")
    result = FitResult.load(run_dir)
    report = evaluate_run(result, jax.random.PRNGKey(seed), num_samples=samples, split=split)
    console.print(evaluation_table(report))
    if json_out is not None:
        write_atomic(json_out, json.dumps(report, indent=2).encode())
        console.print(f"wrote {json_out}")


@app.command("reproduce")
@friendly
def reproduce_cmd(
    experiment: Annotated[str, typer.Argument(
        help="table1, px, latent, sigma, sweep, semisupervised, flexible or all.")] = "all",
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
) -> None:
    """Reproduce the paper's experiments: tables, figures, claims.json and report.html under --out."""
    from vaefail.experiments.grid import parse_only
    from vaefail.experiments.reproduce import reproduce

    result = reproduce(experiment, preset, out, executor=executor, address=address, repeats=repeats,
                       workers=workers, progress=not quiet, only=parse_only(only or []))
    for name, table in result.tables.items():
        print_table(name, table)
    for claim in result.claims:
        mark = {True: "[green]reproduced[/]", False: "[red]not reproduced[/]"}.get(claim["reproduced"], "n/a")
        console.print(f"{mark}  {claim['id']}: ", Text(claim["comparison"]))
    console.print(f"computed {result.computed} new configurations; outputs in {result.out} "
                  f"(report: {result.out / 'report.html'})")


def print_table(name: str, frame: Any) -> None:
    """Print an experiment table (mean +- std over repeats)."""
    table = Table(title=name)
    values = [c for c in frame.columns if not c.endswith("_std") and c != "keys"]
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
        table.add_row(*cells)
    console.print(table)


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
