"""Metrics of a fitted M2 against a labelled benchmark's exact truth.

Everything takes a model (one restart), the benchmark and data, and returns numbers; nothing here imports
the training layer. Exact model densities use quadrature over the latent (``K <= 2``):

.. math:: \\log p_\\theta(x \\mid y) = \\log \\int N(x; f_\\theta(y, z), \\sigma^2 I)\\, N(z; 0, I)\\, dz,

on a uniform grid over ``[-bound, bound]^K`` with trapezoid weights (:func:`model_class_log_prob`).

The metrics (see :func:`evaluate_semisupervised` for the full report):

- classification: accuracy of :math:`\\arg\\max_y q(y|x)` and of the model's own generative classifier
  :math:`\\arg\\max_y \\pi_y p_\\theta(x|y)` against the exact Bayes-optimal accuracy;
- :math:`KL(p_{gt}(x|y) \\| p_\\theta(x|y))` per class (:func:`class_conditional_kl`);
- functional collapse (:func:`collapse_score`): the Jensen-Shannon divergence between the learned
  class-conditionals relative to the truth's;
- counterfactual error (:func:`counterfactual_error`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from vaefail.benchmarks.labelled import LabelledBenchmark, LabelledDataset
from vaefail.errors import require
from vaefail.metrics._stats import check_x
from vaefail.quadrature import box_grid, gaussian_log_marginal
from vaefail.semisupervised.model import M2


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@eqx.filter_jit
def _decode_class(model: M2, y: jax.Array, z: jax.Array) -> jax.Array:
    return jax.vmap(model.decode)(y, z)


def decode_np(model: M2, y: Any, z: Any) -> np.ndarray:
    """:math:`f_\\theta(y, z)` in float64 for labels ``y`` (scalar or ``(m,)``) and ``z`` ``(m, K)``."""
    z = np.asarray(z, dtype=np.float32).reshape(-1, model.latent_dim)
    y = np.broadcast_to(np.asarray(y, dtype=np.int32), (z.shape[0],))
    return np.asarray(_decode_class(model, jnp.asarray(y), jnp.asarray(z)), np.float64)


def decoder_curves(model: M2, z: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The learned decoder curves :math:`z \\mapsto f_\\theta(y, z)` of every class, for plotting.

    Parameters
    ----------
    model
        An M2 with ``K = 1`` (for ``K > 1`` the other coordinates are set to 0).
    z
        Latent values, shape ``(m,)`` (default: 401 prior quantiles ``Phi^{-1}((j + 1/2) / 401)``).

    Returns
    -------
    z, curves
        ``z`` of shape ``(m,)`` and ``curves`` of shape ``(C, m, D)``, float64. The benchmark's true curves
        are ``benchmark.f_gt_np(y, z[:, None])``.
    """
    from scipy.special import ndtri

    z = ndtri((np.arange(401) + 0.5) / 401) if z is None else np.asarray(z, dtype=np.float64).ravel()
    zk = np.zeros((z.size, model.latent_dim))
    zk[:, 0] = z
    return z, np.stack([decode_np(model, c, zk) for c in range(model.n_classes)])


def model_class_log_prob(
    model: M2, x: Any, *, grid_size: int | None = None, bound: float = 7.0
) -> np.ndarray:
    """Exact :math:`\\log p_\\theta(x \\mid y)` for every class by quadrature over z (``K <= 2``).

    The decoder is evaluated in float32 on a uniform grid over ``[-bound, bound]^K`` (default 4001 nodes
    for ``K = 1``, 301 x 301 for ``K = 2``, as :func:`vaefail.metrics.exact_log_likelihood`) and summed with
    log-sum-exp in float64. A decoder changing faster than the grid spacing needs a larger ``grid_size``;
    :func:`evaluate_semisupervised` reports the change under a doubled grid.

    Returns
    -------
    np.ndarray
        Shape ``(n, C)``.
    """
    xs = check_x(x, model.x_dim)
    nodes, log_w = box_grid(model.latent_dim, grid_size, bound)
    sigma = float(model.sigma)
    return np.stack([gaussian_log_marginal(xs, decode_np(model, c, nodes), sigma, log_w)
                     for c in range(model.n_classes)], axis=1)


