"""Downstream tasks: what a learned model (or the benchmark's truth) is worth for compression, latent
recovery, ambiguity, signal/noise separation, adversarial robustness, generation and outlier detection.

Every measure takes a :class:`LatentModel` (a model seen through what the tasks use: its representation
``code(x)``, its decoder, its density, its posterior) and data, and returns numbers. A model of any family
enters through one adapter (:func:`from_vae` for the MFG-VAE/IWAE and the flow-posterior VAE;
:func:`from_truth` for the benchmark's ground truth), so a new family needs one adapter and nothing else here.

Conventions. ``z_true`` are the latents that generated the data, ``eps = x - f_gt(z_true)`` the true noise.
The *code* of a model is the representation a user would take, ``E_q[z|x]`` (the encoder mean) for an
amortised model and the exact posterior mean ``E_gt[z|x]`` for the truth. The true manifold is
``{f_gt(z)}``; the distance of a point to it is the distance to the nearest ``f_gt(z_g)`` on a fine grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import rankdata

from vaefail.benchmarks import Benchmark
from vaefail.errors import require
from vaefail.metrics.flow import is_flow, mean_codes
from vaefail.metrics.information import encode
from vaefail.metrics.likelihood import decode, exact_log_likelihood, log_likelihood
from vaefail.quadrature import trapezoid_weights

#: The active-unit threshold of Burda et al. (2016): a code dimension is active when
#: ``Var_x(E[z_k|x]) > 0.01`` (the prior's variance is 1).
ACTIVE_THRESHOLD = 0.01
#: Latent grid of the 1-D posteriors (truth and ``K = 1`` models): uniform on [-7, 7].
POSTERIOR_GRID = np.linspace(-7.0, 7.0, 2801)
#: Grid on which the true manifold is traced for distances and projections.
MANIFOLD_GRID = np.linspace(-6.0, 6.0, 24001)


@dataclass(frozen=True)
class LatentModel:
    """A generative model ``z ~ N(0, I_K)``, ``x = f(z) + sigma_eps eps`` seen through the downstream tasks.

    Attributes
    ----------
    name
        A label (``"truth"``, ``"vae"``, ...).
    x_dim, latent_dim, sigma_eps
        ``D``, ``K`` and the observation noise std.
    decode
        ``f(z)``: ``(m, K) -> (m, D)`` float64.
    code
        The representation ``(n, D) -> (n, K)`` float64 (``E_q[z|x]`` or ``E_gt[z|x]``).
    code_jacobian
        ``d code / d x``: ``(n, D) -> (n, K, D)`` float64.
    log_prob
        ``log p(x)`` per point: ``(x, key) -> (n,)`` (exact or importance-sampled).
    posterior
        For ``K = 1``: ``x -> density (n, G)`` of ``p(z|x)`` on :data:`POSTERIOR_GRID`; ``None`` otherwise.
    """

    name: str
    x_dim: int
    latent_dim: int
    sigma_eps: float
    decode: Callable[[np.ndarray], np.ndarray]
    code: Callable[[np.ndarray], np.ndarray]
    code_jacobian: Callable[[np.ndarray], np.ndarray]
    log_prob: Callable[[np.ndarray, jax.Array], np.ndarray]
    posterior: Callable[[np.ndarray], np.ndarray] | None = None

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """``n`` draws of ``x = f(z) + sigma_eps eps`` with ``z ~ N(0, I_K)``; ``(n, D)`` float64."""
        kz, ke = jax.random.split(key)
        z = np.asarray(jax.random.normal(kz, (n, self.latent_dim)), np.float64)
        eps = np.asarray(jax.random.normal(ke, (n, self.x_dim)), np.float64)
        return self.decode(z) + self.sigma_eps * eps


# ------------------------------------------------------------------------------------------------
# Adapters
# ------------------------------------------------------------------------------------------------


def _grid_posterior(f_grid: np.ndarray, sigma: float, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``p(z_g|x)`` on :data:`POSTERIOR_GRID` from the decoder table ``f_grid`` (G, D); (n, G)."""
    out = np.empty((x.shape[0], POSTERIOR_GRID.size))
    w = trapezoid_weights(POSTERIOR_GRID)
    prior = -0.5 * POSTERIOR_GRID**2
    for s in range(0, x.shape[0], chunk):
        d2 = ((x[s:s + chunk, None, :] - f_grid[None]) ** 2).sum(-1)
        a = -0.5 * d2 / sigma**2 + prior
        dens = np.exp(a - a.max(axis=1, keepdims=True))
        out[s:s + chunk] = dens / (dens * w).sum(axis=1, keepdims=True)
    return out


