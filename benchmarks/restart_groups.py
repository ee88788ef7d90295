"""Restart-steps per second of the fused training loop on one core, by how many restarts are vmapped at once.

Usage: ``python benchmarks/restart_groups.py [--repeats R] [--restarts N]``.

This is the measurement behind ``vaefail.training.restart_group`` (a ``vaefail reproduce`` worker, one
single-threaded XLA device, trains more than two restarts in pairs). The script pins itself to one XLA
device with one thread, as a worker is, and prints one row per shape: for every group size that divides
``--restarts``, the best of ``--repeats`` timed runs (``timing.restart_steps_per_second``, each after an
identical untimed one), and the group size ``restart_group`` picks.
"""

from __future__ import annotations

import argparse
import os

import jax
from rich.console import Console
from rich.table import Table
from timing import restart_steps_per_second  # (benchmarks/timing.py, beside this script)

import vaefail
from vaefail.training import restart_group

#: (objective, S, K, batch): the paper preset's IWAE and VAE shapes and the issue's batch-100 shapes.
SHAPES = (("iwae", 20, 3, 256), ("iwae", 20, 3, 100), ("iwae", 50, 3, 100), ("iwae", 10, 1, 100),
          ("vae", 1, 1, 256), ("vae", 1, 3, 100))


def main() -> None:
    vaefail.configure(cpu_devices=1, xla_threads=1)  # one device with one thread, as a reproduce worker
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args()
    n = args.restarts
    groups = [g for g in range(1, n + 1) if n % g == 0]
    table = Table(title=f"restart-steps/s, {n} restarts on {jax.device_count()} XLA device(s), "
                        f"best of {args.repeats}, load average at start {os.getloadavg()[0]:.2f}")
    for col in ("objective", "S", "K", "batch", *(f"g={g}" for g in groups), "restart_group"):
        table.add_column(col)
    for objective, samples, k, batch in SHAPES:
        steps = max(100, 200_000 // (n * batch * samples))  # a few seconds per timed run
        best = {}
        for _ in range(args.repeats):  # interleaved, so a slow moment of the machine hits every column
            for g in groups:
                rate = restart_steps_per_second(objective, samples, k, n, batch, steps, group=g)
                best[g] = max(best.get(g, 0.0), rate)
        table.add_row(objective, str(samples), str(k), str(batch), *(f"{best[g]:,.0f}" for g in groups),
                      str(restart_group(n)))
    Console().print(table)


if __name__ == "__main__":
    main()