def sample_model(model: M2, key: jax.Array, y: int, n: int) -> np.ndarray:
    """``n`` draws from :math:`p_\\theta(x \\mid y)`: :math:`z \\sim N(0, I)`,
    :math:`x = f_\\theta(y, z) + \\sigma\\epsilon`."""
    kz, ke = jax.random.split(key)
    z = np.asarray(jax.random.normal(kz, (n, model.latent_dim)), np.float64)
    eps = np.asarray(jax.random.normal(ke, (n, model.x_dim)), np.float64)
    return decode_np(model, y, z) + float(model.sigma) * eps


def sample_truth_class(benchmark: LabelledBenchmark, key: jax.Array, y: int, n: int) -> np.ndarray:
    """``n`` draws from :math:`p_{gt}(x \\mid y)`."""
    kz, ke = jax.random.split(key)
    z = np.asarray(jax.random.normal(kz, (n, 1)), np.float64)
    eps = np.asarray(jax.random.normal(ke, (n, benchmark.x_dim)), np.float64)
    return benchmark.f_gt_np(np.full(n, y), z) + benchmark.sigma_eps * eps


def classifier_log_probs(model: M2, x: Any) -> np.ndarray:
    """:math:`\\log q_\\phi(y \\mid x)`, shape ``(n, C)``."""
    xs = jnp.asarray(check_x(x, model.x_dim), jnp.float32)
    return np.asarray(_class_log_probs(model, xs), np.float64)


def encoder_means(model: M2, x: Any, y: Any) -> np.ndarray:
    """Mean of :math:`q(z \\mid x, y)` (:math:`q(z \\mid x)` for the mean-field family), shape ``(n, K)``;
    for a flow family the Monte-Carlo mean over :data:`FLOW_MEAN_DRAWS` fixed draws."""
    xs = jnp.asarray(check_x(x, model.x_dim), jnp.float32)
    ys = jnp.asarray(np.broadcast_to(np.asarray(y, np.int32), (xs.shape[0],)))
    return np.asarray(_encoder_means(model, xs, ys), np.float64)


@eqx.filter_jit
def _class_log_probs(model: M2, x: jax.Array) -> jax.Array:
    """Module-level and jitted, so every call with the same shapes reuses one compilation."""
    return jax.vmap(model.class_log_probs)(x)


#: Draws per point of the Monte-Carlo mean of a flow's :math:`q(z \\mid x, y)`.
FLOW_MEAN_DRAWS = 256


@eqx.filter_jit
def _encoder_means(model: M2, x: jax.Array, y: jax.Array) -> jax.Array:
    if not model.is_flow:
        return jax.vmap(lambda xi, yi: model.encode(xi, yi)[0])(x, y)
    # E_q[z | x, y] of a flow by Monte Carlo (fixed draws: deterministic), not its Gaussian base's mean
    eps = jax.random.normal(jax.random.PRNGKey(0), (FLOW_MEAN_DRAWS, model.latent_dim), x.dtype)
    return jax.vmap(lambda xi, yi: jnp.mean(model.sample_all(xi, eps)[0][yi], axis=0))(x, y)


def _js(log_p: list[np.ndarray]) -> tuple[float, float]:
    """Generalised Jensen-Shannon divergence with equal weights from samples.

    ``log_p[c]`` is ``(n_c, C)``: :math:`\\log p_{c'}(x)` for samples :math:`x \\sim p_c`. Returns
    :math:`JS = (1/C) \\sum_c E_{p_c}[\\log p_c(x) - \\log m(x)]`, :math:`m = (1/C) \\sum_{c'} p_{c'}`,
    and its Monte-Carlo standard error.
    """
    n_classes = len(log_p)
    means, variances = [], []
    for c, table in enumerate(log_p):
        term = table[:, c] - (logsumexp(table, axis=1) - math.log(n_classes))
        means.append(term.mean())
        variances.append(term.var(ddof=1) / term.size)
    return float(np.mean(means)), float(math.sqrt(sum(variances)) / n_classes)