def from_vae(model: Any, *, name: str = "vae", ll_samples: int = 1000, code_samples: int = 256,
             code_key: int = 0) -> LatentModel:
    """Adapter for an MFG-VAE/IWAE or a flow-posterior VAE (:class:`vaefail.models.VAE`, unstacked).

    ``code`` is ``E_q[z|x]``: the encoder mean ``mu_phi(x)`` for a Gaussian encoder; for a flow encoder
    (:func:`vaefail.metrics.flow.is_flow`) the mean of ``code_samples`` reparameterised draws
    ``z_s = T_phi(eps_s; x)``, the normals ``eps_s`` fixed per point by ``code_key`` and the point's index
    (so the code is a deterministic, differentiable function of ``x`` and its Jacobian is the mean of
    ``dz_s/dx``). ``log_prob`` is exact by quadrature for ``K = 1`` and importance-sampled with
    ``ll_samples`` draws from ``q`` otherwise; ``posterior`` is the model's exact ``p_theta(z|x)`` on
    :data:`POSTERIOR_GRID` for ``K = 1``.
    """
    k, d, sigma = int(model.latent_dim), int(model.x_dim), float(model.sigma)
    if is_flow(model):
        base = jax.random.PRNGKey(code_key)
        jac = eqx.filter_jit(jax.vmap(jax.jacfwd(
            lambda x, key: mean_codes(model, x[None], key[None], code_samples)[0])))

        def point_keys(n: int) -> jax.Array:
            return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))

        def code(x: np.ndarray) -> np.ndarray:
            xs = jnp.asarray(x, jnp.float32)
            return np.asarray(mean_codes(model, xs, point_keys(len(x)), code_samples), np.float64)

        def code_jacobian(x: np.ndarray) -> np.ndarray:
            return np.asarray(jac(jnp.asarray(x, jnp.float32), point_keys(len(x))), np.float64)
    else:
        jac = eqx.filter_jit(jax.vmap(jax.jacfwd(lambda x: model.encoder(x)[0])))

        def code(x: np.ndarray) -> np.ndarray:
            return encode(model, x)[0]

        def code_jacobian(x: np.ndarray) -> np.ndarray:
            return np.asarray(jac(jnp.asarray(x, jnp.float32)), np.float64)

    def dec(z: np.ndarray) -> np.ndarray:
        return np.asarray(decode(model, jnp.asarray(z, jnp.float32)), np.float64)

    def logp(x: np.ndarray, key: jax.Array) -> np.ndarray:
        if k == 1:
            return exact_log_likelihood(model, x).per_point
        return log_likelihood(model, x, key, ll_samples).per_point

    posterior = None
    if k == 1:
        f_grid = dec(POSTERIOR_GRID[:, None])
        posterior = lambda x: _grid_posterior(f_grid, sigma, np.asarray(x, np.float64))  # noqa: E731
    return LatentModel(name, d, k, sigma, dec, code, code_jacobian, logp, posterior)


