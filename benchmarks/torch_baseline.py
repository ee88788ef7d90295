"""A plain PyTorch baseline of vaefail's training: same model, objective, data, batch and step count.

What a user of today's libraries writes: one ``nn.Module``, Adam, and the restarts run one after another
in an eager Python loop. It mirrors vaefail exactly:

- **Model** (``vaefail.models.make_vae`` with the ``FitConfig`` defaults): encoder MLP ``x -> 2K`` outputs
  read as ``(mu, log sigma)`` of ``q(z|x)`` (the std is ``exp`` of the second half, no softplus); decoder
  MLP ``z -> mean of x``; both 2 hidden layers of 50 units, leaky ReLU (slope 0.01, as ``jax.nn``), linear
  output layer. ``torch.nn.Linear``'s default init (weights and biases ``U(-1/sqrt(fan_in),
  1/sqrt(fan_in))``) is the same distribution as ``equinox.nn.Linear``'s. Gaussian likelihood with
  ``sigma_eps`` fixed at the benchmark's value (figure8: ``sqrt(0.02)``).
- **Objectives**: the MFG-VAE ELBO with analytic KL and one reparameterised sample, and the IWAE bound with
  ``S`` samples trained with the *standard* reparameterised gradient of the bound. vaefail's IWAE training
  uses the standard estimator too unless ``dreg=True`` (``FitConfig.dreg`` defaults to ``False``;
  ``benchmarks/run.py`` calls ``loss_fn(objective, samples)`` without DReG), so the two are the same.
- **Optimiser**: Adam (``b1=0.9, b2=0.999, eps=1e-8``, identical in optax and torch), lr ``1e-3`` decayed
  exponentially to ``1e-4`` over the run, as ``vaefail.training.optimise`` does (``final_lr_factor=0.1``);
  batches of 100 rows drawn with replacement from the 5,000 training points of figure8
  (``get_benchmark("figure8").sample(PRNGKey(1), 5000).x``, the data ``benchmarks/run.py`` uses).

:func:`torch_restart_steps_per_second` times it the way ``restart_steps_per_second`` in
``benchmarks/run.py`` times vaefail (a timed run after an untimed warm-up), and
:func:`check_same_objective` shows that, with a vaefail model's weights copied in and the same noise,
both frameworks compute the same per-point ELBO / IWAE bound and the same gradients.

Run ``python benchmarks/torch_baseline.py`` for the side-by-side table. Needs the ``bench`` extra:
``pip install -e '.[bench]'``. torch uses its default thread count (all cores), as JAX does.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ModuleNotFoundError:
    if __name__ == "__main__":
        sys.exit("PyTorch is not installed; the baselines need the bench extra: pip install -e '.[bench]'")
    raise ModuleNotFoundError(
        "PyTorch is not installed; the baselines need the bench extra: pip install -e '.[bench]'"
    ) from None

LOG_2PI = math.log(2.0 * math.pi)
FIGURE8_SIGMA = math.sqrt(0.02)


# --------------------------------------------------------------------------------------------------
# The model and objectives, as a plain PyTorch user writes them
# --------------------------------------------------------------------------------------------------


def mlp(n_in: int, n_out: int, width: int = 50, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with leaky ReLU, then a linear output layer."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.LeakyReLU(0.01)]
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)


class TorchVAE(nn.Module):
    """MFG-VAE, fixed sigma: ``q(z|x) = N(mu(x), diag exp(2 log_std(x)))``, ``p(x|z) = N(f(z), s^2 I)``."""

    def __init__(self, x_dim: int, latent_dim: int, sigma_eps: float, width: int = 50, depth: int = 2):
        super().__init__()
        self.x_dim, self.latent_dim = x_dim, latent_dim
        self.encoder = mlp(x_dim, 2 * latent_dim, width, depth)
        self.decoder = mlp(latent_dim, x_dim, width, depth)
        self.register_buffer("log_sigma", torch.tensor(math.log(sigma_eps)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        return out[..., : self.latent_dim], out[..., self.latent_dim :]

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log N(x; f(z), sigma^2 I)`` summed over data dimensions (``x`` broadcasts over z's lead axes)."""
        resid = (x - self.decoder(z)) / self.log_sigma.exp()
        return -0.5 * (resid**2).sum(-1) - self.x_dim * (self.log_sigma + 0.5 * LOG_2PI)