@functools.lru_cache(maxsize=32)
def truth_separation(benchmark: LabelledBenchmark, n: int = 2000) -> tuple[float, float]:
    """The truth's Jensen-Shannon divergence between its class-conditionals and its standard error.

    ``n`` draws per class with the fixed key ``PRNGKey(20200714)`` (so it is a property of the benchmark,
    computed once per process and benchmark instance), densities by quadrature on the benchmark's grid.
    """
    keys = jax.random.split(jax.random.PRNGKey(20200714), benchmark.n_classes)
    return _js([benchmark.log_prob_by_class(sample_truth_class(benchmark, keys[i], i, n))
                for i in range(benchmark.n_classes)])


def collapse_score(
    model: M2, benchmark: LabelledBenchmark, key: jax.Array, *, n: int = 2000, grid_size: int | None = None
) -> dict[str, Any]:
    """Functional collapse: how different the learned class-conditionals are, relative to the truth.

    .. math:: \\text{score} = \\frac{JS(p_\\theta(x|0), \\ldots, p_\\theta(x|C-1))}
              {JS(p_{gt}(x|0), \\ldots, p_{gt}(x|C-1))}, \\qquad
              JS(p_0, \\ldots) = \\frac1C \\sum_c KL\\Big(p_c \\,\\Big\\|\\, \\frac1C \\sum_{c'} p_{c'}\\Big),

    the equal-weight Jensen-Shannon divergence (nats, at most :math:`\\log C`). Each expectation is a
    Monte-Carlo mean over ``n`` draws from the class-conditional, with the densities by quadrature over z
    (the truth's on the benchmark grid with a fixed key, :func:`truth_separation`; the model's by
    :func:`model_class_log_prob`). It compares
    *distributions* over x, so it does not depend on how z is parameterised: a sign flip or any
    monotone reparameterisation of z within a class changes neither the model's :math:`p_\\theta(x|y)`
    nor the score. 0 means full collapse (identical class-conditionals), 1 the truth's separation, above 1
    classes more separated than in the truth. Being a Monte-Carlo estimate, it can come out slightly
    negative near 0 (within ``score_stderr``).

    Also reported, as the picture the decoder curves give: ``decoder_gap``
    :math:`E_{z \\sim N(0,1)} \\lVert f_\\theta(0, z) - f_\\theta(1, z) \\rVert` and the truth's (this one
    *does* depend on the parameterisation).

    Returns
    -------
    dict
        ``score``, ``score_stderr`` (delta method), ``js_model``, ``js_model_stderr``, ``js_truth``,
        ``js_truth_stderr``, ``decoder_gap``, ``decoder_gap_truth``.
    """
    c = benchmark.n_classes
    require(model.n_classes == c, f"model has {model.n_classes} classes, the benchmark {c}")
    keys = jax.random.split(key, c + 1)
    model_tables = [model_class_log_prob(model, sample_model(model, keys[i], i, n), grid_size=grid_size)
                    for i in range(c)]
    js_m, se_m = _js(model_tables)
    js_t, se_t = truth_separation(benchmark, n)
    score = js_m / js_t
    # delta method for a ratio of independent estimates: Var(a/b) ~ (se_a^2 + (a/b)^2 se_b^2) / b^2
    score_se = math.sqrt(se_m**2 + score**2 * se_t**2) / js_t
    z = np.asarray(jax.random.normal(keys[-1], (n, model.latent_dim)), np.float64)
    gap = truth_gap = math.nan
    if c == 2:
        gap = float(np.mean(np.linalg.norm(decode_np(model, 0, z) - decode_np(model, 1, z), axis=1)))
        zt = z[:, :1]
        truth_gap = float(np.mean(np.linalg.norm(
            benchmark.f_gt_np(np.zeros(n, int), zt) - benchmark.f_gt_np(np.ones(n, int), zt), axis=1)))
    return {
        "score": score, "score_stderr": score_se, "js_model": js_m, "js_model_stderr": se_m,
        "js_truth": js_t, "js_truth_stderr": se_t, "decoder_gap": gap, "decoder_gap_truth": truth_gap,
    }