def from_truth(bench: Benchmark) -> LatentModel:
    """The benchmark's ground truth (``K = 1``): code ``E_gt[z|x]`` and posterior by quadrature on
    :data:`POSTERIOR_GRID`, the code's Jacobian by automatic differentiation of the same quadrature,
    and the exact ``log p_gt(x)``."""
    grid = POSTERIOR_GRID
    f_grid = bench.f_gt_np(grid[:, None])
    sigma = bench.sigma_eps
    g32, f32, w = jnp.asarray(grid, jnp.float32), jnp.asarray(f_grid, jnp.float32), trapezoid_weights(grid)
    log_w = jnp.asarray(np.log(w), jnp.float32)

    def mean_one(x: jax.Array) -> jax.Array:
        a = -0.5 * jnp.sum((x - f32) ** 2, axis=-1) / sigma**2 - 0.5 * g32**2 + log_w
        return jnp.sum(jax.nn.softmax(a) * g32)[None]

    jac = jax.jit(jax.vmap(jax.jacfwd(mean_one)))

    def post(x: np.ndarray) -> np.ndarray:
        return _grid_posterior(f_grid, sigma, bench._check_x(x))

    def code(x: np.ndarray) -> np.ndarray:
        x = bench._check_x(x)
        out = np.empty((x.shape[0], 1))
        for s in range(0, x.shape[0], 256):
            out[s:s + 256, 0] = (post(x[s:s + 256]) * w * grid).sum(1)
        return out

    return LatentModel(
        "truth", bench.x_dim, 1, sigma, bench.f_gt_np, code,
        lambda x: np.asarray(jac(jnp.asarray(bench._check_x(x), jnp.float32)), np.float64),
        lambda x, _key: bench.log_prob(x), post,
    )


# ------------------------------------------------------------------------------------------------
# Latent recovery, noise in the code
# ------------------------------------------------------------------------------------------------


