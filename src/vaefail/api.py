"""The one-call Python API: :func:`fit`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pandas as pd

from vaefail.benchmarks import Benchmark, get_benchmark
from vaefail.config import FitConfig
from vaefail.errors import ConfigError, VaefailError
from vaefail.results import FitResult
from vaefail.training import evaluate_bounds, stack, train_restarts, truth_model


def fit(
    benchmark: str | Benchmark = "figure8",
    objective: str = "vae",
    latent_dim: int = 1,
    restarts: int = 10,
    seed: int = 0,
    *,
    truth: bool = False,
    progress: bool = False,
    **options: Any,
) -> FitResult:
    """Fit a VAE or IWAE to a benchmark with the paper's restart protocol.

    Parameters
    ----------
    benchmark
        A benchmark name (``vaefail benchmarks`` lists them) or a :class:`Benchmark` instance.
    objective
        ``"vae"`` (ELBO) or ``"iwae"`` (importance-weighted bound, ``num_samples`` samples).
    latent_dim
        Latent dimension ``K`` of the model.
    restarts
        Number of restarts ``R``; half start at the ground truth, half at random.
    seed
        Seed of initialisation, training and (unless ``data_seed`` is given) the data.
    truth
        Also fit the ground-truth model's best encoder and report its bounds (the evidence for or
        against the truth being the objective's global optimum).
    progress
        Show Rich progress bars.
    **options
        Any other :class:`FitConfig` field (``steps``, ``num_samples``, ``sigma_eps``, ...).

    Returns
    -------
    FitResult
        The selected model (best mean validation bound among restarts that did not diverge), every
        restart's record and a summary of mean test bounds (nats per point, higher is better) and the
        exact mean test ``log p_gt(x)``.
    """
    if isinstance(benchmark, Benchmark):
        options["benchmark_params"] = benchmark.params()
        bench, name = benchmark, benchmark.name
    else:
        bench, name = get_benchmark(benchmark, **options.get("benchmark_params", {})), benchmark
    config = FitConfig(
        benchmark=name, objective=objective, latent_dim=latent_dim, restarts=restarts, seed=seed,
        **options,
    )
    return fit_config(config, bench, truth=truth, progress=progress)


def fit_config(
    config: FitConfig, benchmark: Benchmark | None = None, *, truth: bool = False,
    progress: bool = False,
) -> FitResult:
    """:func:`fit` from a :class:`FitConfig`."""
    if benchmark is None:
        benchmark = get_benchmark(config.benchmark, **config.benchmark_params)
    if benchmark.labelled:
        raise ConfigError(
            f"{benchmark.name!r} is a labelled benchmark: fit it with "
            "vaefail.semisupervised.run_semisupervised, not the unsupervised fit"
        )
    splits = benchmark.splits(config.n_train, config.n_val, config.n_test, seed=config.split_seed)
    outcome = train_restarts(benchmark, splits, config, progress=progress)
    eval_key = jax.random.PRNGKey(config.seed + 1_000_003)
    # the train bound is a diagnostic (over-fitting); its first 2,000 points are plenty for that
    bounds = {
        part: evaluate_bounds(outcome.models, getattr(splits, part).x[:limit], config, eval_key)
        for part, limit in (("train", 2000), ("val", None), ("test", None))
    }
    ok = ~outcome.diverged & np.isfinite(bounds["val"]["bound"])
    if not ok.any():
        raise VaefailError(
            "every restart diverged (NaN/inf); try a smaller --learning-rate or a larger sigma_eps"
        )
    selected = int(np.argmax(np.where(ok, bounds["val"]["bound"], -np.inf)))
    sigma = np.exp(np.asarray(outcome.models.log_sigma, dtype=np.float64))
    table = pd.DataFrame(
        {
            "restart": np.arange(config.restarts),
            "start": outcome.start,
            "status": np.where(ok, "ok", "diverged"),
            "steps": outcome.steps,
            "train_bound": bounds["train"]["bound"],
            "val_bound": bounds["val"]["bound"],
            "test_bound": bounds["test"]["bound"],
            "test_elbo": bounds["test"]["elbo"],
            "sigma_eps": sigma,
            "selected": np.arange(config.restarts) == selected,
        }
    )
    summary: dict[str, Any] = {
        "selected": selected,
        "start": outcome.start[selected],
        "steps": outcome.steps,
        "val_bound": float(bounds["val"]["bound"][selected]),
        "test_bound": float(bounds["test"]["bound"][selected]),
        "test_elbo": float(bounds["test"]["elbo"][selected]),
        "test_log_prob_true": float(np.mean(benchmark.log_prob(splits.test.x))),
    }
    model = None
    if truth:
        model = truth_model(benchmark, splits, config, jax.random.PRNGKey(config.seed + 7), progress=progress)
        tb = evaluate_bounds(stack([model]), splits.test.x, config, eval_key)
        summary["truth_test_bound"] = float(tb["bound"][0])
        summary["truth_test_elbo"] = float(tb["elbo"][0])
    return FitResult(config, outcome.models, table, selected, summary, truth=model)
