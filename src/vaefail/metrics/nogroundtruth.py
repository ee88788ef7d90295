"""Every metric of a fitted run that needs no ground truth: for runs on a user's data.

:func:`evaluate_data_run` takes anything shaped like a :class:`vaefail.results.FitResult` (``config``,
``model``, ``splits()``, ``summary``) and returns a JSON-ready dict: the importance-sampled
``log p_theta(x)`` with its standard errors and ESS, the exact one by quadrature where ``K <= 2``, the ELBO
and the model's own posterior gap ``log p_theta(x) - ELBO(x) = KL(q(z|x) || p_theta(z|x))``, Pareto k-hat,
per-dimension mutual information and active units, the optimal-Gaussian gap of the model's posterior
(``K <= 2``) and ``sigma_eps``. What needs a truth (``log p_gt``, the MLEO, the true posterior's gap, the
truth comparison, curves, crossings, latent agreement) is listed under ``"unavailable"`` with the reason.
:func:`data_evaluation_table` renders it.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from rich.table import Table
from rich.text import Text

from vaefail.errors import ConfigError
from vaefail.metrics._stats import Estimate, elbo_per_point, finite
from vaefail.metrics.evaluate import BOUND_POINTS, _est, _num, evaluation_points
from vaefail.metrics.information import mutual_information
from vaefail.metrics.likelihood import exact_log_likelihood, log_likelihood
from vaefail.metrics.optimal import optimal_bound
from vaefail.metrics.pareto import KHAT_THRESHOLD
from vaefail.metrics.posterior import GAP_THRESHOLD, GaussianGap, KHat, gaussian_gap

#: Why each truth-based section of :func:`vaefail.metrics.evaluate.evaluate_run` is missing for a data run.
UNAVAILABLE = {
    "likelihood.log_p_true": "needs the true density p_gt(x), which a data file does not have",
    "split.mleo": "KL(p_gt || p_theta) needs the true density p_gt(x)",
    "failure.true_posterior_gap": "needs the true posterior p_gt(z|x) (the true decoder)",
    "failure.truth_comparison": "needs the ground-truth model (there are no truth-started restarts on data)",
    "failure.curve": "needs the true decoder's curve f_gt",
    "failure.crossing": "needs the true curve's self-crossings",
    "failure.latent_agreement": "needs the true latents z",
}


def evaluate_data_run(
    result: Any,
    key: jax.Array,
    *,
    num_samples: int = 1000,
    split: str = "test",
    max_points: int | None = None,
    elbo_samples: int = 100,
    exact: bool = True,
    gap: bool = True,
    mi: bool = True,
    per_point: bool = False,
    gap_points: int | None = BOUND_POINTS,
) -> dict[str, Any]:
    """The truth-free metrics of the selected model of a run, on one of its splits.

    Sections: ``run``; ``likelihood`` (``log_p_is``: mean of ``IWAE_S(x_i)`` over points with its data
    standard error, ``log_p_is_mc_stderr``, ``ess_mean``; ``log_p_exact`` by quadrature for ``K <= 2``
    when ``exact``; ``elbo``: mean ``ELBO(x_i)`` with ``elbo_samples`` draws; ``posterior_gap``: mean of
    ``log p_theta(x_i) - ELBO(x_i)``, the model's own PMO, from the exact ``log p_theta`` when computed, else
    the IS one); ``posterior`` (k-hat with ``S = num_samples >= 25``; the Gaussian gap of the model's
    posterior ``min_N KL(N || p_theta(z|x))`` over mean-field Gaussians ``N`` for ``K <= 2`` when ``gap``:
    :func:`model_gaussian_gap`, for ``K = 2`` on the first ``gap_points`` points only, as
    :func:`vaefail.metrics.evaluate.evaluate_run`'s bounds); ``mutual_information``;
    ``unavailable`` (section -> reason); ``seconds``. With ``per_point`` also ``per_point``: the test points'
    ``log_p`` (the best estimate) and ``elbo`` lists, for paired comparisons between runs on the same data.
    """
    model, config = result.model, result.config
    x = evaluation_points(result, split, max_points)
    k = int(model.latent_dim)
    keys = {name: jax.random.fold_in(key, i) for i, name in enumerate(["is", "elbo", "mi"])}
    unavailable = dict(UNAVAILABLE)
    seconds: dict[str, float] = {}
    summary = dict(getattr(result, "summary", {}) or {})
    data = result.benchmark
    report: dict[str, Any] = {
        "run": {
            "data": config.benchmark, "path": data.spec.path, "columns": list(data.names),
            "standardised": bool(data.spec.standardise), "objective": config.objective, "latent_dim": k,
            "sigma_eps": finite(model.sigma), "learn_sigma": bool(config.learn_sigma),
            "seed": int(config.seed), "selected_restart": summary.get("selected"), "split": split,
            "n": int(x.shape[0]), "num_samples": int(num_samples),
        }
    }
    t0 = time.perf_counter()
    ll = log_likelihood(model, x, keys["is"], num_samples, pareto_k=num_samples >= 25)
    ex = exact_log_likelihood(model, x) if exact and k <= 2 else None
    if ex is None:
        unavailable["likelihood.log_p_exact"] = (f"quadrature needs K <= 2 (K = {k})" if k > 2
                                                 else "not requested")
    elbo = elbo_per_point(model, x, keys["elbo"], elbo_samples)
    best = ex.per_point if ex is not None else ll.per_point
    report["likelihood"] = {
        "log_p_is": Estimate.of(ll.per_point).to_dict(),
        "log_p_is_mc_stderr": finite(ll.mc_stderr),
        "ess_mean": finite(np.mean(ll.ess)),
        "log_p_exact": None if ex is None else Estimate.of(ex.per_point).to_dict(),
        "elbo": Estimate.of(elbo).to_dict(),
        "posterior_gap": Estimate.of(best - elbo).to_dict(),
        "posterior_gap_method": "quadrature" if ex is not None else f"importance sampling (S={num_samples})",
    }
    seconds["likelihood"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    posterior: dict[str, Any] = {"khat": None, "model_gaussian_gap": None}
    if ll.khat is not None:
        posterior["khat"] = KHat(ll.khat, num_samples, KHAT_THRESHOLD).to_dict()
    else:
        unavailable["posterior.khat"] = f"k-hat needs at least 25 importance samples (S = {num_samples})"
    if gap and k <= 2:
        m = x.shape[0] if (k == 1 or gap_points is None) else max(2, gap_points)
        posterior["model_gaussian_gap"] = model_gaussian_gap(
            model, x[:m], log_p=None if ex is None else ex.per_point[:m])
    else:
        unavailable["posterior.model_gaussian_gap"] = (
            f"the optimal-Gaussian gap of the model's posterior needs quadrature over z: K <= 2 (K = {k})"
            if k > 2 else "not requested")
    report["posterior"] = posterior
    seconds["posterior"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report["mutual_information"] = mutual_information(model, x, keys["mi"]).to_dict() if mi else None
    if not mi:
        unavailable["mutual_information"] = "not requested"
    seconds["mutual_information"] = time.perf_counter() - t0
    if per_point:
        report["per_point"] = {"log_p": [float(v) for v in best], "elbo": [float(v) for v in elbo]}
    report["unavailable"] = unavailable
    report["seconds"] = {name: round(v, 3) for name, v in seconds.items()}
    return report


def model_gaussian_gap(
    model: Any, x: np.ndarray, *, log_p: np.ndarray | None = None, threshold: float = GAP_THRESHOLD
) -> dict[str, Any]:
    """How far the model's own posterior is from the closest mean-field Gaussian, per point (``K <= 2``).

    ``gap(x_i) = log p_theta(x_i) - ELBO*(x_i) = min_N KL(N || p_theta(z|x_i))``, the smallest
    posterior-matching cost any (mean-field) Gaussian encoder pays at ``x_i``: the paper's condition Cx1
    measured on the model.
    ``K = 1``: :func:`vaefail.metrics.posterior.gaussian_gap`; ``K = 2``: the grid method of
    :func:`vaefail.metrics.optimal.optimal_bound` (``log_p``, the exact ``log p_theta(x_i)``, is reused when
    given). Returns the :meth:`~vaefail.metrics.posterior.GaussianGap.to_dict` summary (mean with standard
    error over points, median, 90th percentile, max, share of points above ``threshold`` nats) and
    ``method``.
    """
    k = int(model.latent_dim)
    if k == 1:
        found = gaussian_gap(model, x, threshold=threshold, newton_nodes=101, eval_nodes=801)
        method = "grid (K = 1, Newton from grid starts)"
    elif k == 2:
        opt = optimal_bound(model, x, method="grid", log_p=log_p)
        found = GaussianGap(per_point=opt.gap, mean=opt.mean, std=opt.std, log_p=opt.log_p,
                            threshold=threshold)
        method = opt.method
    else:
        raise ConfigError(f"the optimal-Gaussian gap needs quadrature over z: K <= 2 (K = {k})")
    return {**found.to_dict(), "method": method}


def data_evaluation_table(report: dict[str, Any], title: str | None = None) -> Table:
    """A Rich table of an :func:`evaluate_data_run` report, then one row per unavailable section."""
    run = report["run"]
    table = Table(
        title=title or (f"{run['data']} (no ground truth) {run['objective']} K={run['latent_dim']} "
                        f"seed={run['seed']}: {run['split']} split, n={run['n']}, S={run['num_samples']}"),
        title_justify="left",
    )
    for col in ("section", "metric", "value", "note"):
        table.add_column(col, justify="right" if col == "value" else "left")

    def row(section: str, metric: str, value: str, note: str = "") -> None:
        table.add_row(Text(section), Text(metric), Text(value), Text(note))

    units = "standardised units" if run["standardised"] else "the file's units"
    lik = report["likelihood"]
    un = report["unavailable"]
    row("likelihood", "ELBO", _est(lik["elbo"]), f"nats/point ({units}), higher is better")
    row("", "log p_theta(x), IS", _est(lik["log_p_is"]),
        f"MC s.e. {_num(lik['log_p_is_mc_stderr'])}, mean ESS {_num(lik['ess_mean'], 1)}")
    row("", "log p_theta(x), exact", _est(lik["log_p_exact"]), un.get("likelihood.log_p_exact", "quadrature"))
    row("", "log p_theta(x) - ELBO", _est(lik["posterior_gap"]),
        f"the model's own posterior gap E KL(q || p_theta(z|x)), by {lik['posterior_gap_method']}")
    row("", "sigma_eps", _num(run["sigma_eps"]), "learned" if run["learn_sigma"] else "fixed")
    post = report["posterior"]
    kh = post["khat"]
    row("posterior", f"share k-hat > {KHAT_THRESHOLD}", "n/a" if kh is None else _num(kh["share_above"], 3),
        un.get("posterior.khat", "") if kh is None else
        f"median {_num(kh['median'], 2)}, 90% {_num(kh['q90'], 2)}, max {_num(kh['max'], 2)}")
    g = post["model_gaussian_gap"]
    row("", "model posterior: Gaussian gap", "n/a" if g is None else _est(g["gap"]),
        un.get("posterior.model_gaussian_gap", "") if g is None else
        f"min_N KL(N || p_theta(z|x)); share > {g['threshold']}: {_num(g['share_above'], 3)}")
    mi = report["mutual_information"]
    if mi is None:
        row("information", "I(x; z_i)", "n/a", un.get("mutual_information", ""))
    else:
        for i, est in enumerate(mi["per_dim"]):
            row("information" if i == 0 else "", f"I(x; z_{i + 1})", _est(est),
                f"leave-one-out {_num(mi['per_dim_loo'][i])}")
        row("", "active units", f"{mi['active_units']} / {len(mi['per_dim'])}",
            f"Var_x E[z_i|x] > {_num(mi['active_threshold'], 2)}")
    for i, (name, reason) in enumerate(sorted(UNAVAILABLE.items())):
        row("unavailable" if i == 0 else "", name, "n/a", reason)
    return table
