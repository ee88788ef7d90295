"""Predicted wall time of a `vaefail reproduce` preset on many workers, from a results store's stored times.

Usage: ``python benchmarks/scaleout.py --store DIR [--store DIR ...] [--experiment all] [--preset quick]
[--repeats R] [--only KEY=VALUE ...] [--workers 2 8 32 128] [--seconds wall|cpu]``.

Every configuration a worker computes stores ``timing.json`` (its wall-clock and CPU seconds in the
worker, compilation included; :func:`vaefail.experiments.tasks.run_task`). The script builds the preset's
job list exactly as ``vaefail reproduce`` does (same store keys), looks each configuration's time up in the
given stores (the first store that has it), and replays the executors' scheduling with these times
(:func:`simulate`):

- ``local``: the local pool, :func:`vaefail.experiments.execute.schedule` order, and each free worker
  takes the job :func:`~vaefail.experiments.execute.next_job` picks for it (program-family affinity);
- ``ray``: every job submitted in ``schedule`` order, each started on the first worker that is free
  (greedy list scheduling in submission order).

The prediction is the makespan of the configurations alone: it assumes each worker runs as fast as the
worker that stored the time (one core each; times stored on a loaded machine are inflated), and leaves out
the driver's start-up and the tables, figures and report written after the last configuration (add the
``--overhead`` seconds measured for them). A configuration with no stored time is estimated from
:func:`~vaefail.experiments.execute.estimated_cost` times the median seconds per unit cost of the stored
runs (of any preset) of the same task kind and objective, and the table says how many were estimated: a
rough figure, since the cost model counts restarts x steps x samples only (not batch size, evaluation or
compilation). The lower
bound ``max(total / W, longest job)`` is printed beside each prediction.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaefail.experiments.execute import estimated_cost, next_job, program_family, schedule
from vaefail.experiments.grid import load_experiments, parse_only, select
from vaefail.experiments.reproduce import task_key

Job = tuple[str, dict[str, Any]]
Runs = dict[str, tuple[dict[str, Any], float]]  # store key -> (spec, seconds)


def stored_runs(stores: Sequence[Path], which: str = "wall") -> Runs:
    """``{store key: (spec, seconds)}`` of every configuration in ``stores`` with a ``task.json`` and a
    ``timing.json`` (``which``: ``"wall"`` or ``"cpu"`` seconds); a key in several stores takes the first
    store's."""
    out: Runs = {}
    for store in stores:
        for timing in sorted(Path(store, "runs").glob("*/timing.json")):
            key = timing.parent.name
            if key.startswith(".tmp-") or key in out or not (timing.parent / "task.json").is_file():
                continue
            spec = json.loads((timing.parent / "task.json").read_text())
            out[key] = (spec, float(json.loads(timing.read_text())[f"{which}_seconds"]))
    return out


def _group(spec: dict[str, Any]) -> tuple[str, str]:
    fit = spec.get("fit", {})
    return spec.get("kind", "fit"), str(fit.get("objective", "") if isinstance(fit, dict) else "")


def job_seconds(jobs: Sequence[Job], runs: Runs) -> tuple[list[float], int]:
    """The time of each job (stored, else estimated; module docstring) and how many were estimated.

    The seconds per unit cost of a kind and objective are the median over every stored run of it (of
    any preset). Raises ``ValueError`` when a job has no stored time and no stored run of its kind and
    objective has a positive cost to scale from."""
    rate: dict[tuple[str, str], list[float]] = {}
    for spec, seconds in runs.values():
        if estimated_cost(spec) > 0:
            rate.setdefault(_group(spec), []).append(seconds / estimated_cost(spec))
    out, estimated = [], 0
    for key, spec in jobs:
        if key in runs:
            out.append(runs[key][1])
            continue
        per_cost = rate.get(_group(spec))
        if not per_cost:
            raise ValueError(f"no stored time for configuration {key} ({_group(spec)}) nor for any of its "
                             f"kind and objective to estimate it from")
        out.append(statistics.median(per_cost) * estimated_cost(spec))
        estimated += 1
    return out, estimated