def elbo(model: TorchVAE, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-point ELBO: one reparameterised sample, analytic KL; ``eps`` (``(n, K)``) defaults to new noise."""
    mu, log_std = model.encode(x)
    if eps is None:
        eps = torch.randn_like(mu)
    z = mu + log_std.exp() * eps
    kl = 0.5 * (mu**2 + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)
    return model.log_likelihood(x, z) - kl


def iwae_bound(model: TorchVAE, x: torch.Tensor, samples: int,
               eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-point ``log (1/S) sum_s p(x, z_s) / q(z_s|x)``; ``eps`` has shape ``(S, n, K)``."""
    mu, log_std = model.encode(x)
    if eps is None:
        eps = torch.randn(samples, *mu.shape)
    z = mu + log_std.exp() * eps
    log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    log_q = (-0.5 * ((z - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
    log_w = model.log_likelihood(x, z) + log_prior - log_q
    return torch.logsumexp(log_w, dim=0) - math.log(samples)


def train_restart(x: torch.Tensor, objective: str, samples: int, latent_dim: int, steps: int,
                  batch: int = 100, lr: float = 1e-3, seed: int = 0,
                  sigma_eps: float = FIGURE8_SIGMA) -> TorchVAE:
    """One restart: fresh model, Adam with lr decayed exponentially to ``lr / 10``, ``steps`` steps."""
    torch.manual_seed(seed)
    model = TorchVAE(x.shape[1], latent_dim, sigma_eps)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / steps))
    for _ in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,))]
        bound = elbo(model, xb) if objective == "vae" else iwae_bound(model, xb, samples)
        loss = -bound.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def figure8_train_x() -> np.ndarray:
    """The 5,000 figure8 training points ``benchmarks/run.py`` trains vaefail on (float32)."""
    import jax

    from vaefail.benchmarks import get_benchmark

    return np.asarray(get_benchmark("figure8").sample(jax.random.PRNGKey(1), 5000).x, np.float32)