def class_conditional_kl(
    model: M2, benchmark: LabelledBenchmark, data: LabelledDataset, *, grid_size: int | None = None,
    model_table: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Per class, :math:`KL(p_{gt}(x|y) \\| p_\\theta(x|y)) = E_{p_{gt}(x|y)}[\\log p_{gt}(x|y)
    - \\log p_\\theta(x|y)]`.

    A Monte-Carlo mean over the points of ``data`` with label ``y`` (true labels), both densities exact by
    quadrature. Returns, per class, ``{"class", "kl", "stderr", "n"}``.
    """
    table = model_class_log_prob(model, data.x, grid_size=grid_size) if model_table is None else model_table
    truth = benchmark.log_prob_by_class(data.x)
    out = []
    for c in range(benchmark.n_classes):
        rows = data.y == c
        diff = truth[rows, c] - table[rows, c]
        se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.nan
        out.append({"class": c, "kl": float(diff.mean()) if diff.size else math.nan, "stderr": se,
                    "n": int(diff.size)})
    return out


def counterfactual_error(
    model: M2, benchmark: LabelledBenchmark, data: LabelledDataset, *, oracle_grid: np.ndarray | None = None
) -> dict[str, Any]:
    """Counterfactual error: change the label, keep the inferred latent, compare with the truth.

    For each test point :math:`(x, y, z_{true})` and each other label :math:`y' \\ne y`:
    :math:`\\hat z = E_{q}[z \\mid x, y]` (for the mean-field family :math:`E_q[z \\mid x]`), the model's
    counterfactual is :math:`f_\\theta(y', \\hat z)` and the true one :math:`f_{gt}(y', z_{true})`.

    *Allowing for the reparameterisation the model may choose.* With the prior fixed at
    :math:`N(0, I)`, the per-class latent maps that leave every :math:`p(x \\mid y)` unchanged are the
    symmetries of the prior; for ``K = 1`` and a curve traced once, these are :math:`z \\mapsto s_y z`,
    :math:`s_y \\in \\{+1, -1\\}`. Every truth :math:`f_{gt}(y, s_y z)` generates the same data, and its
    counterfactual of :math:`(x, y)` is :math:`f_{gt}(y', s_y s_{y'} z_{true})`; a global sign is
    irrelevant, so with two classes the single relative sign :math:`s = s_0 s_1` is chosen to minimise
    the mean error (one choice for the whole data set, not per point). ``error`` is that minimum:
    :math:`\\min_s \\text{mean}_i \\lVert f_\\theta(y'_i, \\hat z_i) - f_{gt}(y'_i, s\\, z_{true,i}) \\rVert`;
    ``error_by_sign`` gives both. A general monotone reparameterisation is *not* allowed, since it would
    change the class density (the prior is fixed), and would make any counterfactual along the curve
    "right". Baselines on the same points, with the same sign choice rule:

    - ``error_collapsed``: a perfect but fully collapsed model, which answers the point's own noise-free
      position :math:`f_{gt}(y, z_{true})`;
    - ``error_oracle``: the truth's decoder with the exact posterior mean
      :math:`E[z \\mid x, y]` (quadrature), the floor set by the noise.

    ``ratio`` = ``error / error_collapsed`` (0 is perfect, about 1 means no better than collapse). Errors
    are Euclidean distances in data units. For ``K > 1`` only the first latent coordinate of the truth
    is compared, and the signs act on the whole latent.
    """
    c = benchmark.n_classes
    require(model.n_classes == c, f"model has {model.n_classes} classes, the benchmark {c}")
    x, y, z = data.x, np.asarray(data.y), data.z[:, :1]
    n = x.shape[0]
    z_hat = encoder_means(model, x, y)
    if oracle_grid is None:
        oracle_grid = np.linspace(-8.0, 8.0, 4001)
    grid, dens = benchmark.posterior(x, y, z_grid=oracle_grid)
    z_oracle = np.trapezoid(dens * grid, grid, axis=1)[:, None]
    own = benchmark.f_gt_np(y, z)
    signs = [np.array((1,) + s) for s in itertools.product((1, -1), repeat=c - 1)]
    errors = {"model": [], "collapsed": [], "oracle": []}
    for s in signs:
        per = {k: np.zeros(n) for k in errors}
        for shift in range(1, c):
            y_cf = (y + shift) % c
            target = benchmark.f_gt_np(y_cf, (s[y] * s[y_cf])[:, None] * z)
            per["model"] += np.linalg.norm(decode_np(model, y_cf, z_hat) - target, axis=1)
            per["collapsed"] += np.linalg.norm(own - target, axis=1)
            per["oracle"] += np.linalg.norm(benchmark.f_gt_np(y_cf, z_oracle) - target, axis=1)
        for k in errors:
            errors[k].append(per[k] / (c - 1))
    means = {k: np.array([e.mean() for e in v]) for k, v in errors.items()}
    best = {k: int(np.argmin(v)) for k, v in means.items()}
    b = best["model"]
    per_point = errors["model"][b]
    result = {
        "error": float(means["model"][b]),
        "stderr": float(per_point.std(ddof=1) / math.sqrt(n)),
        "relative_sign": [int(v) for v in signs[b]],
        "error_collapsed": float(means["collapsed"][best["collapsed"]]),
        "error_oracle": float(means["oracle"][best["oracle"]]),
    }
    result["ratio"] = result["error"] / result["error_collapsed"]
    if c == 2:
        result["error_by_sign"] = {"same": float(means["model"][0]), "flipped": float(means["model"][1])}
    return result


def evaluate_semisupervised(
    model: M2, benchmark: LabelledBenchmark, data: LabelledDataset, key: jax.Array, *,
    collapse_samples: int = 2000, grid_size: int | None = None,
) -> dict[str, Any]:
    """Every metric of one M2 on a labelled data split, as a JSON-ready dict.

    Sections:

    - ``classification``: ``accuracy`` of :math:`\\arg\\max q(y|x)`, ``generative_accuracy`` of
      :math:`\\arg\\max_y \\pi_y p_\\theta(x|y)` (quadrature), the exact ``bayes_accuracy``, the Bayes rule's
      accuracy on these points (``bayes_rule_accuracy``), ``class_posterior_kl`` = mean
      :math:`KL(p_{gt}(y|x) \\| q(y|x))`, and the mean entropy of :math:`q(y|x)` (nats).
    - ``likelihood``: mean exact :math:`\\log p_\\theta(x)` and :math:`\\log p_{gt}(x)` (nats per point),
      and ``quadrature_check``: the largest change of :math:`\\log p_\\theta(x|y)` on 200 points when the
      grid is refined about 2x (small means the quadrature has converged).
    - ``class_conditional_kl``: per class, :func:`class_conditional_kl`.
    - ``collapse``: :func:`collapse_score`.
    - ``counterfactual``: :func:`counterfactual_error`.
    """
    require(isinstance(data, LabelledDataset), "data must be a LabelledDataset (x, z, y)")
    table = model_class_log_prob(model, data.x, grid_size=grid_size)
    log_pi = np.log(benchmark.class_prior())
    truth_table = benchmark.log_prob_by_class(data.x)
    truth_joint = truth_table + log_pi
    p_true = np.exp(truth_joint - logsumexp(truth_joint, axis=1, keepdims=True))
    log_q = classifier_log_probs(model, data.x)
    q = np.exp(log_q)
    y = np.asarray(data.y)
    nodes = len(box_grid(model.latent_dim, grid_size, 7.0)[0]) ** (1.0 / model.latent_dim)
    fine = model_class_log_prob(model, data.x[:200], grid_size=int(2 * round(nodes)) - 1)
    classification = {
        "accuracy": float(np.mean(np.argmax(log_q, axis=1) == y)),
        "generative_accuracy": float(np.mean(np.argmax(table + log_pi, axis=1) == y)),
        "bayes_accuracy": float(benchmark.bayes_accuracy()),
        "bayes_rule_accuracy": float(np.mean(np.argmax(truth_joint, axis=1) == y)),
        "class_posterior_kl": float(
            np.mean(np.sum(p_true * (np.log(np.maximum(p_true, 1e-300)) - log_q), axis=1))
        ),
        "q_entropy": float(np.mean(-np.sum(q * log_q, axis=1))),
    }
    return {
        "classification": classification,
        "likelihood": {
            "log_prob_model": float(np.mean(logsumexp(table + log_pi, axis=1))),
            "log_prob_true": float(np.mean(logsumexp(truth_joint, axis=1))),
            "quadrature_check": float(np.max(np.abs(fine - table[:200]))),
        },
        "class_conditional_kl": class_conditional_kl(model, benchmark, data, model_table=table),
        "collapse": {k: _finite(v) for k, v in collapse_score(
            model, benchmark, key, n=collapse_samples, grid_size=grid_size).items()},
        "counterfactual": counterfactual_error(model, benchmark, data),
    }
