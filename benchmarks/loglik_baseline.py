"""Importance-sampled log-likelihood: vaefail's estimator against the per-datapoint loop of pythae.

The baseline is the evaluation loop of pythae (the most used VAE library; ``BaseAE.get_nll`` /
``VAE.get_nll``), in PyTorch, on the same model (:class:`torch_baseline.TorchVAE` with a vaefail model's
weights copied in): for each data point, repeat it ``batch_size`` times, encode, draw one ``z`` per copy
from ``q(z|x)``, compute ``log p(x|z) + log p(z) - log q(z|x)``, do that ``n_samples // batch_size`` times,
then ``logsumexp - log n_samples``. Two changes from pythae, both in the baseline's favour or neutral: it
runs under ``torch.no_grad()`` (pythae's ``get_nll`` does not), and ``log p(x|z)`` is the model's
Gaussian with its ``sigma_eps`` (pythae's "mse" assumes unit variance). It also keeps ``logsumexp(2 log w)``
per point (one more reduction) so its Monte-Carlo error can be compared.

vaefail's estimator is :func:`vaefail.metrics.log_likelihood` (the same estimator, ``IWAE_S(x)``, computed
in fused chunks of points x samples). At the same ``S`` (5,000 per point) both estimates of every point
must agree within their Monte-Carlo standard errors (:func:`agreement`), so the speed ratio is at equal
accuracy.

Peak memory is measured in a fresh subprocess per estimator (:func:`peak_memory`), so neither sees the
other's libraries, from the kernel's counters in ``/proc/self/status``: the peak resident set of the whole
process (``VmHWM``, imports and model included) and the rise of the resident set during the estimation
call alone (``VmHWM`` after the call, reset through ``/proc/self/clear_refs`` just before it, minus
``VmRSS`` before it). ``getrusage``'s ``ru_maxrss`` is not used: a child started with fork + exec inherits
the parent's peak at the fork, so it would report the (larger) parent's size.

Run ``python benchmarks/loglik_baseline.py``; needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TORCH_MISSING = "PyTorch is not installed; the baselines need the bench extra: pip install -e '.[bench]'"
LOG_2PI = math.log(2.0 * math.pi)

Layers = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def _torch_baseline():
    """The sibling module ``torch_baseline`` (imports torch; a clear error if it is missing)."""
    if importlib.util.find_spec("torch") is None:
        raise ModuleNotFoundError(TORCH_MISSING)
    sys.path.insert(0, str(HERE))
    import torch_baseline

    return torch_baseline


# --------------------------------------------------------------------------------------------------
# The per-datapoint loop (pythae's get_nll, on the torch model)
# --------------------------------------------------------------------------------------------------


def torch_loop_log_likelihood(model, x: np.ndarray, n_samples: int = 5000,
                              batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per-point ``log p(x)`` estimates and effective sample sizes, one data point at a time.

    ``model`` is a :class:`torch_baseline.TorchVAE`. As pythae: ``n_samples // batch_size`` batches of
    ``batch_size`` importance samples per point (``n_samples`` itself when it is at most ``batch_size``).
    """
    import torch

    if n_samples <= batch_size:
        n_full_batch, batch_size = 1, n_samples
    else:
        n_full_batch = n_samples // batch_size
    data = torch.from_numpy(np.asarray(x, np.float32))
    log_p, ess = [], []
    with torch.no_grad():
        for i in range(len(data)):
            xi = data[i].unsqueeze(0)
            log_w = []
            for _ in range(n_full_batch):
                x_rep = torch.cat(batch_size * [xi])
                mu, log_std = model.encode(x_rep)
                z = mu + log_std.exp() * torch.randn_like(mu)
                log_q = (-0.5 * ((z - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)
                log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
                log_w.append(model.log_likelihood(x_rep, z) + log_prior - log_q)
            lw = torch.cat(log_w)
            lse = torch.logsumexp(lw, 0)
            log_p.append((lse - math.log(len(lw))).item())
            ess.append(torch.exp(2 * lse - torch.logsumexp(2 * lw, 0)).item())
    return np.array(log_p), np.array(ess)


def torch_loop_points_per_second(layers: Layers, sigma: float, x: np.ndarray, n_samples: int = 5000,
                                 batch_size: int = 100, threads: int | None = None) -> float:
    """Points per second of :func:`torch_loop_log_likelihood` (``threads=None``: torch's default)."""
    tb = _torch_baseline()
    model = tb.torch_from_layers(layers, sigma)
    with tb.torch_threads(threads):
        torch_loop_log_likelihood(model, x[:2], n_samples, batch_size)  # first-call allocations
        t = time.perf_counter()
        torch_loop_log_likelihood(model, x, n_samples, batch_size)
        return len(x) / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------------
# vaefail's estimator
# --------------------------------------------------------------------------------------------------


def fit_vaefail_model(latent_dim: int = 1, steps: int = 3000, seed: int = 0):
    """One figure8 VAE trained by vaefail (``optimise``, ELBO, batch 100, Adam 1e-3): weights with a
    realistic posterior mismatch, so the importance weights are as uneven as in practice."""
    import jax
    import jax.numpy as jnp

    from vaefail.benchmarks import get_benchmark
    from vaefail.config import FitConfig
    from vaefail.mfg import init_models
    from vaefail.objectives import loss_fn
    from vaefail.stacking import take
    from vaefail.training import optimise

    bench = get_benchmark("figure8")
    models = init_models(FitConfig(restarts=1, latent_dim=latent_dim), bench, [jax.random.PRNGKey(seed)])
    x = jnp.asarray(bench.splits().train.x, jnp.float32)
    out = optimise(models, loss_fn("vae", 1), x, jax.random.PRNGKey(seed + 1), steps=steps, batch_size=100,
                   learning_rate=1e-3, eval_every=steps, progress=False)
    return take(out.model, 0)


def vaefail_from_layers(layers: Layers, sigma: float):
    """A vaefail VAE holding these weights (the inverse of ``torch_baseline.vaefail_layers``)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from vaefail.models import make_vae

    enc, dec = layers["encoder"], layers["decoder"]
    model = make_vae(enc[0][0].shape[1], dec[0][0].shape[1], sigma, key=jax.random.PRNGKey(0),
                     width=enc[0][0].shape[0], depth=len(enc) - 1)
    for part, arrays in layers.items():
        for i, (w, b) in enumerate(arrays):
            model = eqx.tree_at(lambda m, part=part, i=i: (getattr(m, part).net.layers[i].weight,
                                                          getattr(m, part).net.layers[i].bias),
                                model, (jnp.asarray(w), jnp.asarray(b)))
    return model


def vaefail_log_likelihood(model, x: np.ndarray, n_samples: int = 5000, seed: int = 0):
    """:func:`vaefail.metrics.log_likelihood` with its default chunking."""
    import jax

    from vaefail.metrics import log_likelihood

    return log_likelihood(model, x, jax.random.PRNGKey(seed), num_samples=n_samples)


def vaefail_points_per_second(model, x: np.ndarray, n_samples: int = 5000, seed: int = 0) -> float:
    """Points per second of :func:`vaefail_log_likelihood` once compiled (a first call warms up)."""
    vaefail_log_likelihood(model, x, n_samples, seed)
    t = time.perf_counter()
    vaefail_log_likelihood(model, x, n_samples, seed + 1)
    return len(x) / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------------
# Equal accuracy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Per-point comparison of two importance-sampling estimates with ``S`` samples each.

    ``z_i = (a_i - b_i) / sqrt(v_a,i + v_b,i)`` with the delta-method variances ``v = 1/ESS - 1/S`` (as
    ``LogLikelihood.mc_stderr``). For the same estimator, ``|z| < 2`` for about 95% of points.
    """

    n: int
    within_2se: float
    within_3se: float
    max_abs_z: float
    mean_diff: float
    mean_diff_se: float
    median_ess_torch: float
    median_ess_vaefail: float

    def __str__(self) -> str:
        return (f"{self.n} points: |difference| < 2 MC standard errors for {self.within_2se:.1%}, < 3 for "
                f"{self.within_3se:.1%} (max |z| {self.max_abs_z:.1f}); mean difference (loop - vaefail) "
                f"{self.mean_diff:+.4f} +- {self.mean_diff_se:.4f} nats; median ESS "
                f"{self.median_ess_torch:,.0f} (loop) / {self.median_ess_vaefail:,.0f} (vaefail) of S")


def agreement(a: np.ndarray, ess_a: np.ndarray, b: np.ndarray, ess_b: np.ndarray,
              n_samples: int) -> Agreement:
    """Compare per-point estimates ``a`` (torch loop) and ``b`` (vaefail) with their ESS."""
    var = np.maximum(1 / ess_a - 1 / n_samples, 0) + np.maximum(1 / ess_b - 1 / n_samples, 0)
    z = (a - b) / np.sqrt(np.maximum(var, 1e-300))
    return Agreement(
        n=len(a), within_2se=float(np.mean(np.abs(z) < 2)), within_3se=float(np.mean(np.abs(z) < 3)),
        max_abs_z=float(np.max(np.abs(z))), mean_diff=float(np.mean(a - b)),
        mean_diff_se=float(np.sqrt(np.sum(var)) / len(a)),
        median_ess_torch=float(np.median(ess_a)), median_ess_vaefail=float(np.median(ess_b)),
    )


# --------------------------------------------------------------------------------------------------
# Peak memory, each estimator alone in a fresh process
# --------------------------------------------------------------------------------------------------


def save_problem(path: Path, layers: Layers, sigma: float, x: np.ndarray) -> None:
    """Weights, ``sigma_eps`` and data in one ``.npz`` for :func:`peak_memory`'s subprocess."""
    arrays = {f"{part}_{kind}{i}": a for part, ls in layers.items() for i, wb in enumerate(ls)
              for kind, a in zip("wb", wb, strict=True)}
    np.savez(path, sigma=sigma, x=x, **arrays)


def load_problem(path: Path) -> tuple[Layers, float, np.ndarray]:
    with np.load(path) as f:
        layers: Layers = {}
        for part in ("encoder", "decoder"):
            n = sum(1 for k in f.files if k.startswith(f"{part}_w"))
            layers[part] = [(f[f"{part}_w{i}"], f[f"{part}_b{i}"]) for i in range(n)]
        return layers, float(f["sigma"]), np.array(f["x"])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(which: str, problem: Path, n_samples: int) -> None:
    """Run one estimator on the saved problem and print its memory figures as JSON (subprocess side)."""
    layers, sigma, x = load_problem(problem)
    if which == "torch":
        model = _torch_baseline().torch_from_layers(layers, sigma)
        run = lambda: torch_loop_log_likelihood(model, x, n_samples)
    else:
        model = vaefail_from_layers(layers, sigma)
        run = lambda: vaefail_log_likelihood(model, x, n_samples)
    before, hwm_before = _status_mb("VmRSS"), _status_mb("VmHWM")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    t = time.perf_counter()
    run()
    wall = time.perf_counter() - t
    hwm_after = _status_mb("VmHWM")
    print(json.dumps({"rss_before_mb": before, "hwm_before_mb": hwm_before, "hwm_after_mb": hwm_after,
                      "hwm_reset": reset, "wall_s": wall}))


def peak_memory(which: str, layers: Layers, sigma: float, x: np.ndarray, n_samples: int = 5000) -> dict:
    """Memory of one estimator (``"torch"`` loop or ``"vaefail"``) on ``x`` in a fresh Python process.

    Returns ``peak_rss_mb`` (the whole process's peak resident set, ``VmHWM``, imports included),
    ``rise_mb`` (growth of the resident set during the call alone; an upper bound if ``rise_exact`` is
    false because the peak could not be reset) and ``wall_s``, the call's wall time (for vaefail this
    includes compilation, or loading it from the persistent XLA cache).
    """
    with tempfile.TemporaryDirectory() as tmp:
        problem = Path(tmp) / "problem.npz"
        save_problem(problem, layers, sigma, x)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", which, str(problem),
               "--samples", str(n_samples)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for {which} failed with exit code {proc.returncode}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": max(info["hwm_before_mb"], info["hwm_after_mb"]),
            "rise_mb": info["hwm_after_mb"] - info["rss_before_mb"], "rise_exact": info["hwm_reset"],
            "wall_s": info["wall_s"]}


# --------------------------------------------------------------------------------------------------
# Side by side
# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="importance samples per point")
    parser.add_argument("--loop-points", type=int, default=200, help="test points for the torch loop")
    parser.add_argument("--points", type=int, default=2000, help="test points for vaefail")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--latent-dim", type=int, default=1)
    parser.add_argument("--memory-child", nargs=2, metavar=("WHICH", "PROBLEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("torch") is None:
        sys.exit(TORCH_MISSING)
    if args.memory_child:
        _memory_child(args.memory_child[0], Path(args.memory_child[1]), args.samples)
        return

    import jax

    from vaefail.benchmarks import get_benchmark
    from vaefail.metrics import exact_log_likelihood

    tb = _torch_baseline()
    import torch

    print(f"torch {torch.__version__} (default {torch.get_num_threads()} threads), jax {jax.__version__}; "
          f"{os.cpu_count()} cores; S = {args.samples:,} importance samples per point")
    bench = get_benchmark("figure8")
    x_test = np.asarray(bench.splits().test.x[: args.points], np.float32)
    x_loop = x_test[: args.loop_points]
    model = fit_vaefail_model(args.latent_dim)
    layers, sigma = tb.vaefail_layers(model), float(model.sigma)

    # equal accuracy: the same estimator on the same points, independent samples
    ll_v = vaefail_log_likelihood(model, x_test, args.samples)
    lp_t, ess_t = torch_loop_log_likelihood(tb.torch_from_layers(layers, sigma), x_loop, args.samples)
    n = len(x_loop)
    print("accuracy:", agreement(lp_t, ess_t, ll_v.per_point[:n], ll_v.ess[:n], args.samples))
    if args.latent_dim <= 2:
        exact = exact_log_likelihood(model, x_loop).per_point
        print(f"          bias against exact quadrature on those points: loop {np.mean(lp_t - exact):+.4f}, "
              f"vaefail {np.mean(ll_v.per_point[:n] - exact):+.4f} nats/point")

    rates: dict[str, list[float]] = {"vaefail": [], "loop": [], "loop_1thread": []}
    loads = []
    for r in range(args.repeats):
        loads.append(os.getloadavg()[0])
        rates["vaefail"].append(vaefail_points_per_second(model, x_test, args.samples, seed=10 + r))
        rates["loop"].append(torch_loop_points_per_second(layers, sigma, x_loop, args.samples))
        rates["loop_1thread"].append(torch_loop_points_per_second(layers, sigma, x_loop, args.samples,
                                                                  threads=1))
    loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in rates.items()}
    mem = {"vaefail": peak_memory("vaefail", layers, sigma, x_test, args.samples),
           "loop": peak_memory("torch", layers, sigma, x_loop, args.samples)}
    print(f"\nthroughput, median of {args.repeats} (load average {statistics.mean(loads):.2f}); "
          "memory in a fresh process per estimator\n(peak RSS = VmHWM of the process; "
          "rise = VmHWM - VmRSS over the call)")
    print(f"{'estimator':<44s} {'points':>6s} {'points/s':>9s} {'peak RSS':>9s} {'rise':>8s}")
    rows = (("vaefail.metrics.log_likelihood", args.points, med["vaefail"], mem["vaefail"]),
            ("pythae-style loop, torch default threads", n, med["loop"], mem["loop"]),
            ("pythae-style loop, torch 1 thread", n, med["loop_1thread"], None))
    for name, pts, rate, m in rows:
        memtxt = f"{m['peak_rss_mb']:7,.0f}MB {m['rise_mb']:6,.0f}MB" if m else f"{'':>9s} {'':>8s}"
        print(f"{name:<44s} {pts:6d} {rate:9,.1f} {memtxt}")
    print(f"ratio vaefail / loop: {med['vaefail'] / med['loop']:.1f}x (default threads), "
          f"{med['vaefail'] / max(med['loop'], med['loop_1thread']):.1f}x (against the faster loop)")
    print(f"vaefail first call in a fresh process (compilation or XLA cache load included): "
          f"{mem['vaefail']['wall_s']:.1f} s for {args.points} points")


if __name__ == "__main__":
    main()
