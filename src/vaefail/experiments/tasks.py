"""One configuration of an experiment, end to end: fit with the restart protocol, then every metric.

:func:`run_task` is what a worker process or a Ray task executes; it returns the finished
configuration's files as bytes: the run folder (when the kind has one), ``metrics.json`` and ``task.json``.
A task's ``kind`` (see :mod:`vaefail.experiments.grid`) picks the runner:

- ``"fit"`` (the default; unsupervised): :func:`vaefail.api.fit_config` and
  :func:`vaefail.metrics.evaluate.evaluate_run`;
- ``"semisupervised"``: :func:`vaefail.semisupervised.run_semisupervised` (M2 on a labelled benchmark);
- ``"digits"``: :func:`vaefail.semisupervised.run_digits` (one seed; no run folder).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jax

from vaefail.api import encoder_config, fit_config
from vaefail.benchmarks import get_benchmark
from vaefail.errors import unknown_name
from vaefail.experiments.provenance import code_fingerprint, provenance
from vaefail.experiments.store import SharedFits
from vaefail.metrics.evaluate import BOUND_POINTS, evaluate_run
from vaefail.protocol import StartCache


def run_task(spec: dict[str, Any], *, shared: str | None = None) -> dict[str, bytes]:
    """Run the configuration ``spec`` (``fit``, ``eval`` and optionally ``kind``) and return its files.

    ``shared``: the folder of a results store whose shared fits
    (:class:`~vaefail.experiments.store.SharedFits`: the truth starts of ``fit`` tasks) this process reads
    and adds to, when it sees that store.

    Besides the runner's files: ``task.json`` (the spec), ``timing.json`` (the task's wall-clock and
    process CPU seconds in the worker, compilation included) and ``provenance.json`` (the package version
    and code fingerprint of the worker that computed it, :func:`~vaefail.experiments.provenance.provenance`).
    """
    kind = spec.get("kind", "fit")
    if kind not in RUNNERS:
        raise unknown_name("task kind", kind, RUNNERS)
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "fit" and shared is not None:
        files = run_fit_task(spec, starts=SharedFits.at(shared, code_fingerprint()))
    else:
        files = RUNNERS[kind](spec)
    files["task.json"] = json.dumps(spec, indent=2).encode()
    files["provenance.json"] = json.dumps(provenance(), indent=2).encode()
    files["timing.json"] = json.dumps({"wall_seconds": round(time.perf_counter() - wall, 2),
                                       "cpu_seconds": round(time.process_time() - cpu, 2)}).encode()
    return files


def run_fit_task(spec: dict[str, Any], *, starts: StartCache | None = None) -> dict[str, bytes]:
    """Fit ``spec["fit"]`` (a :class:`~vaefail.config.FitConfig`, or with ``"encoder": "flow"`` a
    :class:`~vaefail.config.FlowConfig`) and evaluate it with ``spec["eval"]``; truth starts are shared
    through ``starts`` (:func:`vaefail.protocol.truth_start`).

    The ground-truth model (true decoder, its best encoder) is fitted too when ``eval.truth`` is set and
    the comparison is the paper's: the VAE objective, the model's K equal to the truth's and sigma_eps the
    true, fixed one.
    """
    fit = dict(spec["fit"])
    config = encoder_config(fit.pop("encoder", "gaussian")).from_dict(fit)
    settings = spec.get("eval", {})
    bench = get_benchmark(config.benchmark, **config.benchmark_params)
    truth = bool(settings.get("truth", False)) and config.objective == "vae" and (
        config.latent_dim == bench.latent_dim and not config.learn_sigma and config.sigma_eps is None
    )
    result = fit_config(config, bench, truth=truth, starts=starts)
    metrics = evaluate_run(
        result, jax.random.PRNGKey(config.seed + 31337),
        num_samples=int(settings.get("ll_samples", 1000)),
        sections=settings.get("sections"), truth_model=result.truth,
        bound_points=int(settings.get("bound_points", BOUND_POINTS)),
    )
    files = result.to_files()
    files["metrics.json"] = json.dumps({"summary": result.summary, "metrics": metrics}, indent=2).encode()
    return files


def run_semisupervised_task(spec: dict[str, Any]) -> dict[str, bytes]:
    """Fit M2 (``spec["fit"]``, a :class:`~vaefail.semisupervised.SemiSupervisedConfig`) with the restart
    protocol and evaluate the selected restart; ``eval`` may set ``collapse_samples`` (draws per class of
    the collapse score, default 2000), ``per_restart`` (score every restart too, default true) and
    ``bound_points`` (test points of the optimal-encoder bounds, default 500).

    ``metrics.json`` is :func:`~vaefail.semisupervised.run_semisupervised`'s record: ``config``,
    ``summary`` (selected restart, test/validation J, the truth's J), ``test`` (every metric) and
    ``restarts``.
    """
    from vaefail.semisupervised import run_semisupervised

    settings = spec.get("eval", {})
    result, metrics = run_semisupervised(
        spec["fit"], collapse_samples=int(settings.get("collapse_samples", 2000)),
        per_restart=bool(settings.get("per_restart", True)),
        bound_points=int(settings.get("bound_points", 500)),
    )
    files = result.to_files()
    files["metrics.json"] = json.dumps(metrics, indent=2).encode()
    return files


def run_digits_task(spec: dict[str, Any]) -> dict[str, bytes]:
    """M2 against labelled-only classifiers on digits (``spec["fit"]``, a
    :class:`~vaefail.semisupervised.DigitsConfig`); ``metrics.json`` is
    :func:`~vaefail.semisupervised.run_digits`'s record."""
    from vaefail.semisupervised import DigitsConfig, run_digits

    return {"metrics.json": json.dumps(run_digits(DigitsConfig.from_dict(spec["fit"])), indent=2).encode()}


#: The runner of each task kind.
RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, bytes]]] = {
    "fit": run_fit_task,
    "semisupervised": run_semisupervised_task,
    "digits": run_digits_task,
}
