"""Fit M2 with the restart protocol (:func:`fit_semisupervised`), and fit then evaluate in one call
(:func:`run_semisupervised`, what a reproduce task runs)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vaefail.benchmarks import LabelledBenchmark, get_benchmark
from vaefail.protocol import fit_family
from vaefail.results import FitResult
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.data import require_labelled
from vaefail.semisupervised.family import M2_FAMILY
from vaefail.semisupervised.metrics import collapse_score, counterfactual_error, evaluate_semisupervised
from vaefail.semisupervised.optimal import m2_bounds
from vaefail.stacking import take


def fit_semisupervised(
    config: SemiSupervisedConfig, benchmark: LabelledBenchmark | None = None, *, progress: bool = False
) -> FitResult:
    """Train M2 with the restart protocol (:func:`vaefail.protocol.fit_family`) and select a restart.

    The restart table has one row per restart: ``restart, start, status, steps, val_objective,
    test_objective, test_unlabelled, test_accuracy, selected`` (objectives are mean per-point shares of J
    in nats, higher is better). The summary holds the selected restart's numbers and, with
    ``config.truth``, the ground-truth model's ``truth_val_objective`` / ``truth_test_objective``.
    """
    if benchmark is None:
        benchmark = get_benchmark(config.benchmark, **config.benchmark_params)
    benchmark = require_labelled(benchmark)
    return fit_family(M2_FAMILY, config, benchmark, truth=config.truth, progress=progress)


def run_semisupervised(
    config: SemiSupervisedConfig | dict[str, Any], *, progress: bool = False, collapse_samples: int = 2000,
    per_restart: bool = True, bound_points: int | None = 500,
) -> tuple[FitResult, dict[str, Any]]:
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
        The fitted :class:`~vaefail.results.FitResult` and a JSON-ready dict: ``config`` (its dict),
        ``summary`` (the result's summary: selected restart, test/validation J, the truth's J), ``test``
        (:func:`~vaefail.semisupervised.metrics.evaluate_semisupervised` of the selected model) and, with
        ``per_restart``, ``restarts``: one record per restart with ``start``, ``status``, ``val_objective``,
        ``test_objective``, ``test_accuracy``, ``collapse_score`` and ``counterfactual_error``; ``bounds``:
        the unlabelled bound at the optimal Gaussian encoders for the model and the truth, on the first
        ``bound_points`` test points (:func:`~vaefail.semisupervised.optimal.m2_bounds`; ``None`` for
        ``K > 2``, where the quadrature it rests on is not available).
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
        "bounds": (m2_bounds(result.model, bench, test.x, jax.random.fold_in(key, 1),
                             truth_model=result.truth, points=bound_points)
                   if config.latent_dim <= 2 else None),
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
