"""Every metric that applies to one fitted run, as a JSON-ready dict and a Rich table.

:func:`evaluate_run` takes anything shaped like a :class:`vaefail.results.FitResult` (``config``, ``model``,
``benchmark``, ``splits()``, ``summary``) - it does not import the training layer - and returns a nested
dict of floats, lists, strings, booleans and ``None``. A metric that does not apply to the run (e.g. the
exact posterior KL for ``K = 2``) is ``None`` in the report and its reason is listed under
``"not_applicable"``. :func:`evaluation_table` renders the dict.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Collection
from typing import Any

import jax
import numpy as np
from rich.table import Table
from rich.text import Text
from scipy.stats import spearmanr

from vaefail.errors import ConfigError
from vaefail.metrics._stats import Estimate, check_x, finite
from vaefail.metrics.curves import curve_distance, passes_through
from vaefail.metrics.flow import flow_mutual_information, flow_posterior_kl, is_flow, posterior_mean
from vaefail.metrics.information import mutual_information
from vaefail.metrics.likelihood import exact_log_likelihood, log_likelihood
from vaefail.metrics.optimal import BoundDecomposition, OptimalBound, decompose, optimal_bound, optimal_only
from vaefail.metrics.pareto import KHAT_THRESHOLD
from vaefail.metrics.posterior import GAP_THRESHOLD, KHat, gaussian_gap, posterior_kl
from vaefail.metrics.split import elbo_split, truth_comparison

#: Sections of :func:`evaluate_run` that can be left out: mutual information, posterior quality
#: (exact KL and k-hat), the Gaussian gaps of the true and the learned posterior, and the optimal-Gaussian
#: bounds with the three-way split of -ELBO (the costliest for K >= 2).
OPTIONAL_SECTIONS = ("mutual_information", "posterior", "gaps", "bounds")

#: Points of the split on which ``ELBO*`` is computed for ``K >= 2`` (per-point optimisation is costly);
#: ``K = 1`` uses every point.
BOUND_POINTS = 500

#: Known self-crossings of benchmark curves (data-space points the true curve passes through twice).
CROSSINGS: dict[str, tuple[float, ...]] = {"figure8": (0.0, 0.0)}


def evaluation_points(result: Any, split: str, max_points: int | None) -> np.ndarray:
    """The points a run is evaluated on: the first ``max_points`` (all when ``None``) of its ``split``
    (``"train"``, ``"val"`` or ``"test"``), checked against the data dimension; shape ``(n, D)``.

    Shared by :func:`evaluate_run` and the truth-free
    :func:`vaefail.metrics.nogroundtruth.evaluate_data_run`, so both evaluate the same points.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
    x = check_x(getattr(result.splits(), split).x, result.benchmark.x_dim, what=f"{split} data")
    if max_points is not None:
        if max_points < 2:
            raise ConfigError(f"max_points must be >= 2, got {max_points}")
        x = x[:max_points]
    return x


