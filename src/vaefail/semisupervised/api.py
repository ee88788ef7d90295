"""One call for a reproduce task: fit M2 with the restart protocol, then every metric."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vaefail.benchmarks import get_benchmark
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.metrics import collapse_score, counterfactual_error, evaluate_semisupervised
from vaefail.semisupervised.results import SemiSupervisedResult
from vaefail.semisupervised.training import fit_semisupervised, require_labelled
from vaefail.training import take


def run_semisupervised(
    config: SemiSupervisedConfig | dict[str, Any], *, progress: bool = False, collapse_samples: int = 2000,
    per_restart: bool = True,
) -> tuple[SemiSupervisedResult, dict[str, Any]]:
    """Fit M2 on a labelled benchmark and evaluate the selected restart on the test split.

    Parameters
    ----------
    config
        A :class:`SemiSupervisedConfig` or its dict form (unknown keys are rejected).
    progress
        Show Rich progress bars.
    collapse_samples
        Draws per class for the Jensen-Shannon divergences of the collapse score.
    per_restart
        Also compute the collapse score and counterfactual error of every restart (not only the
        selected one), to show whether the objective's choice is the collapsed solution.

    Returns
    -------
    result, metrics
        The fitted :class:`SemiSupervisedResult` and a JSON-ready dict: ``config`` (its dict), ``summary``
        (the result's summary: selected restart, test/validation J, the truth's J), ``test``
        (:func:`~vaefail.semisupervised.metrics.evaluate_semisupervised` of the selected model) and, with
        ``per_restart``, ``restarts``: one record per restart with ``start``, ``status``, ``val_objective``,
        ``test_objective``, ``test_accuracy``, ``collapse_score`` and ``counterfactual_error``.
    """
    if isinstance(config, dict):
        config = SemiSupervisedConfig.from_dict(config)
    bench = require_labelled(get_benchmark(config.benchmark, **config.benchmark_params))
    result = fit_semisupervised(config, bench, progress=progress)
    test = result.data().test
    key = jax.random.PRNGKey(config.seed + 31337)
    metrics: dict[str, Any] = {
        "config": config.to_dict(),
        "summary": result.summary,
        "test": evaluate_semisupervised(result.model, bench, test, key, collapse_samples=collapse_samples),
    }
    if per_restart:
        rows = []
        for r, row in result.restarts.iterrows():
            record = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            if int(r) == result.selected:  # the same numbers as ``test`` (same model, key and draws)
                record["collapse_score"] = metrics["test"]["collapse"]["score"]
                record["counterfactual_error"] = metrics["test"]["counterfactual"]["error"]
            elif row["status"] == "ok":
                model = take(result.models, int(r))
                record["collapse_score"] = collapse_score(model, bench, key, n=collapse_samples)["score"]
                record["counterfactual_error"] = counterfactual_error(model, bench, test)["error"]
            rows.append(record)
        metrics["restarts"] = rows
    return result, metrics
