"""Measured speed of vaefail's training: prints a table of times and restart-steps per second.

Usage: ``python benchmarks/run.py [--steps N] [--repeats R]``. Each figure is the median over ``--repeats``
runs. "To convergence" uses the library's default stopping rule (validation bound stalled for
``patience`` evaluations) with the default step cap.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from rich.console import Console
from rich.table import Table

import vaefail
from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig
from vaefail.objectives import loss_fn
from vaefail.training import init_models, optimise


def restart_steps_per_second(objective: str, samples: int, latent_dim: int, restarts: int = 10,
                             batch: int = 100, steps: int = 2000) -> float:
    """Throughput of the fused training loop alone (compilation excluded by a warm-up run)."""
    bench = get_benchmark("figure8")
    config = FitConfig(restarts=restarts, latent_dim=latent_dim)
    models = init_models(config, bench, list(jax.random.split(jax.random.PRNGKey(0), restarts)))
    x = jnp.asarray(bench.sample(jax.random.PRNGKey(1), 5000).x, jnp.float32)

    def go(n):
        t = time.perf_counter()
        out = optimise(models, loss_fn(objective, samples), x, jax.random.PRNGKey(2), steps=n,
                       batch_size=batch, learning_rate=1e-3, eval_every=n, progress=False)
        jax.block_until_ready(out.model)
        return time.perf_counter() - t

    warm = go(steps // 4)  # includes compilation
    full = go(steps + steps // 4)
    return restarts * steps / (full - warm)


def to_convergence(objective: str, samples: int) -> tuple[float, int]:
    """Wall time of `vaefail.fit` on figure8, K=1, 10 restarts, default protocol (no truth model)."""
    t = time.perf_counter()
    result = vaefail.fit("figure8", objective=objective, num_samples=samples, restarts=10, seed=0)
    return time.perf_counter() - t, int(result.summary["steps"])


def reproduce_time(experiment: str, preset: str, cold_cache: bool) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MB, largest process) of `vaefail reproduce` into a fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if cold_cache:
            env["VAEFAIL_JAX_CACHE"] = str(Path(tmp) / "jax-cache")
        cmd = [sys.executable, "-m", "vaefail.cli", "reproduce", experiment, "--preset", preset,
               "--out", str(Path(tmp) / "store"), "--quiet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-convergence", action="store_true", help="only the throughput rows")
    parser.add_argument("--reproduce", nargs="*", default=[], metavar="EXPERIMENT:PRESET",
                        help="also time `vaefail reproduce`, e.g. all:quick table1:paper")
    parser.add_argument("--cold-cache", action="store_true",
                        help="time reproduce with an empty XLA compilation cache (a fresh machine)")
    args = parser.parse_args()
    table = Table(title=f"vaefail training speed ({os.cpu_count()} cores, jax {jax.__version__})")
    for col in ("measure", "objective", "K", "value", "unit"):
        table.add_column(col)
    for objective, samples in (("vae", 1), ("iwae", 20)):
        for k in (1, 3):
            runs = [restart_steps_per_second(objective, samples, k) for _ in range(args.repeats)]
            table.add_row("10 restarts, batch 100", f"{objective} S={samples}", str(k),
                          f"{statistics.median(runs):,.0f}", "restart-steps/s")
    if not args.skip_convergence:
        for objective, samples in (("vae", 1), ("iwae", 20)):
            runs = [to_convergence(objective, samples) for _ in range(max(1, args.repeats // 3))]
            secs = statistics.median(r[0] for r in runs)
            steps = runs[0][1]
            table.add_row("figure8 fit, 10 restarts to convergence", f"{objective} S={samples}", "1",
                          f"{secs:.0f} s ({steps} steps, {10 * steps / secs:,.0f} restart-steps/s overall)",
                          "wall time")
    for item in args.reproduce:
        experiment, _, preset = item.partition(":")
        wall, peak = reproduce_time(experiment, preset or "quick", args.cold_cache)
        cache = "cold" if args.cold_cache else "warm"
        table.add_row(f"vaefail reproduce {experiment} --preset {preset or 'quick'} ({cache} XLA cache)",
                      "", "", f"{wall / 60:.1f} min, peak RSS {peak:,.0f} MB", "wall time")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
