"""An amortised conditional normalising-flow encoder ``q_phi(z | x)`` with an exact density.

A sample is built from standard-normal noise ``eps`` in three steps,

    u_0 = eps,    u_l = T_l(u_{l-1}; x)  (l = 1..L),    z = mu_phi(x) + sigma_phi(x) * u_L,

where ``mu_phi, log sigma_phi`` come from an MLP of ``x`` (the Gaussian base of the MFG encoder, so with
every ``T_l`` the identity the encoder *is* the MFG encoder), and each ``T_l`` is a conditional coupling
layer: the coordinates ``b_l`` are transformed element-wise with parameters computed by an MLP of
``(x, u_{a_l})`` from the other coordinates ``a_l`` (layer ``l`` transforms the coordinates ``i`` with
``(i + l)`` odd, so consecutive layers alternate). For ``K = 1`` there are no other coordinates and every
layer is an element-wise transform conditioned on ``x`` alone. The element-wise transform is

- ``"spline"``: a monotone rational-quadratic spline (Durkan et al., "Neural spline flows", 2019) with
  ``bins`` bins on ``[-B, B]`` (``B = 5`` standard deviations of the base) and the identity outside; or
- ``"affine"``: ``v -> v exp(s) + t`` (for ``K = 1`` the whole flow is then still Gaussian: a control).

The change of variables gives the exact density

    log q(z | x) = log N(eps; 0, I) - sum_l log |det dT_l / du_{l-1}| - sum_k log sigma_k(x),

and every ``T_l`` has a closed-form inverse (:meth:`FlowEncoder.log_prob`), so ``log q`` can be evaluated at
any ``z``. The last layer of every conditioner starts at zero, so a fresh flow is its Gaussian base.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.errors import require, unknown_name
from vaefail.models import LOG_2PI, GaussianEncoder, get_activation, mlp_columns

FLOW_TYPES = ("spline", "affine")

#: Half-width of the spline's interval in base standard deviations (identity outside).
SPLINE_BOUND = 5.0
_MIN_BIN = 1e-3
_MIN_DERIVATIVE = 1e-3
#: ``softplus(_DERIVATIVE_SHIFT) = 1``: a zero raw derivative is the identity's slope.
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0))


def check_flow(flow_type: str, layers: int, bins: int) -> None:
    """Raise a :class:`~vaefail.errors.ConfigError` for an unknown flow type, no layer or under 2 bins."""
    if flow_type not in FLOW_TYPES:
        raise unknown_name("flow type", flow_type, FLOW_TYPES)
    require(layers >= 1, f"flow_layers must be >= 1, got {layers}")
    require(bins >= 2, f"flow_bins must be >= 2, got {bins}")


def _knots(raw: jax.Array, bound: float) -> tuple[jax.Array, jax.Array]:
    """Bin sizes (softmax, at least ``_MIN_BIN`` of the interval each) and knot positions on ``[-B, B]``."""
    bins = raw.shape[-1]
    size = (_MIN_BIN + (1.0 - _MIN_BIN * bins) * jax.nn.softmax(raw, axis=-1)) * 2.0 * bound
    knots = jnp.concatenate([jnp.zeros_like(size[..., :1]), jnp.cumsum(size, axis=-1)], axis=-1) - bound
    knots = knots.at[..., 0].set(-bound).at[..., -1].set(bound)
    return jnp.diff(knots, axis=-1), knots


def rational_quadratic_spline(
    v: jax.Array, params: jax.Array, *, inverse: bool = False, bound: float = SPLINE_BOUND
) -> tuple[jax.Array, jax.Array]:
    """The monotone rational-quadratic spline of each element of ``v`` and ``log |dy/dv|``.

    ``params`` has shape ``v.shape + (3 * bins - 1,)``, or one that broadcasts to it (e.g. one set per point
    shared by its samples: the knots are then computed once per set): raw bin widths, raw bin heights (each
    a softmax over the ``bins``) and raw interior knot derivatives (``softplus(raw + log(e - 1)) + 1e-3``;
    the two end derivatives are 1, matching the identity outside ``[-B, B]``). With
    ``xi = (v - v_k) / w_k`` in bin ``k``, slope ``s_k = h_k / w_k`` and knot derivatives ``d_k, d_{k+1}``,

        y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)).

    ``inverse=True`` solves this quadratic in ``xi`` for ``v`` given ``y`` (Durkan et al., 2019, eq. 6-8)
    and returns ``log |dv/dy|`` (minus the forward log-derivative). All-zero ``params`` give the identity.
    """
    bins = (params.shape[-1] + 1) // 3
    widths, xk = _knots(params[..., :bins], bound)
    heights, yk = _knots(params[..., bins : 2 * bins], bound)
    d_inner = jax.nn.softplus(params[..., 2 * bins :] + _DERIVATIVE_SHIFT) + _MIN_DERIVATIVE
    ones = jnp.ones_like(d_inner[..., :1])
    deriv = jnp.concatenate([ones, d_inner, ones], axis=-1)
    inside = (v > -bound) & (v < bound)
    vc = jnp.clip(v, -bound, bound)  # the spline branch sees only inside values (no nan in the gradients)
    search = yk if inverse else xk
    k = jnp.clip(jnp.sum(vc[..., None] >= search[..., 1:-1], axis=-1), 0, bins - 1)[..., None]

    def pick(a: jax.Array) -> jax.Array:
        return jnp.take_along_axis(a, k, axis=-1)[..., 0]

    x0, w, y0, h = pick(xk), pick(widths), pick(yk), pick(heights)
    d0, d1 = pick(deriv), pick(deriv[..., 1:])
    s = h / w
    if inverse:
        dy = vc - y0
        c2 = d1 + d0 - 2.0 * s
        a = h * (s - d0) + dy * c2
        b = h * d0 - dy * c2
        c = -s * dy
        disc = jnp.maximum(b**2 - 4.0 * a * c, 0.0)
        xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        out = x0 + xi * w
    else:
        xi = (vc - x0) / w
        c2 = d1 + d0 - 2.0 * s
        out = y0 + h * (s * xi**2 + d0 * xi * (1.0 - xi)) / (s + c2 * xi * (1.0 - xi))
    t = xi * (1.0 - xi)
    denom = s + c2 * t
    log_deriv = (2.0 * jnp.log(s) + jnp.log(d1 * xi**2 + 2.0 * s * t + d0 * (1.0 - xi) ** 2)
                 - 2.0 * jnp.log(denom))
    out = jnp.where(inside, out, v)
    log_deriv = jnp.where(inside, log_deriv, 0.0)
    return out, -log_deriv if inverse else log_deriv


def _affine(v: jax.Array, params: jax.Array, *, inverse: bool = False) -> tuple[jax.Array, jax.Array]:
    """``v -> v exp(s) + t`` with ``s = 3 tanh(raw_s / 3)`` (bounded for stability), and ``log |dy/dv|``."""
    log_scale = 3.0 * jnp.tanh(params[..., 0] / 3.0)
    shift = params[..., 1]
    if inverse:
        return (v - shift) * jnp.exp(-log_scale), -log_scale
    return v * jnp.exp(log_scale) + shift, log_scale


class CouplingLayer(eqx.Module):
    """One conditional coupling layer: coordinates ``b`` transformed element-wise with parameters from an
    MLP of ``(x, u_a)``; coordinates ``a`` pass through (``a`` is empty for ``K = 1``)."""

    net: eqx.nn.MLP
    a: tuple[int, ...] = eqx.field(static=True)
    b: tuple[int, ...] = eqx.field(static=True)
    flow_type: str = eqx.field(static=True)
    per_dim: int = eqx.field(static=True)

    def __init__(self, x_dim: int, a: tuple[int, ...], b: tuple[int, ...], flow_type: str, bins: int,
                 width: int, depth: int, activation: str, *, key: jax.Array):
        self.a, self.b, self.flow_type = a, b, flow_type
        self.per_dim = 3 * bins - 1 if flow_type == "spline" else 2
        net = eqx.nn.MLP(x_dim + len(a), len(b) * self.per_dim, width, depth,
                         activation=get_activation(activation), key=key)
        last = net.layers[-1]
        zero = eqx.tree_at(lambda m: (m.weight, m.bias), last,
                           (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        self.net = eqx.tree_at(lambda m: m.layers[-1], net, zero)

    def _params(self, x: jax.Array, u: jax.Array) -> jax.Array:
        """Raw parameters ``(len(b), n, S, per_dim)`` from ``x`` (``(D, n)``) and ``u`` (``(K, n, S)``);
        ``(len(b), n, 1, per_dim)`` when ``a`` is empty (the transforms broadcast them over the samples)."""
        n, s = u.shape[1], u.shape[2]
        if not self.a:  # conditioned on x alone: once per point, shared by its samples (``S`` axis of 1)
            raw, s = mlp_columns(self.net, x)[:, :, None], 1
        else:
            h = jnp.concatenate([jnp.broadcast_to(x[:, :, None], (x.shape[0], n, s)), u[np.array(self.a)]])
            raw = mlp_columns(self.net, h.reshape(h.shape[0], n * s)).reshape(-1, n, s)
        return jnp.moveaxis(raw.reshape(len(self.b), self.per_dim, n, s), 1, -1)

    def __call__(self, x: jax.Array, u: jax.Array, *, inverse: bool = False) -> tuple[jax.Array, jax.Array]:
        """Transformed ``u`` (``(K, n, S)``) and ``log |det du'/du|`` (``(n, S)``)."""
        params = self._params(x, u)
        vb = u[np.array(self.b)]
        if self.flow_type == "spline":
            out, log_det = rational_quadratic_spline(vb, params, inverse=inverse)
        else:
            out, log_det = _affine(vb, params, inverse=inverse)
        return u.at[np.array(self.b)].set(out), jnp.sum(log_det, axis=0)


