"""Measured speed of vaefail, side by side with plain baselines: prints one table of times, rates and ratios.

Usage: ``python benchmarks/run.py [--repeats R] [--reproduce all:quick "table1:paper --repeats 1"]
[--no-baselines]``.

Rows (each the median of ``--repeats`` runs, on figure8 data). The headline column is the ratio against the
*strongest peer*: the fastest PyTorch setting measured for the row.

- restart-steps per second of the fused training loop, 10 restarts at batch 100, for the VAE, the IWAE (S =
  10, 20, 50) and the spline-flow encoder (the loss ``fit --encoder flow`` trains: the ELBO with a
  Monte-Carlo KL and the path-derivative gradient, ``vaefail.flowvae.PathwiseELBO``), K = 1 and 3. Strongest
  peer (``benchmarks/torch_peer.py``): the restarts batched as stacked weights (``torch.baddbmm``) with a
  fused Adam, at each ``--threads`` setting, and with ``torch.compile`` of the loss for the VAE and IWAE S =
  20 rows (``--no-compile`` leaves it out). Eager baseline: ``benchmarks/torch_baseline.py`` (one
  ``nn.Module``, the restarts one after another in a Python loop); for the flow, the peer's code one restart
  at a time. Both need the ``bench`` extra (``pip install -e '.[bench]'``); without it the torch columns are
  empty.
- wall time of ``vaefail.fit`` (10 restarts, the default protocol and stopping rule) on figure8, VAE and
  IWAE S = 20;
- the importance-sampled log-likelihood (5,000 samples per point): points per second and peak memory;
  strongest peer ``torch_peer.batched_log_likelihood`` (chunks of 50 points x 5,000 samples in one pass),
  eager baseline the per-datapoint loop of ``benchmarks/loglik_baseline.py``;
- with ``--reproduce``: wall time and peak memory of
  ``vaefail reproduce EXPERIMENT --preset PRESET [OPTIONS]`` into a fresh store (``--cold-cache``: with an
  empty XLA compilation cache, as on a fresh machine).
- with ``--diagnose digits wide``: wall time, peak memory and overall verdict of ``vaefail diagnose`` at its
  default budget on scikit-learn's digits (1,797 x 64, written to CSV) and on a 20,000 x 50 table
  (:func:`wide_table`); targets: digits under 10 minutes, the table under 20, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

import vaefail
from vaefail.benchmarks import get_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import restart_steps_per_second  # noqa: E402  (benchmarks/timing.py)

HERE = Path(__file__).resolve().parent
#: (objective, S) rows of the throughput table.
THROUGHPUT = (("vae", 1), ("iwae", 10), ("iwae", 20), ("iwae", 50))
#: (objective, S) rows whose strongest peer also tries ``torch.compile``.
COMPILED = (("vae", 1), ("iwae", 20))


def to_convergence(objective: str, samples: int) -> tuple[float, int]:
    """Wall time of `vaefail.fit` on figure8, K=1, 10 restarts, default protocol (no truth model)."""
    t = time.perf_counter()
    result = vaefail.fit("figure8", objective=objective, num_samples=samples, restarts=10, seed=0)
    return time.perf_counter() - t, int(result.summary["steps"])


#: Runs a command and prints the peak RSS (kB) of its largest process, the command's workers included.
_PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def reproduce_time(item: str, cold_cache: bool) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MB, largest process) of `vaefail reproduce` into a fresh store.

    ``item`` is ``EXPERIMENT:PRESET`` followed by any further options of the command, e.g.
    ``"table1:paper --repeats 1 --only sigma_mode=fixed"``.
    """
    target, *options = shlex.split(item)
    experiment, _, preset = target.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if cold_cache:
            env["VAEFAIL_JAX_CACHE"] = str(Path(tmp) / "jax-cache")
        cmd = [sys.executable, "-m", "vaefail.cli", "reproduce", experiment, "--preset", preset or "quick",
               *options, "--out", str(Path(tmp) / "store"), "--quiet"]
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *cmd], check=True, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
    return wall, int(done.stdout.split()[-1]) / 1024