def simulate(jobs: Sequence[Job], seconds: Sequence[float], workers: int, executor: str = "local") -> float:
    """Makespan (seconds) of ``jobs`` (each taking ``seconds[i]``) on ``workers`` workers, scheduled as the
    ``executor`` (``"local"`` or ``"ray"``) schedules them (module docstring); jobs start in
    :func:`~vaefail.experiments.execute.schedule` order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    duration = {key: s for (key, _), s in zip(jobs, seconds, strict=True)}
    queue = schedule(list(jobs))
    free: list[tuple[float, int]] = [(0.0, w) for w in range(workers)]  # (time it becomes free, worker)
    heapq.heapify(free)
    ran: dict[int, set[str]] = {w: set() for w in range(workers)}
    running: dict[int, str] = {}  # worker -> family of the job it runs (local affinity)
    end = 0.0
    while queue:
        now, w = heapq.heappop(free)
        running.pop(w, None)
        if executor == "local":
            others = {f for v, fams in ran.items() if v != w for f in fams} | set(running.values())
            key, spec = queue.pop(next_job(queue, ran[w], others))
            ran[w].add(program_family(spec))
            running[w] = program_family(spec)
        elif executor == "ray":
            key, spec = queue.pop(0)
        else:
            raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
        finish = now + duration[key]
        end = max(end, finish)
        heapq.heappush(free, (finish, w))
    return end


@dataclass(frozen=True)
class Prediction:
    """Predicted makespan of one preset on ``workers`` workers, with its lower bound."""

    workers: int
    local: float
    ray: float
    lower_bound: float


def predict(jobs: Sequence[Job], seconds: Sequence[float], workers: Sequence[int]) -> list[Prediction]:
    """:func:`simulate` for both executors at each worker count, with ``max(sum / W, max)``."""
    total, longest = sum(seconds), max(seconds, default=0.0)
    return [Prediction(w, simulate(jobs, seconds, w, "local"), simulate(jobs, seconds, w, "ray"),
                       max(total / w, longest)) for w in workers]


def preset_jobs(experiment: str, preset: str, repeats: int | None = None,
                only: Sequence[str] = ()) -> list[Job]:
    """The ``(store key, spec)`` jobs of ``vaefail reproduce EXPERIMENT --preset PRESET`` (deduplicated)."""
    experiments = select(load_experiments(experiment, preset, repeats), parse_only(only))
    return list({task_key(t): t.spec() for e in experiments for t in e.tasks}.items())


def _minutes(s: float) -> str:
    return f"{s / 60:,.1f} min"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", required=True, type=Path,
                        help="a results store with stored times (repeatable; the first one wins)")
    parser.add_argument("--experiment", default="all")
    parser.add_argument("--preset", action="append", help="preset(s) to predict (default: quick)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--seconds", choices=("wall", "cpu"), default="wall",
                        help="which stored time a configuration takes (default: wall)")
    parser.add_argument("--overhead", type=float, default=0.0,
                        help="seconds added to every prediction (driver start-up, tables, report)")
    args = parser.parse_args(argv)
    for store in args.store:
        if not Path(store, "runs").is_dir():
            sys.exit(f"error: {store} is not a results store (no runs/ folder)")
    runs = stored_runs(args.store, args.seconds)
    header = ("preset", "configurations", "estimated", "total", "workers", "local pool", "ray",
              "lower bound")
    print(" | ".join(header))
    for preset in args.preset or ["quick"]:
        jobs = preset_jobs(args.experiment, preset, args.repeats, args.only)
        try:
            times, estimated = job_seconds(jobs, runs)
        except ValueError as err:
            sys.exit(f"error: {preset}: {err}")
        for p in predict(jobs, times, args.workers):
            print(" | ".join((f"{args.experiment} --preset {preset}", str(len(jobs)), str(estimated),
                              _minutes(sum(times)), str(p.workers), _minutes(p.local + args.overhead),
                              _minutes(p.ray + args.overhead), _minutes(p.lower_bound + args.overhead))))


if __name__ == "__main__":
    main()