def torch_restart_steps_per_second(objective: str, samples: int, latent_dim: int, restarts: int = 10,
                                   batch: int = 100, steps: int = 2000, x: np.ndarray | None = None,
                                   threads: int | None = None, warmup: str = "discard") -> float:
    """Restart-steps per second of the eager baseline: ``restarts`` restarts one after another.

    Warm-up is excluded in one of two ways. ``warmup="difference"`` is exactly vaefail's
    ``restart_steps_per_second``: a run of ``steps // 4`` steps per restart and one of ``steps + steps // 4``,
    and the difference in wall time covers ``restarts * steps`` steps. ``warmup="discard"`` (the default)
    runs the ``steps // 4`` warm-up untimed and then times ``restarts * steps`` steps directly. torch compiles
    nothing, so both remove the same start-up (first-call allocations; model construction is about 1 ms
    per restart against seconds of training); the difference of two noisy timings, however, is fragile on
    a loaded machine (measured: it came out negative at torch's default thread count with a load average
    of 3.5 on 2 cores), while the direct timing cannot.

    ``threads=None`` keeps torch's default intra-op thread count (one per core); ``threads=1`` is faster
    for a model this small, and far faster when other processes load the cores (OpenMP threads then wait
    on each other at every op).
    """
    if warmup not in ("discard", "difference"):
        raise ValueError(f"warmup must be 'discard' or 'difference', got {warmup!r}")
    xt = torch.from_numpy(figure8_train_x() if x is None else np.asarray(x, np.float32))
    with torch_threads(threads):
        return _time_restarts(xt, objective, samples, latent_dim, restarts, batch, steps, warmup)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: leave the current setting)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _time_restarts(xt: torch.Tensor, objective: str, samples: int, latent_dim: int, restarts: int,
                   batch: int, steps: int, warmup: str) -> float:
    def go(n: int, restarts: int = restarts) -> float:
        t = time.perf_counter()
        for r in range(restarts):
            train_restart(xt, objective, samples, latent_dim, n, batch, seed=r)
        return time.perf_counter() - t

    if warmup == "discard":
        go(max(steps // 4, 1), restarts=1)
        return restarts * steps / go(steps)
    warm = go(steps // 4)
    full = go(steps + steps // 4)
    return restarts * steps / (full - warm)


# --------------------------------------------------------------------------------------------------
# Weight transfer from vaefail and the same-objective check
# --------------------------------------------------------------------------------------------------


def vaefail_layers(model) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``{"encoder": [(W, b), ...], "decoder": [...]}`` of a single vaefail VAE (``W`` is ``(out, in)``)."""
    return {
        part: [(np.array(layer.weight), np.array(layer.bias)) for layer in getattr(model, part).net.layers]
        for part in ("encoder", "decoder")
    }


def torch_from_layers(layers: dict[str, list[tuple[np.ndarray, np.ndarray]]], sigma_eps: float) -> TorchVAE:
    """A :class:`TorchVAE` holding these weights (``equinox.nn.Linear`` and ``nn.Linear`` share a layout)."""
    enc, dec = layers["encoder"], layers["decoder"]
    x_dim, latent_dim = enc[0][0].shape[1], dec[0][0].shape[1]
    model = TorchVAE(x_dim, latent_dim, sigma_eps, width=enc[0][0].shape[0], depth=len(enc) - 1)
    with torch.no_grad():
        for seq, arrays in ((model.encoder, enc), (model.decoder, dec)):
            linears = [m for m in seq if isinstance(m, nn.Linear)]
            for lin, (w, b) in zip(linears, arrays, strict=True):
                lin.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
                lin.bias.copy_(torch.from_numpy(np.array(b, np.float32)))
    return model


def torch_from_vaefail(model) -> TorchVAE:
    """Copy a single (unstacked) vaefail VAE with an MLP decoder into a :class:`TorchVAE`."""
    return torch_from_layers(vaefail_layers(model), float(model.sigma))


@dataclass(frozen=True)
class SameObjective:
    """Largest per-point difference of the bounds and largest relative gradient difference."""

    objective: str
    samples: int
    latent_dim: int
    max_abs_bound_diff: float
    max_rel_grad_diff: float
    mean_bound: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_bound_diff <= self.tol and self.max_rel_grad_diff <= self.tol

    def __str__(self) -> str:
        name = "ELBO" if self.objective == "vae" else f"IWAE S={self.samples}"
        return (f"{name:12s} K={self.latent_dim}: max |bound_torch - bound_vaefail| per point "
                f"{self.max_abs_bound_diff:.1e} (mean bound {self.mean_bound:.4f}), max relative gradient "
                f"difference {self.max_rel_grad_diff:.1e} -> {'OK' if self.ok else 'FAIL'} "
                f"(tol {self.tol:g})")


def check_same_objective(objective: str = "vae", samples: int = 1, latent_dim: int = 1, batch: int = 100,
                         seed: int = 0, tol: float = 1e-4) -> SameObjective:
    """Same weights, same batch, same noise: compare vaefail's bound and its gradient with the torch code.

    A fresh vaefail model (``make_vae`` with the figure8 sizes) is copied into a :class:`TorchVAE`. The
    noise is the exact noise vaefail's ``elbo`` / ``iwae`` draw internally from ``key`` (per point
    ``normal(split(key, n)[i], (K, S))``), regenerated here and handed to the torch functions. Compared:
    the per-point bound (``vaefail.objectives.bound_fn``) and the gradient of the training loss
    (``vaefail.objectives.loss_fn``) with respect to every weight, as ``max |g_t - g_v| / max |g_v|`` per
    array.
    """
    import equinox as eqx
    import jax

    from vaefail.models import make_vae
    from vaefail.objectives import bound_fn, loss_fn

    x = figure8_train_x()[:batch].copy()
    vmodel = make_vae(2, latent_dim, FIGURE8_SIGMA, key=jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 1)
    s = 1 if objective == "vae" else samples
    v_bound = np.asarray(bound_fn(objective, s)(vmodel, x, key).bound)
    v_grads = eqx.filter_grad(lambda m: loss_fn(objective, s)(m, x, key)[0])(vmodel)

    eps = np.array(jax.vmap(lambda k: jax.random.normal(k, (latent_dim, s)))(jax.random.split(key, batch)))
    tmodel = torch_from_vaefail(vmodel)
    xt = torch.from_numpy(x)
    if objective == "vae":
        t_bound = elbo(tmodel, xt, torch.from_numpy(eps[:, :, 0]))
    else:
        t_bound = iwae_bound(tmodel, xt, s, torch.from_numpy(eps.transpose(2, 0, 1).copy()))
    (-t_bound.mean()).backward()

    rel = 0.0
    for part in ("encoder", "decoder"):
        linears = [m for m in getattr(tmodel, part) if isinstance(m, nn.Linear)]
        for lin, vlin in zip(linears, getattr(v_grads, part).net.layers, strict=True):
            for tg, vg in ((lin.weight.grad, vlin.weight), (lin.bias.grad, vlin.bias)):
                vg = np.asarray(vg)
                rel = max(rel, float(np.max(np.abs(tg.numpy() - vg)) / max(np.max(np.abs(vg)), 1e-30)))
    diff = float(np.max(np.abs(t_bound.detach().numpy() - v_bound)))
    return SameObjective(objective, s, latent_dim, diff, rel, float(v_bound.mean()), tol)


# --------------------------------------------------------------------------------------------------
# Side-by-side table
# --------------------------------------------------------------------------------------------------


def _vaefail_restart_steps_per_second():
    """``restart_steps_per_second`` from ``benchmarks/timing.py`` (the measurement the main table uses)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import restart_steps_per_second

    return restart_steps_per_second


def side_by_side(objective: str, samples: int, latent_dim: int, *, restarts: int = 10, steps: int = 2000,
                 repeats: int = 3, x: np.ndarray | None = None,
                 torch_steps: int | None = None) -> dict[str, float]:
    """Median restart-steps/s of vaefail and of the torch loop (default threads and 1 thread), interleaved.

    Returns ``{"vaefail", "torch", "torch_1thread", "ratio", "ratio_best", "load"}``: ``ratio`` is vaefail
    over torch at its default thread count (the issue's baseline), ``ratio_best`` over the faster of the two
    torch settings; ``load`` is the mean 1-minute load average seen during the measurement.
    ``torch_steps`` (default ``steps``) shortens the torch runs, whose rate does not depend on the run
    length once warm, but which can take minutes per run at torch's default thread count on a loaded
    machine.
    """
    torch_steps = torch_steps or steps
    vaefail_rate = _vaefail_restart_steps_per_second()
    x = figure8_train_x() if x is None else x
    runs: dict[str, list[float]] = {"vaefail": [], "torch": [], "torch_1thread": []}
    loads = []
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        runs["vaefail"].append(vaefail_rate(objective, samples, latent_dim, restarts=restarts, steps=steps))
        runs["torch"].append(torch_restart_steps_per_second(objective, samples, latent_dim, restarts,
                                                            steps=torch_steps, x=x))
        runs["torch_1thread"].append(torch_restart_steps_per_second(objective, samples, latent_dim, restarts,
                                                                    steps=torch_steps, x=x, threads=1))
    out = {name: statistics.median(v) for name, v in runs.items()}
    out["ratio"] = out["vaefail"] / out["torch"]
    out["ratio_best"] = out["vaefail"] / max(out["torch"], out["torch_1thread"])
    out["load"] = statistics.mean([*loads, os.getloadavg()[0]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--torch-steps", type=int, default=None,
                        help="steps per torch restart when timing (default: --steps)")
    args = parser.parse_args()

    print(f"torch {torch.__version__} (default {torch.get_num_threads()} threads); {os.cpu_count()} cores")
    print("same model and objective (vaefail weights copied into torch, same batch, same noise):")
    for objective, samples in (("vae", 1), ("iwae", 20)):
        for k in (1, 3):
            print("  ", check_same_objective(objective, samples, k))

    x = figure8_train_x()
    print(f"\n{args.restarts} restarts x {args.steps} steps (torch: {args.torch_steps or args.steps}), "
          f"batch 100, figure8; restart-steps/s, median of {args.repeats} interleaved runs")
    header = ("objective", "K", "vaefail", "torch", "torch 1 thr", "ratio", "ratio vs best torch", "load")
    print("{:>10s} {:>2s} {:>9s} {:>9s} {:>11s} {:>7s} {:>19s} {:>5s}".format(*header))
    for objective, samples in (("vae", 1), ("iwae", 20)):
        for k in (1, 3):
            r = side_by_side(objective, samples, k, restarts=args.restarts, steps=args.steps,
                             repeats=args.repeats, x=x, torch_steps=args.torch_steps)
            print(f"{objective + ' S=' + str(samples):>10s} {k:2d} {r['vaefail']:9,.0f} {r['torch']:9,.0f} "
                  f"{r['torch_1thread']:11,.0f} {r['ratio']:6.1f}x {r['ratio_best']:18.1f}x {r['load']:5.2f}")


if __name__ == "__main__":
    main()