def digits_csv(path: Path) -> Path:
    """scikit-learn's ``load_digits`` (1,797 x 64 pixel intensities 0-16) as a CSV with a header."""
    import pandas as pd
    from sklearn.datasets import load_digits

    x = load_digits().data
    pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])]).to_csv(path, index=False)
    return path


def wide_table(path: Path, n: int = 20000, d: int = 50, seed: int = 0) -> Path:
    """A 20,000 x 50 CSV from a nonlinear latent-variable model: ``z ~ N(0, I_3)``,
    ``x = tanh(z W1) W2 + 0.1 eps`` with fixed random weights (seeded), so it has structure to find."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = np.tanh(z @ rng.normal(size=(3, 16))) @ rng.normal(size=(16, d)) + 0.1 * rng.normal(size=(n, d))
    pd.DataFrame(x, columns=[f"c{i}" for i in range(d)]).to_csv(path, index=False)
    return path


DIAGNOSE_DATA = {"digits": ("digits (1,797 x 64)", digits_csv), "wide": ("table (20,000 x 50)", wide_table)}


def diagnose_time(name: str, options: list[str] | None = None) -> tuple[float, float, str]:
    """Wall time (s), peak RSS (MB, largest process) and overall verdict of `vaefail diagnose` on ``name``
    (a key of :data:`DIAGNOSE_DATA`) at the default budget (or ``options``), into a fresh folder."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        data = DIAGNOSE_DATA[name][1](Path(tmp) / f"{name}.csv")
        out = Path(tmp) / "diagnosis"
        cmd = [sys.executable, "-m", "vaefail.cli", "diagnose", str(data), "--out", str(out), "--quiet",
               "--drop-constant", *(options or [])]
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *cmd], check=True, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t
        report = json.loads((out / "diagnosis.json").read_text())
    verdicts = ", ".join(f"{c['id']} {c['verdict']}" for c in report["checks"] if c["id"] != "unseen")
    return wall, int(done.stdout.split()[-1]) / 1024, f"{report['overall']} ({verdicts})"


def _baselines() -> tuple[object, object, object] | None:
    """The torch baseline modules (eager, log-likelihood loop, batched peer), or ``None`` without PyTorch."""
    if importlib.util.find_spec("torch") is None:
        return None
    sys.path.insert(0, str(HERE))
    import loglik_baseline
    import torch_baseline
    import torch_peer

    return torch_baseline, loglik_baseline, torch_peer


def _median(repeats: int, f, *args, **kwargs) -> float:
    """Median of ``repeats`` calls of ``f(*args, **kwargs)``."""
    return statistics.median(f(*args, **kwargs) for _ in range(repeats))


def _compare(ours: float, peer: dict[str, float], eager: dict[str, float], fmt: str) -> list[str]:
    """Cells ``strongest peer, ratio, its setting, eager baseline, ratio, its setting``: each the fastest of
    the settings measured (``{setting: rate}``; empty cells when none was)."""
    cells = []
    for rates in (peer, eager):
        if rates:
            best = max(rates, key=rates.get)
            cells += [fmt.format(rates[best]), f"{ours / rates[best]:.1f}x", best]
        else:
            cells += ["", "", ""]
    return cells


def _threads(setting: str) -> int | None:
    """``"default"`` -> ``None`` (torch's default intra-op threads), else the number."""
    return None if setting == "default" else int(setting)


def _thread_name(threads: int | None) -> str:
    return "default threads" if threads is None else f"{threads} thread"


