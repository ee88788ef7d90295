"""One configuration of an experiment, end to end: fit with the restart protocol, then every metric.

:func:`run_task` is what a worker process or a Ray task executes; it returns the finished
configuration's files (the run folder, ``metrics.json`` and ``task.json``) as bytes.
"""

from __future__ import annotations

import json
from typing import Any

import jax

from vaefail.api import fit_config
from vaefail.benchmarks import get_benchmark
from vaefail.config import FitConfig
from vaefail.metrics.evaluate import evaluate_run


def run_task(spec: dict[str, Any]) -> dict[str, bytes]:
    """Fit ``spec["fit"]`` and evaluate it with ``spec["eval"]`` settings.

    The ground-truth model (true decoder, its best encoder) is fitted too when ``eval.truth`` is set and
    the comparison is the paper's: the VAE objective, the model's K equal to the truth's and sigma_eps the
    true, fixed one.
    """
    config = FitConfig.from_dict(spec["fit"])
    settings = spec.get("eval", {})
    bench = get_benchmark(config.benchmark, **config.benchmark_params)
    truth = bool(settings.get("truth", False)) and config.objective == "vae" and (
        config.latent_dim == bench.latent_dim and not config.learn_sigma and config.sigma_eps is None
    )
    result = fit_config(config, bench, truth=truth)
    metrics = evaluate_run(
        result, jax.random.PRNGKey(config.seed + 31337),
        num_samples=int(settings.get("ll_samples", 1000)),
        sections=settings.get("sections"),
    )
    files = result.to_files()
    files["metrics.json"] = json.dumps({"summary": result.summary, "metrics": metrics}, indent=2).encode()
    files["task.json"] = json.dumps(spec, indent=2).encode()
    return files