def evaluate_run(
    result: Any,
    key: jax.Array,
    *,
    num_samples: int = 1000,
    split: str = "test",
    max_points: int | None = None,
    elbo_samples: int = 100,
    truth_model: Any = None,
    gap_threshold: float = GAP_THRESHOLD,
    khat_threshold: float = KHAT_THRESHOLD,
    crossing_radius: float | None = None,
    sections: Collection[str] | None = None,
    bound_points: int | None = BOUND_POINTS,
) -> dict[str, Any]:
    """All metrics of the selected model of a run, on one of its data splits.

    Sections of the returned dict:

    - ``run``: what was evaluated (benchmark, objective, ``K``, seed, split, number of points, samples).
    - ``likelihood``: mean ``ELBO``, importance-sampled ``log p_theta(x)`` (``S = num_samples``) with its
      data standard error and Monte-Carlo standard error and mean ESS, exact ``log p_theta(x)`` by
      quadrature (``K <= 2``), the paired difference IS - exact, and the exact ``log p_gt(x)``.
    - ``split``: MLEO and PMO with standard errors (:func:`vaefail.metrics.split.elbo_split`).
    - ``mutual_information``: ``I(x; z_i)`` per dimension, their average, ``I(x; z)``, active units.
    - ``posterior``: exact ``KL(q || p_theta(z|x))`` (``K = 1``) and Pareto k-hat (any ``K``).
    - ``failure``: the true posterior's Gaussian gap (condition Cx1/Cz1), the learned model's own gap
      (``K = 1``), the truth-vs-learned ELBO comparison (from ``truth_model`` if given, else from the
      run's summary when it was fitted with the truth), the curve distance (``K = 1``) and, for
      benchmarks with a known self-crossing, whether the learned curve passes through it.
    - ``bounds``: the optimal-Gaussian bound ``ELBO*`` and ``-ELBO = -log p + approximation gap +
      amortisation gap`` (:mod:`vaefail.metrics.optimal`) for the model and, from the benchmark's exact
      posterior, for the truth (its amortisation gap needs ``truth_model``); the paired difference of
      the two ``ELBO*`` and whether the truth is the better (``truth_is_better``: ``True``/``False``
      beyond two standard errors, else ``None``). For ``K >= 2`` on the first ``bound_points`` points.
    - ``not_applicable``: ``{metric: reason}`` for every metric reported as ``None``.
    - ``seconds``: wall time per section.

    Parameters
    ----------
    result
        A fitted run (``FitResult`` or anything with ``config``, ``model``, ``benchmark``, ``splits()``,
        ``summary``).
    key
        PRNG key; each section uses its own ``fold_in``.
    num_samples
        Importance samples per point for ``log p_theta`` and k-hat.
    split
        ``"test"``, ``"val"`` or ``"train"``.
    max_points
        Evaluate on the first ``max_points`` points of the split only (default: all).
    elbo_samples
        Monte-Carlo samples per point for the ELBO's reconstruction term.
    truth_model
        The ground-truth model with its best encoder (``vaefail.mfg.truth_model``), to compare
        ELBOs point by point; optional.
    gap_threshold, khat_threshold
        Thresholds of the "share above" summaries.
    crossing_radius
        Radius for the crossing check (default ``sigma_eps / 4``).
    sections
        Optional sections to compute, a subset of :data:`OPTIONAL_SECTIONS` (default: all).
        Likelihood, ELBO split, truth comparison and curves are always computed; a section left out is
        ``None`` with the reason "not requested" under ``not_applicable``.
    bound_points
        Points (the first of the split) for ``ELBO*`` when ``K >= 2``; ``None``: all.
    """
    wanted = set(OPTIONAL_SECTIONS if sections is None else sections)
    if wanted - set(OPTIONAL_SECTIONS):
        raise ConfigError(
            f"unknown sections {sorted(wanted - set(OPTIONAL_SECTIONS))}; known: {list(OPTIONAL_SECTIONS)}"
        )
    model, bench, config = result.model, result.benchmark, result.config
    x = evaluation_points(result, split, max_points)
    k = int(model.latent_dim)
    keys = {name: jax.random.fold_in(key, i) for i, name in enumerate(
        ["is", "split", "mi", "truth", "gap", "bounds"])}
    na: dict[str, str] = {}
    seconds: dict[str, float] = {}
    summary = dict(getattr(result, "summary", {}) or {})
    report: dict[str, Any] = {
        "run": {
            "benchmark": config.benchmark,
            "benchmark_params": bench.params(),
            "objective": config.objective,
            "latent_dim": k,
            "true_latent_dim": int(bench.latent_dim),
            "sigma_eps": finite(model.sigma),
            "seed": int(config.seed),
            "selected_restart": summary.get("selected"),
            "selected_start": summary.get("start"),
            "split": split,
            "n": int(x.shape[0]),
            "num_samples": int(num_samples),
        }
    }

    # ---------------------------------------------------------------- likelihood
    t0 = time.perf_counter()
    log_p_true = np.asarray(bench.log_prob(x, _z_grid(bench)), np.float64)
    ll = log_likelihood(model, x, keys["is"], num_samples,
                        pareto_k=num_samples >= 21 and "posterior" in wanted)
    exact = None
    if k <= 2:
        exact = exact_log_likelihood(model, x)
    else:
        na["likelihood.log_p_exact"] = f"quadrature needs K <= 2 (K = {k})"
    report["likelihood"] = {
        "log_p_is": Estimate.of(ll.per_point).to_dict(),
        "log_p_is_mc_stderr": finite(ll.mc_stderr),
        "ess_mean": finite(np.mean(ll.ess)),
        "log_p_exact": None if exact is None else Estimate.of(exact.per_point).to_dict(),
        "is_minus_exact": None if exact is None else Estimate.of(ll.per_point - exact.per_point).to_dict(),
        "log_p_true": Estimate.of(log_p_true).to_dict(),
    }
    seconds["likelihood"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- MLEO / PMO
    t0 = time.perf_counter()
    best = exact.per_point if exact is not None else ll.per_point
    split_terms = elbo_split(
        model, x, keys["split"], log_p_true=log_p_true, log_p_model=best, elbo_samples=elbo_samples
    )
    report["likelihood"]["elbo"] = Estimate.of(split_terms.elbo).to_dict()
    report["split"] = split_terms.to_dict()
    report["split"]["method"] = (
        "quadrature" if exact is not None else f"importance sampling (S={num_samples})"
    )
    seconds["split"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- mutual information
    t0 = time.perf_counter()
    flow = is_flow(model)
    report["run"]["encoder"] = "flow" if flow else "gaussian"
    if "mutual_information" not in wanted:
        report["mutual_information"] = None
    elif flow:
        report["mutual_information"] = flow_mutual_information(model, x, keys["mi"])
        if k > 1:
            na["mutual_information.per_dim"] = "a coupling flow's marginals q(z_i|x) are not closed-form"
    else:
        report["mutual_information"] = mutual_information(model, x, keys["mi"]).to_dict()
    seconds["mutual_information"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- posterior quality
    t0 = time.perf_counter()
    posterior: dict[str, Any] = {"kl_q_to_posterior": None, "khat": None}
    if "posterior" not in wanted:
        na["posterior"] = "not requested (sections)"
    elif k == 1 and exact is not None:
        kl = (flow_posterior_kl(model, x, log_p_model=exact.per_point) if flow
              else posterior_kl(model, x, log_p_model=exact.per_point))
        posterior["kl_q_to_posterior"] = Estimate.of(kl).to_dict()
    else:
        na["posterior.kl_q_to_posterior"] = f"exact posterior KL is implemented for K = 1 (K = {k})"
    if ll.khat is not None and "posterior" in wanted:
        posterior["khat"] = KHat(ll.khat, num_samples, khat_threshold).to_dict()
    elif "posterior" in wanted:
        na["posterior.khat"] = f"k-hat needs at least 21 importance samples (S = {num_samples})"
    report["posterior"] = posterior
    seconds["posterior"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- optimal-Gaussian bounds
    t0 = time.perf_counter()
    true_gap = model_gap = None
    if "gaps" in wanted or "bounds" in wanted:
        true_gap = _truth_gap(bench, x, gap_threshold)
        if k == 1:
            model_gap = gaussian_gap(model, x, threshold=gap_threshold, newton_nodes=101, eval_nodes=801)
    if "bounds" in wanted:
        report["bounds"] = _bounds_section(model, truth_model, x, keys["bounds"], exact, true_gap, model_gap,
                                           bound_points, na)
    else:
        report["bounds"] = None
        na["bounds"] = "not requested (sections)"
    seconds["bounds"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- failure conditions
    t0 = time.perf_counter()
    failure: dict[str, Any] = {}
    failure["true_posterior_gap"] = None
    if "gaps" in wanted and true_gap is not None:
        failure["true_posterior_gap"] = true_gap.to_dict()
    else:
        na["failure.true_posterior_gap"] = na["failure.model_posterior_gap"] = "not requested (sections)"
    if k == 1 and "gaps" in wanted and model_gap is not None:
        failure["model_posterior_gap"] = model_gap.to_dict()
    else:
        failure["model_posterior_gap"] = None
        na.setdefault("failure.model_posterior_gap",
                      f"the Gaussian gap of the model's posterior needs K = 1 (K = {k})")
    failure["truth_comparison"] = _truth_section(result, model, truth_model, x, keys["truth"], log_p_true,
                                                 num_samples, elbo_samples, summary, split, na)
    if k == 1:
        failure["curve"] = curve_distance(model, bench).to_dict()
    else:
        failure["curve"] = None
        na["failure.curve"] = f"the curve distance compares 1-D latents (K = {k})"
    crossing = CROSSINGS.get(config.benchmark)
    if crossing is not None and k == 1:
        radius = crossing_radius if crossing_radius is not None else bench.sigma_eps / 4
        failure["crossing"] = {
            "learned": passes_through(model, crossing, radius).to_dict(),
            "truth": passes_through(bench, crossing, radius).to_dict(),
        }
    else:
        failure["crossing"] = None
        na["failure.crossing"] = (
            f"{config.benchmark} has no known self-crossing" if crossing is None
            else f"the crossing check needs a 1-D latent (K = {k})"
        )
    failure["latent_agreement"] = _latent_agreement(model, result, split, x.shape[0], na)
    report["failure"] = failure
    seconds["failure"] = time.perf_counter() - t0

    report["not_applicable"] = na
    report["seconds"] = {name: round(v, 3) for name, v in seconds.items()}
    return report


#: The truth's Gaussian gaps of the last few test sets: every configuration of a benchmark and repetition
#: evaluates on the same points, and the truth's gap depends on nothing else.
_TRUTH_GAPS: dict[tuple[str, bytes, float], Any] = {}


def _truth_gap(bench: Any, x: np.ndarray, threshold: float) -> Any:
    """:func:`~vaefail.metrics.posterior.gaussian_gap` of the benchmark's truth at ``x``, computed once per
    process for each (benchmark and parameters, points, threshold)."""
    key = (repr(bench), hashlib.sha256(np.ascontiguousarray(x, np.float64).tobytes()).digest(), threshold)
    if key not in _TRUTH_GAPS:
        if len(_TRUTH_GAPS) >= 8:
            _TRUTH_GAPS.pop(next(iter(_TRUTH_GAPS)))
        _TRUTH_GAPS[key] = gaussian_gap(bench, x, threshold=threshold)
    return _TRUTH_GAPS[key]


def _bounds_section(
    model: Any, truth_model: Any, x: np.ndarray, key: jax.Array, exact: Any, true_gap: Any, model_gap: Any,
    bound_points: int | None, na: dict[str, str],
) -> dict[str, Any]:
    """The ``bounds`` section of :func:`evaluate_run` (its docstring)."""
    k = int(model.latent_dim)
    m = x.shape[0] if (k == 1 or bound_points is None) else min(x.shape[0], max(2, bound_points))
    xb = x[:m]
    k_model, k_truth = jax.random.split(key)
    if model_gap is not None:
        opt = OptimalBound.from_gap(model_gap, "grid (K = 1, Newton from grid starts)")
    else:
        log_p = None if exact is None else exact.per_point[:m]
        opt = optimal_bound(model, xb, k_model, log_p=log_p)
    learned = decompose(model, xb, k_model, optimal=opt)
    truth_opt = OptimalBound.from_gap(true_gap, "grid (K = 1, Newton from grid starts)", m)
    truth_dec: BoundDecomposition | None = None
    if truth_model is not None:
        truth_dec = decompose(truth_model, xb, k_truth, optimal=truth_opt)
    else:
        na["bounds.truth.amortisation_gap"] = (
            "needs the ground-truth model with its trained encoder (fit with --truth, or pass truth_model)")
    diff = truth_opt.elbo_star - opt.elbo_star
    d = Estimate.of(diff)
    mc = math.hypot(opt.mc_stderr, truth_opt.mc_stderr)
    se = math.hypot(d.stderr, mc)
    verdict = True if d.mean > 2 * se else (False if d.mean < -2 * se else None)
    diff_dict = d.to_dict()
    diff_dict["mc_stderr"] = finite(mc)
    return {
        "n": int(m),
        "model": learned.to_dict(),
        "truth": truth_dec.to_dict() if truth_dec is not None else optimal_only(truth_opt),
        "elbo_star_truth_minus_model": diff_dict,
        "truth_is_better": verdict,
    }


def _truth_section(
    result: Any, model: Any, truth_model: Any, x: np.ndarray, key: jax.Array, log_p_true: np.ndarray,
    num_samples: int, elbo_samples: int, summary: dict[str, Any], split: str, na: dict[str, str],
) -> dict[str, Any] | None:
    if truth_model is not None:
        out = truth_comparison(model, truth_model, x, key, log_p_true=log_p_true, num_samples=num_samples,
                               elbo_samples=elbo_samples)
        out["source"] = "truth_model"
        return out
    if split == "test" and "truth_test_elbo" in summary and "test_elbo" in summary:
        learned, truth = float(summary["test_elbo"]), float(summary["truth_test_elbo"])
        return {
            "source": "run summary (no standard errors)",
            "elbo_learned": {"mean": finite(learned)},
            "elbo_truth": {"mean": finite(truth)},
            "elbo_truth_minus_learned": {"mean": finite(truth - learned)},
            "truth_beats_learned": truth > learned,
        }
    na["failure.truth_comparison"] = (
        "needs the ground-truth model with its best encoder: fit with truth=True (`--truth`) "
        "or pass truth_model"
    )
    return None


def _latent_agreement(
    model: Any, result: Any, split: str, n: int, na: dict[str, str]
) -> dict[str, Any] | None:
    """``|Spearman rho|`` between the encoder mean ``E_q[z_1|x]`` and the true latent ``z``, for ``K = 1``.

    Rank correlation is invariant to the monotone reparameterisations of ``z`` that the data cannot
    identify (sign, warping); 1 means the learned code orders the points as the true one does, 0 that it
    is unrelated to it (as for ``quadratic``, where ``x`` depends on ``|t - 1/2|`` only, so no model can
    recover the sign of ``t - 1/2``).
    """
    if model.latent_dim != 1:
        na["failure.latent_agreement"] = f"the rank agreement compares 1-D latents (K = {model.latent_dim})"
        return None
    data = getattr(result.splits(), split)
    if is_flow(model):  # E_q[z|x] by Monte Carlo: the flow's base mean is not its mean
        mu = posterior_mean(model, data.x[:n], jax.random.PRNGKey(0))
    else:
        mu, _ = jax.vmap(model.encoder)(jax.numpy.asarray(data.x[:n], dtype=jax.numpy.float32))
    rho = spearmanr(np.asarray(mu[:, 0], np.float64), data.z[:n, 0]).statistic
    return {"spearman_abs": finite(abs(rho)), "n": int(n)}


def _z_grid(bench: Any) -> np.ndarray:
    """A quadrature grid that is exact for the benchmark and cheaper than the default (see its docs)."""
    return np.linspace(-8.0, 8.0, 8001 if bench.name == "clusters" else 2001)


# ------------------------------------------------------------------------------------------ rendering


def _est(d: dict[str, Any] | None, digits: int = 4) -> str:
    if d is None:
        return "n/a"
    mean = d.get("mean")
    if mean is None:
        return "n/a"
    se = d.get("stderr")
    if se is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def evaluation_table(report: dict[str, Any], title: str | None = None) -> Table:
    """A Rich table of an :func:`evaluate_run` report: metric, value (mean ± standard error), note."""
    run = report["run"]
    table = Table(
        title=title or (
            f"{run['benchmark']} {run['objective']}"
            f"{' (flow encoder)' if run.get('encoder') == 'flow' else ''} "
            f"K={run['latent_dim']} seed={run['seed']}: "
            f"{run['split']} split, n={run['n']}, S={run['num_samples']}"
        ),
        title_justify="left",
    )
    table.add_column("section")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    na = report.get("not_applicable", {})

    def row(section: str, metric: str, value: str, note: str = "") -> None:
        # plain Text: the notes contain brackets such as E[z_i|x] that Rich would read as markup
        table.add_row(Text(section), Text(metric), Text(value), Text(note))

    lik = report["likelihood"]
    row("likelihood", "ELBO", _est(lik.get("elbo")), "nats/point, higher is better")
    row("", "log p_theta(x), IS", _est(lik["log_p_is"]),
        f"MC s.e. {_num(lik['log_p_is_mc_stderr'])}, mean ESS {_num(lik['ess_mean'], 1)}")
    row("", "log p_theta(x), exact", _est(lik["log_p_exact"]), na.get("likelihood.log_p_exact", "quadrature"))
    row("", "IS - exact", _est(lik["is_minus_exact"]), "paired; IS is biased low")
    row("", "log p_gt(x)", _est(lik["log_p_true"]), "exact (benchmark quadrature)")
    sp = report["split"]
    row("ELBO split", "MLEO = KL(p_gt || p_theta)", _est(sp["mleo"]), f"log p_theta by {sp['method']}")
    row("", "PMO = E KL(q || p_theta(z|x))", _est(sp["pmo"]), "log p_theta(x) - ELBO(x)")
    mi = report["mutual_information"] or {"per_dim": []}
    for i, est in enumerate(mi["per_dim"]):
        lo, hi = est["ci"]
        row("information" if i == 0 else "", f"I(x; z_{i + 1})", _est(est),
            f"95% CI [{_num(lo)}, {_num(hi)}]; leave-one-out {_num(mi['per_dim_loo'][i])}")
    if report["mutual_information"] is not None and not mi["per_dim"]:
        row("information", "I(x; z_i)", "n/a", na.get("mutual_information.per_dim", ""))
    if mi.get("total") is not None:
        row("", "avg_i I(x; z_i)", _est(mi["average"]), "the paper's Table 1 quantity")
        row("", "I(x; z)", _est(mi["total"]),
            f"leave-one-out {_num(mi['total_loo'])}; cap log M = {_num(mi['log_mixture_size'], 2)}")
        row("", "active units", f"{mi['active_units']} / {len(mi['activity'])}",
            "Var_x E[z_i|x] > " + _num(mi["active_threshold"], 2) + ": "
            + ", ".join(_num(a, 3) for a in mi["activity"]))
    else:
        row("information", "I(x; z_i)", "n/a", "not requested")
    post = report["posterior"]
    row("posterior", "KL(q || p_theta(z|x))", _est(post["kl_q_to_posterior"]),
        na.get("posterior.kl_q_to_posterior", "exact, per point, averaged"))
    kh = post["khat"]
    if kh is None:
        row("", "Pareto k-hat", "n/a", na.get("posterior.khat", ""))
    else:
        row("", f"share k-hat > {kh['threshold']}", _num(kh["share_above"], 3),
            f"median {_num(kh['median'], 2)}, 90% {_num(kh['q90'], 2)}, max {_num(kh['max'], 2)}")
    bounds = report.get("bounds")
    if bounds is None:
        row("bounds", "-ELBO* and its split", "n/a", na.get("bounds", ""))
    else:
        for who in ("model", "truth"):
            part = bounds[who]
            first = True
            for name, label in (("neg_log_p", "-log p"), ("neg_elbo", "-ELBO"), ("neg_elbo_star", "-ELBO*"),
                                ("approximation_gap", "approximation gap"),
                                ("amortisation_gap", "amortisation gap")):
                note = part["method"] if first else ""
                if part.get(name) is None:
                    note = na.get(f"bounds.{who}.{name}", "")
                row("bounds" if who == "model" and first else "", f"{who}: {label}", _est(part.get(name)),
                    note)
                first = False
        verdict = {True: "the truth's optimal bound is higher", False: "the model's optimal bound is higher",
                   None: "no significant difference"}[bounds["truth_is_better"]]
        row("", "ELBO* truth - model", _est(bounds["elbo_star_truth_minus_model"]),
            f"{verdict} (n = {bounds['n']})")
    fail = report["failure"]
    gap = fail["true_posterior_gap"]
    if gap is None:
        row("failure", "true posterior: Gaussian gap", "n/a", na.get("failure.true_posterior_gap", ""))
    else:
        row("failure", "true posterior: Gaussian gap", _est(gap["gap"]),
            f"min_N KL(N || p_gt(z|x)); share > {gap['threshold']}: {_num(gap['share_above'], 3)}")
    mgap = fail["model_posterior_gap"]
    if mgap is None:
        row("", "model posterior: Gaussian gap", "n/a", na.get("failure.model_posterior_gap", ""))
    else:
        row("", "model posterior: Gaussian gap", _est(mgap["gap"]),
            f"min_N KL(N || p_theta(z|x)); share > {mgap['threshold']}: {_num(mgap['share_above'], 3)}")
    tc = fail["truth_comparison"]
    if tc is None:
        row("", "ELBO truth - learned", "n/a", na.get("failure.truth_comparison", ""))
    else:
        verdict = tc["truth_beats_learned"]
        note = {True: "the truth scores higher", False: "the learned model beats the truth",
                None: "no significant difference"}[verdict]
        row("", "ELBO truth - learned", _est(tc["elbo_truth_minus_learned"]), f"{note} ({tc['source']})")
    curve = fail["curve"]
    if curve is None:
        row("", "curve distance", "n/a", na.get("failure.curve", ""))
    else:
        row("", "curve distance (symmetric)", _num(curve["symmetric"]),
            f"= {_num(curve['symmetric_over_sigma'], 2)} sigma_eps; learned->true "
            f"{_num(curve['learned_to_true'])}, true->learned {_num(curve['true_to_learned'])}")
    agree = fail.get("latent_agreement")
    row("", "|rank corr(E_q z, true z)|", "n/a" if agree is None else _num(agree["spearman_abs"], 3),
        na.get("failure.latent_agreement", "1 = the true ordering of z; 0 = unrelated"))
    cross = fail["crossing"]
    if cross is None:
        row("", "passes the crossing", "n/a", na.get("failure.crossing", ""))
    else:
        lc = cross["learned"]
        row("", "passes the crossing", _num(lc["passes"]),
            f"min distance to {tuple(lc['point'])}: {_num(lc['distance'])} (radius {_num(lc['radius'], 3)})")
    return table