def main() -> None:
    vaefail.configure()  # the `vaefail` command's JAX settings: cache, one CPU device per core
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-convergence", action="store_true", help="leave out the fits to convergence")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the PyTorch baselines")
    parser.add_argument("--torch-steps", type=int, default=300, help="steps per restart of a timed torch run")
    parser.add_argument("--threads", nargs="+", default=["default", "1"],
                        help="torch intra-op thread settings to measure ('default' or a number)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peers")
    parser.add_argument("--reproduce", nargs="*", default=[], metavar="EXPERIMENT:PRESET",
                        help="also time `vaefail reproduce`, e.g. all:quick table1:paper; further options "
                             "of the command in the same (quoted) item: 'table1:paper --repeats 1'")
    parser.add_argument("--diagnose", nargs="*", default=[], choices=sorted(DIAGNOSE_DATA),
                        help="also time `vaefail diagnose` at its default budget on digits and/or a "
                             "20,000 x 50 table")
    parser.add_argument("--cold-cache", action="store_true",
                        help="time reproduce with an empty XLA compilation cache (a fresh machine)")
    args = parser.parse_args()
    base = None if args.no_baselines else _baselines()
    table = Table(title=f"vaefail speed ({os.cpu_count()} cores, {jax.device_count()} XLA devices, "
                        f"jax {jax.__version__}, "
                        f"median of {args.repeats}, load average at start {os.getloadavg()[0]:.2f})")
    for col in ("measure", "objective", "K", "vaefail", "strongest peer", "ratio", "peer setting", "eager",
                "ratio vs eager", "eager setting", "unit"):
        table.add_column(col)
    # every vaefail figure first: after a torch op, torch's OpenMP threads keep spinning for a while and
    # would slow whatever runs next in this process (measured: IWAE S = 20 at 1,000 instead of 1,650)
    rows = [(objective, samples, k, "gaussian") for objective, samples in THROUGHPUT for k in (1, 3)]
    rows += [("vae", 1, k, "flow") for k in (1, 3)]
    ours = {row: _median(args.repeats, restart_steps_per_second, *row[:3], steps=_steps(row[1], row[3]),
                         encoder=row[3]) for row in rows}
    other_rows = []
    if not args.skip_convergence:
        for objective, samples in (("vae", 1), ("iwae", 20)):
            secs, steps = to_convergence(objective, samples)
            other_rows.append(("figure8 fit, 10 restarts to convergence", f"{objective} S={samples}", "1",
                               f"{secs:.0f} s", *[""] * 6, f"wall time ({steps} steps)"))
    for item in args.reproduce:
        wall, peak = reproduce_time(item, args.cold_cache)
        experiment, _, preset = item.partition(":")
        cache = "cold" if args.cold_cache else "warm"
        other_rows.append((f"vaefail reproduce {experiment} --preset {preset or 'quick'} ({cache} XLA cache)",
                           "", "", f"{wall / 60:.1f} min", *[""] * 6,
                           f"wall time, peak RSS {peak:,.0f} MB"))
    for name in args.diagnose:
        wall, peak, verdict = diagnose_time(name)
        other_rows.append((f"vaefail diagnose {DIAGNOSE_DATA[name][0]}", "vae, iwae", "1,2,3",
                           f"{wall / 60:.1f} min", *[""] * 6,
                           f"wall time, peak RSS {peak:,.0f} MB; {verdict}"))
    threads = [_threads(t) for t in args.threads]
    loglik = _Loglik(base, args.repeats, threads) if base is not None else None
    x = np.asarray(get_benchmark("figure8").sample(jax.random.PRNGKey(1), 5000).x, np.float32)
    for row in rows:
        objective, samples, k, encoder = row
        peer, eager = ({}, {}) if base is None else _torch_rows(base, row, x, threads, args)
        name = "flow (spline, 2 layers, path-derivative)" if encoder == "flow" else f"{objective} S={samples}"
        table.add_row("10 restarts, batch 100", name, str(k), f"{ours[row]:,.0f}",
                      *_compare(ours[row], peer, eager, "{:,.0f}"), "restart-steps/s")
    for cells in other_rows:
        table.add_row(*cells)
    if loglik is not None:
        loglik.add_rows(table)
    Console(width=180).print(table)