def knn_r2(features: np.ndarray, target: np.ndarray, *, neighbours: int = 20) -> float:
    """Leave-one-out k-nearest-neighbour R^2 of ``target`` (n, T) predicted from ``features`` (n, F).

    ``R^2 = 1 - U / (1 + 1/k)`` with ``U = sum_i ||t_i - mean_{j in N_k(i)} t_j||^2 / sum_i ||t_i -
    mean(t)||^2`` and ``N_k(i)`` the ``k = max(3, min(neighbours, n // 25))`` nearest other points in
    the features' ranks (each feature replaced by its rank / n). It estimates
    ``Var(E[t|f]) / Var(t)``: the mean of ``k`` neighbours' targets adds ``Var(t|f) / k`` to the residual,
    which the factor ``1 + 1/k`` removes (0 in expectation when ``t`` is independent of ``f``). It is
    unchanged by a monotone map of any feature.
    Features with no variance give 0.
    """
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    t = np.asarray(target, np.float64).reshape(len(target), -1)
    require(len(f) == len(t) and len(f) > 3, "knn_r2 needs as many features as targets, at least 4")
    neighbours = max(3, min(neighbours, len(f) // 25))  # at most 4% of the points in a neighbourhood
    f = f[:, f.std(axis=0) > 1e-12]
    if f.shape[1] == 0:
        return 0.0
    f = np.apply_along_axis(rankdata, 0, f) / len(f)  # ranks: a monotone map of a feature changes nothing
    _, idx = cKDTree(f).query(f, k=neighbours + 1)
    pred = t[idx[:, 1:]].mean(axis=1)
    unexplained = ((t - pred) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()
    return float(1.0 - unexplained / (1.0 + 1.0 / neighbours))


def latent_recovery(z_true: np.ndarray, code: np.ndarray, *, neighbours: int = 20,
                    active_threshold: float = ACTIVE_THRESHOLD) -> dict[str, Any]:
    """How well the code determines the true latent, and which code dimensions carry signal.

    - ``recovery``: :func:`knn_r2` of ``z_true`` from the active code dimensions, an estimate of
      ``Var(E[z|code]) / Var(z)`` (1: the code determines z; 0: it carries nothing about z). It is invariant
      to monotone maps of each code dimension (and, approximately, to smooth invertible reparametrisations).
    - ``active_dims``: dimensions with ``Var_x(code_k) > active_threshold``.
    - ``signal_share``: per dimension, :func:`knn_r2` of ``code_k`` from ``z_true`` (the share of the
      dimension's variance that the true latent explains; ``nan`` for an inactive dimension).
    - ``noise_dims``: active dimensions whose signal share is below 1/2: mostly noise, not signal.
    """
    code = np.asarray(code, np.float64)
    active = code.var(axis=0) > active_threshold
    share = [knn_r2(z_true, code[:, k], neighbours=neighbours) if active[k] else float("nan")
             for k in range(code.shape[1])]
    recovery = knn_r2(code[:, active], z_true, neighbours=neighbours) if active.any() else 0.0
    return {"recovery": recovery, "active_dims": int(active.sum()), "signal_share": share,
            "noise_dims": int(sum(1 for s in share if np.isfinite(s) and s < 0.5))}


def noise_kept(eps: np.ndarray, code: np.ndarray, *, neighbours: int = 20,
               active_threshold: float = ACTIVE_THRESHOLD) -> float:
    """Share of the true noise ``eps = x - f_gt(z_true)`` (n, D) that the active code predicts: :func:`knn_r2`
    (summed over the D noise coordinates); 0 when no dimension is active."""
    code = np.asarray(code, np.float64)
    active = code.var(axis=0) > active_threshold
    return knn_r2(code[:, active], eps, neighbours=neighbours) if active.any() else 0.0


# ------------------------------------------------------------------------------------------------
# The true manifold: distances, projections, tangents
# ------------------------------------------------------------------------------------------------


def manifold_projection(bench: Benchmark, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the true manifold ``{f_gt(z)}`` and the true z of its nearest point.

    ``dist_i = min_g ||x_i - f_gt(z_g)||`` over :data:`MANIFOLD_GRID` (spacing 5e-4 in z). Returns
    ``(dist (n,), z_proj (n,))``.
    """
    f = bench.f_gt_np(MANIFOLD_GRID[:, None])
    dist, idx = cKDTree(f).query(np.asarray(x, np.float64).reshape(-1, bench.x_dim))
    return np.asarray(dist), MANIFOLD_GRID[idx]


def unit_tangent(bench: Benchmark, z: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Unit tangent ``f_gt'(z) / ||f_gt'(z)||`` of the true curve at ``z`` (n,), by central differences;
    (n, D)."""
    z = np.asarray(z, np.float64).reshape(-1, 1)
    d = (bench.f_gt_np(z + h) - bench.f_gt_np(z - h)) / (2 * h)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)


def denoising(bench: Benchmark, model: LatentModel, x: np.ndarray) -> dict[str, float]:
    """Distance of reconstructions ``f(code(x))`` to the true manifold against that of the data.

    ``ratio = rms_i dist(f(code(x_i))) / rms_i dist(x_i)``: 0 is perfect denoising (reconstructions on the
    true manifold), 1 keeps the noise's distance, above 1 adds to it. ``recon_rms`` and ``data_rms`` are the
    two root-mean-square distances.
    """
    d_data, _ = manifold_projection(bench, x)
    d_rec, _ = manifold_projection(bench, model.decode(model.code(x)))
    rms = lambda d: float(np.sqrt(np.mean(d**2)))  # noqa: E731
    return {"ratio": rms(d_rec) / rms(d_data), "recon_rms": rms(d_rec), "data_rms": rms(d_data)}


# ------------------------------------------------------------------------------------------------
# Ambiguity: the modes of p(z|x)
# ------------------------------------------------------------------------------------------------


def mode_masses(density: np.ndarray, z_grid: np.ndarray = POSTERIOR_GRID, *,
                floor: float = 1e-3) -> list[np.ndarray]:
    """Posterior mass of each mode of ``p(z|x)`` (K = 1), largest first, one array per point.

    A mode is a maximal run of grid nodes where the density exceeds ``floor`` times its maximum; its mass
    is the trapezoid sum over the run, and the masses are renormalised to sum to 1. Mode masses do not
    change under any monotone reparametrisation of z, so a model's modes compare with the truth's though
    their latents differ.
    """
    w = trapezoid_weights(z_grid)
    out = []
    for row in np.asarray(density):
        on = row > floor * row.max()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
        masses = np.array([(row[a:b] * w[a:b]).sum() for a, b in zip(edges[::2], edges[1::2], strict=True)])
        out.append(np.sort(masses / masses.sum())[::-1])
    return out


def mode_overlap(truth: np.ndarray, model: np.ndarray) -> float:
    """``sum_j min(a_j, b_j)`` over the sorted mode masses of two posteriors (zero-padded): 1 when the
    model splits its mass over modes as the truth does, the truth's largest mode mass when it commits to
    one mode."""
    n = max(len(truth), len(model))
    a, b = np.zeros(n), np.zeros(n)
    a[: len(truth)], b[: len(model)] = truth, model
    return float(np.minimum(a, b).sum())


def ambiguity(truth: LatentModel, model: LatentModel, x: np.ndarray, *,
              min_mass: float = 0.1) -> dict[str, float]:
    """For the points whose true posterior is multi-modal (a second mode with mass >= ``min_mass``), how
    the model's posterior shares its mass among modes.

    - ``multimodal_share``: share of the points with a multi-modal ``p_gt(z|x)``.
    - ``overlap``: mean :func:`mode_overlap` of the model's and the truth's mode masses over those points
      (1 for the truth; 0.5 for a model committing to one of two equal modes); ``nan`` when there are none.
    - ``committed``: share of those points where the model puts more than 90% of its mass on one mode.

    Both posteriors must be available (``K = 1``). The model's modes are those of its own exact posterior
    ``p_theta(z|x)`` in its own latent: a decoder mapping two latents to the same x keeps both.
    """
    require(truth.posterior is not None and model.posterior is not None, "ambiguity needs K = 1 posteriors")
    t_modes = mode_masses(truth.posterior(x))
    multi = np.array([len(m) > 1 and m[1] >= min_mass for m in t_modes])
    if not multi.any():
        return {"multimodal_share": 0.0, "overlap": float("nan"), "committed": float("nan")}
    m_modes = mode_masses(model.posterior(np.asarray(x)[multi]))
    tm = [m for m, keep in zip(t_modes, multi, strict=True) if keep]
    return {"multimodal_share": float(multi.mean()),
            "overlap": float(np.mean([mode_overlap(a, b) for a, b in zip(tm, m_modes, strict=True)])),
            "committed": float(np.mean([m[0] > 0.9 for m in m_modes]))}


# ------------------------------------------------------------------------------------------------
# Adversarial robustness
# ------------------------------------------------------------------------------------------------


def robustness(bench: Benchmark, model: LatentModel, x: np.ndarray, *, move: float = 0.1) -> dict[str, float]:
    """Smallest input perturbation moving the code by ``move`` prior standard deviations, along and normal
    to the true manifold (first order, from the Jacobian ``J = d code / d x``).

    With ``t`` the unit tangent of the true curve at the projection of ``x`` and ``P = I - t t^T``, the code
    moves by ``||J u||`` per unit step ``u``: along, ``s_a = ||J t||``; normal, ``s_n = ||J P||_2`` (the
    worst normal direction). The perturbation needed is ``delta / s`` with ``delta = move *
    sqrt(K)`` (``move`` prior standard deviations per dimension, the scale every model's latent shares).
    Returned: medians over points of ``eps_along`` and ``eps_normal`` (``inf`` when
    the code does not respond), and ``normal_over_along``, the median of ``s_n / s_a`` (how much more the
    code reacts to off-manifold noise than to on-manifold signal). ``D = 1`` has no normal direction
    (``nan``).
    """
    x = np.asarray(x, np.float64)
    delta = move * math.sqrt(model.latent_dim)
    jac = model.code_jacobian(x)
    _, zp = manifold_projection(bench, x)
    t = unit_tangent(bench, zp)
    s_a = np.linalg.norm(np.einsum("nkd,nd->nk", jac, t), axis=1)
    out = {"eps_along": _safe_div(delta, float(np.median(s_a)))}
    if bench.x_dim == 1:
        return out | {"eps_normal": float("nan"), "normal_over_along": float("nan")}
    proj = np.eye(bench.x_dim)[None] - t[:, :, None] * t[:, None, :]
    s_n = np.linalg.norm(np.einsum("nkd,nde->nke", jac, proj), ord=2, axis=(1, 2))
    return out | {"eps_normal": _safe_div(delta, float(np.median(s_n))),
                  "normal_over_along": float(np.median(s_n / np.maximum(s_a, 1e-300)))}


def _rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (legacy uint32 or typed)."""
    data = key if np.asarray(key).dtype == np.uint32 else jax.random.key_data(key)
    return np.random.default_rng(np.asarray(data).ravel().tolist())


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 1e-6 else float("inf")


# ------------------------------------------------------------------------------------------------
# Generation and outlier detection
# ------------------------------------------------------------------------------------------------


def energy_test(a: np.ndarray, b: np.ndarray, key: jax.Array, permutations: int = 200) -> tuple[float, float]:
    """Energy distance between two samples and its permutation-test p-value.

    ``E = 2 mean ||a_i - b_j|| - mean ||a_i - a_j|| - mean ||b_i - b_j||`` (V-statistic, >= 0, zero in
    expectation only when the distributions agree). The p-value is ``(1 + #{E_perm >= E}) / (1 + P)`` over
    ``P`` random relabellings of the pooled sample.
    """
    pooled = np.concatenate([np.asarray(a, np.float64), np.asarray(b, np.float64)])
    n, m = len(a), len(b)
    dist = np.sqrt(((pooled[:, None, :] - pooled[None]) ** 2).sum(-1))

    total = dist.sum()
    rng = _rng(key)
    labels = np.stack([np.r_[np.ones(n), np.zeros(m)]]
                      + [rng.permutation(n + m) < n for _ in range(permutations)], axis=1).astype(np.float64)
    rows = dist @ labels  # (n + m, 1 + P): sums of distances from each point to the "a" group
    within_a = np.einsum("ip,ip->p", labels, rows)
    between = rows.sum(axis=0) - within_a
    within_b = total - 2 * between - within_a
    stats = 2 * between / (n * m) - within_a / n**2 - within_b / m**2
    observed, null = float(stats[0]), stats[1:]
    return observed, float((1 + np.sum(null >= observed)) / (1 + permutations))


def off_manifold_share(bench: Benchmark, x: np.ndarray, factor: float = 3.0) -> float:
    """Share of points farther than ``factor * sigma_eps`` from the true manifold."""
    dist, _ = manifold_projection(bench, x)
    return float(np.mean(dist > factor * bench.sigma_eps))


def outlier_points(bench: Benchmark, reference: np.ndarray, key: jax.Array, n: int, *,
                   near: float = 2.0, far: float = 4.0, margin: float = 0.25) -> np.ndarray:
    """``n`` off-manifold points: uniform in the bounding box of ``reference`` widened by ``margin`` of its
    range on each side, kept when their distance to the true manifold is between ``near * sigma_eps`` and
    ``far * sigma_eps`` (``far = inf``: any farther point). Near misses, not far-away points: between
    clusters, inside figure8's loops, beside the line, just beyond quadratic's interval; the truth gives
    them little but not negligible density, so a model's errors in p(x) show in its AUROC."""
    lo, hi = reference.min(0), reference.max(0)
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
    out: list[np.ndarray] = []
    rng = _rng(key)
    for _ in range(1000):
        cand = rng.uniform(lo, hi, size=(4 * n, bench.x_dim))
        dist, _ = manifold_projection(bench, cand)
        out.append(cand[(dist > near * bench.sigma_eps) & (dist < far * bench.sigma_eps)])
        if sum(map(len, out)) >= n:
            return np.concatenate(out)[:n]
    raise ValueError(f"{bench.name}: could not draw {n} off-manifold points")


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be larger for outliers: ``P(s_out > s_in) +
    P(s_out = s_in) / 2`` (the Mann-Whitney statistic over ``n_in * n_out``)."""
    s_in, s_out = np.asarray(score_in, np.float64), np.asarray(score_out, np.float64)
    ranks = rankdata(np.concatenate([s_in, s_out]))
    n_in, n_out = len(s_in), len(s_out)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def truth_mutual_information(truth: LatentModel, x: np.ndarray) -> float:
    """``I(x; z) = E_x KL(p(z|x) || N(0, 1))`` of a ``K = 1`` model with a posterior, by quadrature on
    :data:`POSTERIOR_GRID`, averaged over the points ``x`` (nats)."""
    require(truth.posterior is not None, "truth_mutual_information needs a K = 1 posterior")
    g, w = POSTERIOR_GRID, trapezoid_weights(POSTERIOR_GRID)
    log_prior = -0.5 * g**2 - 0.5 * math.log(2 * math.pi)
    total = 0.0
    for s in range(0, len(x), 256):
        p = truth.posterior(x[s:s + 256])
        logp = np.log(np.maximum(p, 1e-300))
        total += float(((p * (logp - log_prior)) * w).sum())
    return total / len(x)


# ------------------------------------------------------------------------------------------------
# Everything for one model
# ------------------------------------------------------------------------------------------------


def downstream_measures(bench: Benchmark, model: LatentModel, truth: LatentModel, x: np.ndarray,
                        z_true: np.ndarray, key: jax.Array, *, posterior_model: LatentModel | None = None,
                        permutations: int = 200) -> dict[str, float]:
    """Every downstream measure of ``model`` on test data ``(x, z_true)`` of ``bench``.

    ``posterior_model`` (default ``model``) answers the ambiguity task; it must have a ``K = 1`` posterior,
    else the ambiguity columns are ``nan``. Keys: ``fold_in(key, 0..2)`` for generation, the outliers and
    the importance-sampled densities.
    """
    x = np.asarray(x, np.float64)
    eps = x - bench.f_gt_np(z_true)
    code = model.code(x)
    rec = latent_recovery(z_true, code)
    out: dict[str, float] = {"recovery": rec["recovery"], "active_dims": rec["active_dims"],
                             "noise_dims": rec["noise_dims"], "noise_kept": noise_kept(eps, code)}
    amb_model = posterior_model or model
    if amb_model.posterior is not None:
        amb = ambiguity(truth, amb_model, x)
    else:
        amb = {"multimodal_share": float("nan"), "overlap": float("nan"), "committed": float("nan")}
    out |= {"multimodal_share": amb["multimodal_share"], "mode_overlap": amb["overlap"],
            "committed": amb["committed"]}
    out["denoise_ratio"] = denoising(bench, model, x)["ratio"]
    out |= robustness(bench, model, x)
    k_gen, k_out, k_ll = (jax.random.fold_in(key, i) for i in range(3))
    gen = model.sample(jax.random.fold_in(k_gen, 0), len(x))
    fresh = bench.sample(jax.random.fold_in(k_gen, 1), len(x)).x
    out["energy"], out["energy_p"] = energy_test(gen, fresh, jax.random.fold_in(k_gen, 2), permutations)
    out["off_manifold"] = off_manifold_share(bench, gen)
    outliers = outlier_points(bench, x, k_out, len(x))
    out["auroc"] = auroc(-model.log_prob(x, k_ll), -model.log_prob(outliers, k_ll))
    return out
