"""The strongest PyTorch peers of vaefail's training and likelihood: restarts batched as stacked weights.

``benchmarks/torch_baseline.py`` is what many users write (one ``nn.Module``, restarts one after another).
This module is what a careful peer writes for the same computation:

- **Stacked restarts**: every weight of the ``R`` restarts in one tensor with a leading restart axis
  (``W`` ``(R, out, in)``, ``b`` ``(R, out)``), each layer one ``torch.baddbmm`` over all restarts at
  once, activations ``(R, rows, width)``. The loss is the sum over restarts of each restart's
  ``-(1/B) sum_i bound(x_i)``, so each restart's gradient is exactly its own; Adam is elementwise, so one
  Adam over the stacked tensors (``foreach`` or ``fused``) is ``R`` independent Adams. Each restart draws
  its own batch of ``B`` rows with replacement and its own noise, as vaefail's fused loop does; the
  learning rate decays exponentially from ``1e-3`` to ``1e-4`` over the run (``ExponentialLR``, as
  ``vaefail.training.optimise``).
- **Models**: the MFG-VAE (ELBO with analytic KL, one sample), the IWAE bound (``S`` samples, standard
  reparameterised gradient) and the flow encoder of :mod:`vaefail.flows` (Gaussian base from an MLP, then
  conditional rational-quadratic-spline coupling layers, ELBO with the Monte-Carlo KL
  ``(1/S) sum_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)]`` and, as ``vaefail fit --encoder flow``, the
  path-derivative gradient: ``log q`` through the flow's inverse with its parameters detached), all with
  vaefail's default 2 x 50 leaky-ReLU networks and figure8's ``sigma_eps``.
- ``compile=True`` wraps the loss (forward and backward) in ``torch.compile``.
- :func:`batched_log_likelihood`: the importance-sampled ``log p(x)`` in chunks of points x samples, one
  pass per chunk (against ``loglik_baseline``'s per-datapoint loop).

Same computation, checked: :func:`check_same_objective` copies stacked vaefail models (``vaefail.mfg`` or
``vaefail.flowvae`` initialisations) into the stacked tensors, regenerates the exact standard normals
vaefail draws from the same key, and compares every restart's per-point bound and the gradient of every
weight. Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

try:
    import torch
except ModuleNotFoundError:
    raise ModuleNotFoundError(
        "PyTorch is not installed; the baselines need the bench extra: pip install -e '.[bench]'"
    ) from None

LOG_2PI = math.log(2.0 * math.pi)
FIGURE8_SIGMA = math.sqrt(0.02)
#: Constants of :func:`vaefail.flows.rational_quadratic_spline` (the same numbers).
SPLINE_BOUND, MIN_BIN, MIN_DERIVATIVE = 5.0, 1e-3, 1e-3
DERIVATIVE_SHIFT = math.log(math.expm1(1.0))

#: ``{name: array}`` with names ``"<net>.<layer>.w"`` / ``".b"``; ``<net>`` is ``encoder``, ``decoder``,
#: ``base`` (a flow's Gaussian base) or ``flow<l>`` (coupling layer ``l``'s conditioner).
Arrays = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------------
# Stacked networks and bounds
# --------------------------------------------------------------------------------------------------


def _mlp(p: dict[str, torch.Tensor], net: str, h: torch.Tensor) -> torch.Tensor:
    """The MLP ``net`` of every restart on ``h`` ``(R, rows, in)``: ``h W_r^T + b_r`` per layer, leaky ReLU
    (slope 0.01) between layers, linear output."""
    i = 0
    while f"{net}.{i + 1}.w" in p:
        h = torch.nn.functional.leaky_relu(
            torch.baddbmm(p[f"{net}.{i}.b"].unsqueeze(1), h, p[f"{net}.{i}.w"].transpose(1, 2)), 0.01)
        i += 1
    return torch.baddbmm(p[f"{net}.{i}.b"].unsqueeze(1), h, p[f"{net}.{i}.w"].transpose(1, 2))


def _decoder_log_lik(p: dict[str, torch.Tensor], x: torch.Tensor, z: torch.Tensor,
                     sigma: float) -> torch.Tensor:
    """``log N(x; f(z), sigma^2 I)`` summed over data dimensions: ``x`` ``(R, B, D)``, ``z`` ``(R, S, B, K)``
    -> ``(R, S, B)`` (the decoder runs on all ``S B`` rows of a restart in one product)."""
    r, s, b, k = z.shape
    mean = _mlp(p, "decoder", z.reshape(r, s * b, k)).reshape(r, s, b, -1)
    resid = (x.unsqueeze(1) - mean) / sigma
    return -0.5 * (resid**2).sum(-1) - x.shape[-1] * (math.log(sigma) + 0.5 * LOG_2PI)


def gaussian_bounds(p: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor, objective: str,
                    sigma: float = FIGURE8_SIGMA) -> torch.Tensor:
    """Per-restart, per-point bound ``(R, B)`` of the MFG encoder; ``eps`` ``(R, S, B, K)`` standard normal.

    ``"vae"``: ``log p(x|z) - KL(q || N(0, I))`` with ``z = mu + sigma_q eps[:, 0]`` and the analytic KL.
    ``"iwae"``: ``log (1/S) sum_s p(x, z_s) / q(z_s|x)`` (log-sum-exp over the ``S`` samples).
    """
    out = _mlp(p, "encoder", x)
    k = out.shape[-1] // 2
    mu, log_std = out[..., :k], out[..., k:]
    z = mu.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps
    log_lik = _decoder_log_lik(p, x, z, sigma)
    if objective == "vae":
        kl = 0.5 * (mu**2 + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)
        return log_lik[:, 0] - kl
    log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    log_q = (-0.5 * eps**2 - log_std.unsqueeze(1) - 0.5 * LOG_2PI).sum(-1)
    return torch.logsumexp(log_lik + log_prior - log_q, dim=1) - math.log(eps.shape[1])


def _knots(raw: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes and knots on ``[-B, B]`` (as ``vaefail.flows._knots``)."""
    bins = raw.shape[-1]
    size = (MIN_BIN + (1.0 - MIN_BIN * bins) * torch.softmax(raw, dim=-1)) * 2.0 * bound
    inner = torch.cumsum(size, dim=-1)[..., :-1] - bound
    edge = torch.full_like(size[..., :1], bound)
    knots = torch.cat([-edge, inner, edge], dim=-1)
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(v: torch.Tensor, params: torch.Tensor, bound: float = SPLINE_BOUND, *,
                              inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline of each element of ``v`` and ``log |dy/dv|``: the formula of
    :func:`vaefail.flows.rational_quadratic_spline` (Durkan et al. 2019), identity outside ``[-B, B]``;
    ``params`` has shape ``v.shape + (3 bins - 1,)``. ``inverse=True``: the inverse (the root of the same
    quadratic in ``xi``) and ``log |dv/dy|``."""
    bins = (params.shape[-1] + 1) // 3
    widths, xk = _knots(params[..., :bins], bound)
    heights, yk = _knots(params[..., bins : 2 * bins], bound)
    d_inner = torch.nn.functional.softplus(params[..., 2 * bins :] + DERIVATIVE_SHIFT) + MIN_DERIVATIVE
    ones = torch.ones_like(d_inner[..., :1])
    deriv = torch.cat([ones, d_inner, ones], dim=-1)
    inside = (v > -bound) & (v < bound)
    vc = v.clamp(-bound, bound)
    search = yk if inverse else xk
    k = (vc.unsqueeze(-1) >= search[..., 1:-1]).sum(-1).clamp(0, bins - 1).unsqueeze(-1)

    def pick(a: torch.Tensor) -> torch.Tensor:
        return torch.gather(a, -1, k).squeeze(-1)

    x0, w, y0, h, d0, d1 = pick(xk), pick(widths), pick(yk), pick(heights), pick(deriv), pick(deriv[..., 1:])
    s = h / w
    c2 = d1 + d0 - 2.0 * s
    if inverse:
        dy = vc - y0
        a, b, c = h * (s - d0) + dy * c2, h * d0 - dy * c2, -s * dy
        xi = (2.0 * c / (-b - (b**2 - 4.0 * a * c).clamp_min(0.0).sqrt())).clamp(0.0, 1.0)
        out = x0 + xi * w
    else:
        xi = (vc - x0) / w
    t = xi * (1.0 - xi)
    denom = s + c2 * t
    if not inverse:
        out = y0 + h * (s * xi**2 + d0 * t) / denom
    log_deriv = 2.0 * s.log() + (d1 * xi**2 + 2.0 * s * t + d0 * (1.0 - xi) ** 2).log() - 2.0 * denom.log()
    log_deriv = torch.where(inside, log_deriv, torch.zeros_like(log_deriv))
    return torch.where(inside, out, v), -log_deriv if inverse else log_deriv


def coupling_partition(latent_dim: int, layer: int) -> tuple[list[int], list[int]]:
    """``(a, b)`` of coupling layer ``layer``: ``b`` the coordinates ``i`` with ``i + layer`` odd (all of
    them for ``K = 1``), as ``vaefail.flows._partition``."""
    if latent_dim == 1:
        return [], [0]
    b = [i for i in range(latent_dim) if (i + layer) % 2 == 1]
    return [i for i in range(latent_dim) if i not in b], b


def _coupling(p: dict[str, torch.Tensor], x: torch.Tensor, u: list[torch.Tensor], layer: int,
              inverse: bool) -> torch.Tensor:
    """Coupling layer ``layer`` (or its inverse) applied in place to ``u`` (``K`` tensors ``(R, S, B)``):
    the coordinates ``b_l`` by the spline whose parameters an MLP computes from ``(x, u_{a_l})`` (from ``x``
    alone when ``a_l`` is empty: once per point); returns ``log |det|`` of the map applied, ``(R, S, B)``."""
    r, s, b = u[0].shape
    a, bs = coupling_partition(len(u), layer)
    if a:
        h = torch.cat([x.unsqueeze(1).expand(r, s, b, x.shape[-1]), *(u[i].unsqueeze(-1) for i in a)], -1)
        raw = _mlp(p, f"flow{layer}", h.reshape(r, s * b, -1)).reshape(r, s, b, len(bs), -1)
    else:
        raw = _mlp(p, f"flow{layer}", x).reshape(r, 1, b, len(bs), -1).expand(r, s, b, len(bs), -1)
    v, log_det = rational_quadratic_spline(torch.stack([u[i] for i in bs], -1), raw, inverse=inverse)
    for j, i in enumerate(bs):
        u[i] = v[..., j]
    return log_det.sum(-1)


def _flow_layers(p: dict[str, torch.Tensor]) -> int:
    layers = 0
    while f"flow{layers}.0.w" in p:
        layers += 1
    return layers


def flow_log_prob(p: dict[str, torch.Tensor], x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``log q(z | x)`` ``(R, S, B)`` of the flow in ``p`` at any ``z`` ``(R, S, B, K)``, ``x`` ``(R, B, D)``,
    through the inverse (as ``vaefail.flows.FlowEncoder.log_prob_columns``): ``u_L = (z - mu) / sigma_q``,
    each layer's inverse from the last to the first, ``log q = log N(u_0) + sum_l log|det dT_l^-1| -
    sum_k log sigma_q,k``."""
    k = z.shape[-1]
    out = _mlp(p, "base", x)
    mu, log_std = out[..., :k].unsqueeze(1), out[..., k:].unsqueeze(1)
    u = list(((z - mu) * (-log_std).exp()).unbind(-1))
    log_q = -log_std.sum(-1).expand(z.shape[:-1])
    for layer in reversed(range(_flow_layers(p))):
        log_q = log_q + _coupling(p, x, u, layer, inverse=True)
    return log_q + (-0.5 * torch.stack(u, -1) ** 2 - 0.5 * LOG_2PI).sum(-1)


def flow_bounds(p: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor,
                sigma: float = FIGURE8_SIGMA, pathwise: bool = True) -> torch.Tensor:
    """Per-restart, per-point ELBO ``(R, B)`` of the spline-flow encoder with the Monte-Carlo KL:
    ``(1/S) sum_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)]``, ``z_s`` the flow of ``eps[:, s]``.

    ``u_0 = eps``, ``u_l = T_l(u_{l-1}; x)`` (:func:`_coupling`), ``z = mu(x) + sigma_q(x) u_L``;
    ``log q = log N(eps) - sum_l log|det| - sum_k log sigma_q,k``. ``pathwise=True`` (what
    ``vaefail fit --encoder flow`` trains, ``vaefail.flowvae.PathwiseELBO``): the same value, but ``log q``
    is :func:`flow_log_prob` with the flow's parameters detached, evaluated at ``z_s`` (through the inverse),
    so the gradient is the path derivative (no score term ``d/dphi log q_phi(z)`` at fixed ``z``).
    """
    k = eps.shape[-1]
    out = _mlp(p, "base", x)
    mu, log_std = out[..., :k], out[..., k:]
    u = list(eps.unbind(-1))  # K tensors (R, S, B)
    log_q = (-0.5 * eps**2 - 0.5 * LOG_2PI).sum(-1)
    for layer in range(_flow_layers(p)):
        log_q = log_q - _coupling(p, x, u, layer, inverse=False)
    z = mu.unsqueeze(1) + log_std.exp().unsqueeze(1) * torch.stack(u, -1)
    if pathwise:
        log_q = flow_log_prob({name: value.detach() for name, value in p.items()}, x, z)
    else:
        log_q = log_q - log_std.sum(-1).unsqueeze(1)
    log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    return (_decoder_log_lik(p, x, z, sigma) + log_prior - log_q).mean(1)


def bounds(p: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor, objective: str) -> torch.Tensor:
    """:func:`flow_bounds` when ``p`` holds a flow (``objective`` ``"vae"``), else :func:`gaussian_bounds`."""
    if "base.0.w" in p:
        if objective != "vae":
            raise ValueError("the flow peer trains the ELBO only")
        return flow_bounds(p, x, eps)
    return gaussian_bounds(p, x, eps, objective)


# --------------------------------------------------------------------------------------------------
# Weights from vaefail
# --------------------------------------------------------------------------------------------------


def vaefail_arrays(models) -> Arrays:
    """Every weight of stacked vaefail models (leading restart axis), or of their gradients (the same
    pytree), by name: an MFG VAE (``encoder``, ``decoder``) or a flow VAE (``base``, ``flow<l>``,
    ``decoder``); ``W`` is ``(R, out, in)`` as in ``equinox.nn.Linear`` and ``baddbmm`` here."""
    nets = {"decoder": models.decoder.net}
    if hasattr(models.encoder, "base"):
        nets["base"] = models.encoder.base.net
        nets.update({f"flow{i}": cl.net for i, cl in enumerate(models.encoder.layers)})
    else:
        nets["encoder"] = models.encoder.net
    out = {}
    for name, net in nets.items():
        for i, layer in enumerate(net.layers):
            out[f"{name}.{i}.w"], out[f"{name}.{i}.b"] = np.array(layer.weight), np.array(layer.bias)
    return out


def vaefail_models(encoder: str, latent_dim: int, restarts: int, seed: int = 0):
    """Freshly initialised stacked vaefail models for figure8 (defaults of ``FitConfig`` / ``FlowConfig``):
    ``encoder`` ``"gaussian"`` (:func:`vaefail.mfg.init_models`) or ``"flow"`` (``FlowFamily.init``)."""
    import jax

    from vaefail.benchmarks import get_benchmark
    from vaefail.config import FitConfig, FlowConfig
    from vaefail.flowvae import FLOW
    from vaefail.mfg import init_models

    bench = get_benchmark("figure8")
    keys = list(jax.random.split(jax.random.PRNGKey(seed), restarts))
    if encoder == "flow":
        return FLOW.init(FlowConfig(restarts=restarts, latent_dim=latent_dim), bench, keys)
    return init_models(FitConfig(restarts=restarts, latent_dim=latent_dim), bench, keys)


def parameters(arrays: Arrays) -> dict[str, torch.nn.Parameter]:
    """Trainable float32 tensors holding copies of ``arrays``."""
    return {k: torch.nn.Parameter(torch.tensor(np.asarray(v, np.float32))) for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One setting of the batched peer: Adam implementation, ``torch.compile`` or not, intra-op threads
    (``None``: torch's default, one per core)."""

    adam: str = "foreach"
    compile: bool = False
    threads: int | None = 1

    def __str__(self) -> str:
        threads = "default threads" if self.threads is None else f"{self.threads} thread"
        return f"batched{', compiled' if self.compile else ''}, {self.adam} Adam, {threads}"


def make_trainer(arrays: Arrays, x: np.ndarray, objective: str, samples: int, batch: int, steps: int,
                 peer: Peer, lr: float = 1e-3, seed: int = 0):
    """A function ``run(n)`` doing ``n`` training steps of every restart in ``arrays`` (stacked weights),
    Adam with ``lr`` decayed by ``0.1 ** (1 / steps)`` per step; returns ``(run, params)``."""
    torch.manual_seed(seed)
    params = parameters(arrays)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    restarts = next(iter(params.values())).shape[0]
    k = params["decoder.0.w"].shape[-1]
    s = samples if objective == "iwae" else 1
    opt = torch.optim.Adam(params.values(), lr=lr, **{peer.adam: True})
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / steps))

    def loss(xb: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return -bounds(params, xb, eps, objective).mean(-1).sum()

    loss_fn = torch.compile(loss) if peer.compile else loss

    def run(n: int) -> None:
        for _ in range(n):
            xb = xt[torch.randint(0, xt.shape[0], (restarts, batch))]
            eps = torch.randn(restarts, s, batch, k)
            value = loss_fn(xb, eps)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()

    return run, params


def peer_restart_steps_per_second(objective: str, samples: int, latent_dim: int, *, encoder: str = "gaussian",
                                  restarts: int = 10, batch: int = 100, steps: int = 300,
                                  x: np.ndarray | None = None, peer: Peer = Peer(),
                                  stacked: bool = True) -> float:
    """Restart-steps per second of the batched peer: a warm-up of ``steps // 4`` steps (with
    ``compile``, the compilation) untimed, then ``steps`` steps timed. ``stacked=False`` runs the same
    code one restart at a time (``R = 1``, restarts in a Python loop): the eager form of the flow."""
    from torch_baseline import figure8_train_x, torch_threads

    x = figure8_train_x() if x is None else x
    arrays = vaefail_arrays(vaefail_models(encoder, latent_dim, restarts))
    groups = [arrays] if stacked else [{k: v[r : r + 1] for k, v in arrays.items()} for r in range(restarts)]
    with torch_threads(peer.threads):
        runs = [make_trainer(g, x, objective, samples, batch, steps, peer, seed=i)[0]
                for i, g in enumerate(groups)]
        for run in runs[:1]:
            run(max(steps // 4, 1))
        t = time.perf_counter()
        for run in runs:
            run(steps)
        return restarts * steps / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------------
# The same objective
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SameObjective:
    """Largest per-point bound difference (relative to ``max(1, |bound|)``: float32 rounding grows with the
    bound's size) and largest relative gradient difference, over all restarts."""

    name: str
    max_abs_bound_diff: float
    max_rel_grad_diff: float
    mean_bound: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_bound_diff <= self.tol and self.max_rel_grad_diff <= self.tol

    def __str__(self) -> str:
        return (f"{self.name}: max |bound_peer - bound_vaefail| / max(1, |bound|) "
                f"{self.max_abs_bound_diff:.1e} (mean bound {self.mean_bound:.4f}), max relative gradient "
                f"difference {self.max_rel_grad_diff:.1e} -> "
                f"{'OK' if self.ok else 'FAIL'} (tol {self.tol:g})")


def check_same_objective(objective: str = "vae", samples: int = 1, latent_dim: int = 1, *,
                         encoder: str = "gaussian", restarts: int = 2, batch: int = 64, seed: int = 0,
                         tol: float = 1e-4, models=None) -> SameObjective:
    """Same stacked weights, same batch, same noise: every restart's per-point bound and gradient, vaefail
    (``vaefail.objectives.bound_fn`` / ``loss_fn`` on each restart; for the flow the loss ``fit`` trains,
    ``FlowFamily.loss``: the path-derivative ELBO) against :func:`bounds`.

    vaefail draws point ``i``'s noise as ``normal(split(key, n)[i], (K, S))``; it is regenerated here and
    handed to the peer as ``eps[r, s, i, k]``. ``models`` (stacked vaefail models) defaults to a fresh
    initialisation; the flow's coupling layers then start at the identity, so pass trained or perturbed
    ones to test the spline. Bounds: ``max_i |b_peer,i - b_vaefail,i| / max(1, |b_vaefail,i|)``; gradients:
    ``max |g_peer - g_vaefail| / max |g_vaefail|`` per array.
    """
    import equinox as eqx
    import jax
    from torch_baseline import figure8_train_x

    from vaefail.config import FlowConfig
    from vaefail.flowvae import FLOW
    from vaefail.objectives import bound_fn, loss_fn
    from vaefail.stacking import take

    s = samples if objective == "iwae" else 1
    models = vaefail_models(encoder, latent_dim, restarts, seed) if models is None else models
    restarts = models.log_sigma.shape[0]
    x = figure8_train_x()[:batch].copy()
    keys = [jax.random.PRNGKey(seed + 1 + r) for r in range(restarts)]
    v_bound, v_grads = [], []
    loss = FLOW.loss(FlowConfig(objective=objective, num_samples=s)) if encoder == "flow" else loss_fn(
        objective, s)
    for r in range(restarts):
        model = take(models, r)
        v_bound.append(np.asarray(bound_fn(objective, s)(model, x, keys[r]).bound))
        v_grads.append(eqx.filter_grad(lambda m, key=keys[r]: loss(m, x, key)[0])(model))
    eps = np.stack([np.asarray(jax.vmap(lambda k: jax.random.normal(k, (latent_dim, s)))(
        jax.random.split(key, batch))).transpose(2, 0, 1) for key in keys])  # (R, S, n, K)
    params = parameters(vaefail_arrays(models))
    xt = torch.from_numpy(x).unsqueeze(0).expand(restarts, batch, x.shape[1])
    t_bound = bounds(params, xt, torch.from_numpy(eps), objective)
    (-t_bound.mean(-1).sum()).backward()
    rel = 0.0
    for r in range(restarts):
        grads = vaefail_arrays(jax.tree_util.tree_map(lambda a: a[None], v_grads[r]))
        for name, g in grads.items():
            g = g[0]
            diff = np.max(np.abs(params[name].grad[r].numpy() - g))
            rel = max(rel, float(diff / max(np.max(np.abs(g)), 1e-30)))
    v_bound = np.stack(v_bound)
    diff = float(np.max(np.abs(t_bound.detach().numpy() - v_bound) / np.maximum(1.0, np.abs(v_bound))))
    name = {"vae": "ELBO", "iwae": f"IWAE S={s}"}[objective] + (" flow" if encoder == "flow" else "")
    return SameObjective(f"{name} K={latent_dim}", diff, rel, float(np.mean(v_bound)), tol)


# --------------------------------------------------------------------------------------------------
# Batched importance-sampled log-likelihood
# --------------------------------------------------------------------------------------------------


def batched_log_likelihood(model, x: np.ndarray, n_samples: int = 5000,
                           chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Per-point ``log p(x) ~ logsumexp_s log w_s - log S`` and effective sample size
    ``exp(2 lse(log w) - lse(2 log w))``, ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``,
    ``z_s ~ q(z|x)``, ``S = n_samples``: ``chunk`` points x ``S`` samples in one pass (encoder once per point,
    decoder on ``chunk * S`` rows). ``model`` is a :class:`torch_baseline.TorchVAE`."""
    data = torch.from_numpy(np.asarray(x, np.float32))
    log_p, ess = [], []
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            xc = data[start : start + chunk]
            mu, log_std = model.encode(xc)
            eps = torch.randn(n_samples, *mu.shape)
            z = mu + log_std.exp() * eps
            log_q = (-0.5 * eps**2 - log_std - 0.5 * LOG_2PI).sum(-1)
            log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
            lw = model.log_likelihood(xc, z) + log_prior - log_q  # (S, chunk)
            lse = torch.logsumexp(lw, 0)
            log_p.append(lse - math.log(n_samples))
            ess.append(torch.exp(2 * lse - torch.logsumexp(2 * lw, 0)))
    return torch.cat(log_p).numpy().astype(np.float64), torch.cat(ess).numpy().astype(np.float64)


def batched_points_per_second(layers, sigma: float, x: np.ndarray, n_samples: int = 5000, chunk: int = 50,
                              threads: int | None = None) -> float:
    """Points per second of :func:`batched_log_likelihood` (after an untimed chunk)."""
    from torch_baseline import torch_from_layers, torch_threads

    model = torch_from_layers(layers, sigma)
    with torch_threads(threads):
        batched_log_likelihood(model, x[:chunk], n_samples, chunk)
        t = time.perf_counter()
        batched_log_likelihood(model, x, n_samples, chunk)
        return len(x) / (time.perf_counter() - t)