def _torch_rows(base, row: tuple, x: np.ndarray, threads: list[int | None],
                args) -> tuple[dict[str, float], dict[str, float]]:
    """``({peer setting: rate}, {eager setting: rate})`` of one throughput row (medians of ``--repeats``)."""
    tb, _, tp = base
    objective, samples, k, encoder = row
    steps, repeats = args.torch_steps, args.repeats
    peers = [tp.Peer("fused", False, t) for t in threads]
    if not args.no_compile and (objective, samples) in COMPILED and encoder == "gaussian":
        peers += [tp.Peer("fused", True, t) for t in threads]
    peer = {str(p): _median(repeats, tp.peer_restart_steps_per_second, objective, samples, k, encoder=encoder,
                            steps=steps, x=x, peer=p) for p in peers}
    if encoder == "flow":  # the same flow code, one restart at a time
        eager = {f"restart loop, {_thread_name(t)}": _median(
            repeats, tp.peer_restart_steps_per_second, objective, samples, k, encoder=encoder, steps=steps,
            x=x, peer=tp.Peer("fused", False, t), stacked=False) for t in threads}
    else:
        eager = {f"restart loop, {_thread_name(t)}": _median(
            repeats, tb.torch_restart_steps_per_second, objective, samples, k, steps=steps, x=x, threads=t)
            for t in threads}
    return peer, eager


def _steps(samples: int, encoder: str = "gaussian") -> int:
    """Steps of a timed vaefail run: 2,000 for the VAE, fewer for IWAE (its steps cost ~S times more) and
    the flow (about 5 times the VAE's cost per step)."""
    if encoder == "flow":
        return 400
    return 2000 if samples == 1 else 10000 // samples


class _Loglik:
    """IS log-likelihood at 5,000 samples per point: vaefail (measured at construction, before any torch
    op) on 2,000 test points; the batched torch peer on 500 of them and the per-datapoint loop on 100
    (:meth:`add_rows`)."""

    samples = 5000

    def __init__(self, base, repeats: int, threads: list[int | None]) -> None:
        self.tb, self.lb, self.tp = base
        self.repeats, self.threads = repeats, threads
        self.model = self.lb.fit_vaefail_model(1)
        self.x = np.asarray(get_benchmark("figure8").splits().test.x, np.float32)
        self.ours = _median(repeats, self.lb.vaefail_points_per_second, self.model, self.x, self.samples)

    def add_rows(self, table: Table) -> None:
        tb, lb, tp = self.tb, self.lb, self.tp
        layers, sigma = tb.vaefail_layers(self.model), float(self.model.sigma)
        peer = {f"chunks of 50 points, {_thread_name(t)}": _median(
            self.repeats, tp.batched_points_per_second, layers, sigma, self.x[:500], self.samples, threads=t)
            for t in self.threads}
        eager = {f"per-datapoint loop, {_thread_name(t)}": _median(
            self.repeats, lb.torch_loop_points_per_second, layers, sigma, self.x[:100], self.samples,
            threads=t) for t in self.threads}
        table.add_row(f"log-likelihood, {self.samples:,} importance samples", "", "1", f"{self.ours:,.0f}",
                      *_compare(self.ours, peer, eager, "{:,.1f}"), "points/s")
        mem_ours = lb.peak_memory("vaefail", layers, sigma, self.x, self.samples)
        mem_theirs = lb.peak_memory("torch", layers, sigma, self.x[:100], self.samples)
        table.add_row("log-likelihood, peak memory of a fresh process", "", "1",
                      f"{mem_ours['peak_rss_mb']:,.0f}", "", "", "", f"{mem_theirs['peak_rss_mb']:,.0f}", "",
                      "per-datapoint loop", "MB (peak RSS)")


if __name__ == "__main__":
    main()