def _partition(latent_dim: int, layer: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(a, b)`` of a layer: ``b`` the coordinates ``i`` with ``i + layer`` odd (all for ``K = 1``)."""
    if latent_dim == 1:
        return (), (0,)
    b = tuple(i for i in range(latent_dim) if (i + layer) % 2 == 1)
    return tuple(i for i in range(latent_dim) if i not in b), b


class FlowEncoder(eqx.Module):
    """``q_phi(z | x)``: a Gaussian base from :class:`~vaefail.models.GaussianEncoder` pushed through
    ``layers`` conditional coupling layers (module docstring).

    ``__call__``/``columns`` return the *base* ``(mu, log sigma)`` (what the truth starts regress onto the
    exact posterior's moments); the distribution itself is :meth:`sample_columns` and :meth:`log_prob`.
    """

    base: GaussianEncoder
    layers: tuple[CouplingLayer, ...]
    latent_dim: int = eqx.field(static=True)

    def __init__(self, x_dim: int, latent_dim: int, width: int, depth: int, activation: str, *,
                 flow_type: str = "spline", layers: int = 2, bins: int = 8, key: jax.Array):
        check_flow(flow_type, layers, bins)
        k_base, *k_layers = jax.random.split(key, layers + 1)
        self.base = GaussianEncoder(x_dim, latent_dim, width, depth, activation, key=k_base)
        self.layers = tuple(
            CouplingLayer(x_dim, *_partition(latent_dim, i), flow_type, bins, width, depth, activation,
                          key=k)
            for i, k in enumerate(k_layers)
        )
        self.latent_dim = latent_dim

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The base Gaussian's mean and log standard deviation at one point, each ``(K,)``."""
        return self.base(x)

    def columns(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The base ``(mu, log sigma)`` of every column of ``x`` (``(D, m)``), each ``(K, m)``."""
        return self.base.columns(x)

    def sample_columns(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reparameterised samples and their exact log-density.

        ``x`` ``(D, n)``, ``eps`` standard normal ``(K, n, S)``; returns ``z`` ``(K, n, S)`` and
        ``log q(z | x)`` ``(n, S)`` (change of variables, module docstring).
        """
        mu, log_std = self.base.columns(x)
        u, log_q = eps, jnp.sum(-0.5 * eps**2 - 0.5 * LOG_2PI, axis=0)
        for layer in self.layers:
            u, log_det = layer(x, u)
            log_q = log_q - log_det
        z = mu[..., None] + jnp.exp(log_std)[..., None] * u
        return z, log_q - jnp.sum(log_std, axis=0)[:, None]

    def log_prob_columns(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``log q(z_{:, i, s} | x_{:, i})`` for ``x`` (``(D, n)``) and any ``z`` (``(K, n, S)``): ``(n, S)``.

        Inverts the flow: ``u_L = (z - mu) / sigma``, then each layer's inverse from the last to the first.
        """
        mu, log_std = self.base.columns(x)
        u = (z - mu[..., None]) * jnp.exp(-log_std)[..., None]
        log_q = -jnp.sum(log_std, axis=0)[:, None] * jnp.ones(u.shape[1:], u.dtype)
        for layer in reversed(self.layers):
            u, log_det = layer(x, u, inverse=True)
            log_q = log_q + log_det
        return log_q + jnp.sum(-0.5 * u**2 - 0.5 * LOG_2PI, axis=0)

    def log_prob(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``log q(z | x)`` at one point ``x`` ``(D,)`` for latents ``z`` ``(m, K)``; shape ``(m,)``."""
        return self.log_prob_columns(x[:, None], z.T[:, None, :])[0]
