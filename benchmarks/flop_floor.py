"""How fast the training could be on this machine at best: FLOP counts against measured FLOP rates.

Usage: ``python benchmarks/flop_floor.py [--experiment table1|...|all] [--preset paper|quick] [--repeats R]``.

The reproduce runs are compute-bound in their training loops (the ``--reproduce`` rows of
``benchmarks/run.py``), so their time is bounded below by the floating-point work they must do divided
by the machine's FLOP rate. The script prints, on one core in a reproduce worker's setting (one XLA
device, one thread):

- the FLOP rate of a large matrix product (1024 x 1024, about the core's peak) and of the decoder's
  hidden layer at the paper's shape (``[256 * 20, 50] x [50, 50]``: batch x S rows, width 50);
- per training shape of the experiment: XLA's count of the floating-point operations of one step of one
  restart (the loss and its gradient, ``cost_analysis`` of the compiled ``value_and_grad``; Adam's few
  FLOPs per parameter are left out), the fused loop's measured restart-steps per second
  (``timing.restart_steps_per_second``, 10 restarts) and the FLOP rate that makes;
- the experiment's training FLOPs: sum over its ``fit`` configurations of restarts x step budget x FLOPs
  per step, and the time that takes on all cores at the large-product rate and at the measured rates.

This is a lower bound on the training loops alone: it leaves out the truth-started restarts' initial
fits (``benchmarks/truth_starts.py`` measures those, shared or not), the truth models, the evaluation and
compilation, and counts each configuration at its full step budget (the convergence rule may stop
earlier). Other task kinds (M2) are not counted.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
from rich.console import Console
from rich.table import Table
from timing import restart_steps_per_second  # (benchmarks/timing.py, beside this script)

import vaefail
from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig
from vaefail.experiments.grid import EXPERIMENTS, PRESETS, load_experiments
from vaefail.mfg import init_models
from vaefail.objectives import loss_fn
from vaefail.stacking import take


def matmul_gflops(rows: int, width: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a chain of ``[rows, width] x [width, width]`` products (each
    product's input is the previous one's output, so XLA cannot hoist or skip any), ``2 rows width^2``
    FLOPs each."""
    n = max(10, int(2e9 // (2 * rows * width * width)))  # ~2 GFLOP per timed run
    a = jnp.full((rows, width), 1e-2, jnp.float32)
    b = jnp.full((width, width), 1.0 / width, jnp.float32)
    chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, n, lambda _, c: c @ b, a))
    chain(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        chain(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * rows * width * width * n / best / 1e9


@functools.cache
def step_flops(objective: str, samples: int, latent_dim: int, batch: int) -> float:
    """XLA's FLOP count of one training step of one restart: the loss on ``batch`` points and its
    gradient with respect to every parameter (figure8's data dimension, the default 2 x 50 networks)."""
    bench = get_benchmark("figure8")
    config = FitConfig(restarts=1, latent_dim=latent_dim)
    model = take(init_models(config, bench, [jax.random.PRNGKey(0)]), 0)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss = loss_fn(objective, samples)
    grad = jax.jit(jax.value_and_grad(lambda p, x, k: loss(eqx.combine(p, static), x, k)[0]))
    x = jnp.zeros((batch, bench.x_dim), jnp.float32)
    return float(grad.lower(params, x, jax.random.PRNGKey(0)).compile().cost_analysis()["flops"])


def _shape(fit: dict) -> tuple[str, int, int, int]:
    """(objective, S, K, batch) of a fit configuration (S = 1 for the VAE's training)."""
    config = FitConfig.from_dict(fit)
    default = FitConfig()
    if (config.hidden_width, config.hidden_depth) != (default.hidden_width, default.hidden_depth):
        raise SystemExit("flop_floor.py measures the default 2 x 50 networks only")
    return config.objective, config.train_samples, config.latent_dim, config.batch_size


def main() -> None:
    vaefail.configure(cpu_devices=1, xla_threads=1)  # one device with one thread, as a reproduce worker
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="table1", choices=(*EXPERIMENTS, "all"))
    parser.add_argument("--preset", default="paper", choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per rate (the best is kept)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    peak = matmul_gflops(1024, 1024, args.repeats)
    hidden = matmul_gflops(256 * 20, 50, args.repeats)
    fits = [t.fit for e in load_experiments(args.experiment, args.preset) for t in e.tasks if t.kind == "fit"]
    work: dict[tuple, float] = {}  # shape -> restart-steps over the experiment
    for fit in fits:
        work[_shape(fit)] = work.get(_shape(fit), 0.0) + fit["restarts"] * fit["steps"]

    shapes = Table(title=f"training FLOPs per shape ({args.experiment} --preset {args.preset}, one core, "
                         f"one XLA thread; load average at start {os.getloadavg()[0]:.2f})")
    for col in ("objective", "S", "K", "batch", "MFLOP / restart-step", "restart-steps/s",
                "GFLOP/s", "restart-steps in grid", "TFLOP in grid"):
        shapes.add_column(col, justify="right")
    total_flops = total_seconds = 0.0
    for shape, restart_steps in sorted(work.items()):
        objective, samples, k, batch = shape
        flops = step_flops(*shape)
        steps = max(100, 200_000 // (10 * batch * samples))  # a few seconds per timed run
        rate = max(restart_steps_per_second(objective, samples, k, 10, batch, steps)
                   for _ in range(args.repeats))
        total_flops += flops * restart_steps
        total_seconds += restart_steps / rate
        shapes.add_row(objective, str(samples), str(k), str(batch), f"{flops / 1e6:.2f}", f"{rate:,.0f}",
                       f"{flops * rate / 1e9:.1f}", f"{restart_steps:,.0f}",
                       f"{flops * restart_steps / 1e12:.1f}")
    Console(width=160).print(shapes)

    summary = Table(title=f"the floor ({cores} cores, jax {jax.__version__})")
    for col in ("measure", "value"):
        summary.add_column(col)
    summary.add_row("matrix product 1024 x 1024, one core", f"{peak:.0f} GFLOP/s")
    summary.add_row("decoder hidden layer [5120, 50] x [50, 50], one core", f"{hidden:.0f} GFLOP/s")
    summary.add_row(f"training FLOPs of {args.experiment} --preset {args.preset} ("
                    f"{len(fits)} fit configurations, full step budgets)", f"{total_flops / 1e12:,.1f} TFLOP")
    summary.add_row(f"... on {cores} cores at the large-product rate",
                    f"{total_flops / (peak * 1e9 * cores) / 60:,.1f} min")
    summary.add_row(f"... on {cores} cores at the measured training rates",
                    f"{total_seconds / cores / 60:,.1f} min")
    Console(width=160).print(summary)


if __name__ == "__main__":
    main()
