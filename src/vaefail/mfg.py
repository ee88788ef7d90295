"""The MFG-VAE / IWAE model family: its pieces of the restart protocol (:mod:`vaefail.protocol`).

Truth-started restarts regress the decoder onto ``f_gt``, then (:meth:`MFGFamily.warm_start`) regress the
encoder onto the exact posterior's moments, then train the encoder on the objective with the decoder frozen.
Restarts are evaluated by their mean bounds (:func:`evaluate_bounds`) and selected by the validation bound.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail._jax import materialise
from vaefail.benchmarks import Benchmark, Splits
from vaefail.config import FitConfig
from vaefail.errors import ConfigError
from vaefail.models import VAE, TrueDecoder, make_vae
from vaefail.objectives import MeanBound, Objective, elbo
from vaefail.protocol import ModelFamily, truth_with_best_inference
from vaefail.quadrature import posterior_moments_1d
from vaefail.stacking import stack
from vaefail.training import Loss, optimise

#: The truth's encoder trains for at least this many steps (one restart, encoder only: cheap), so that
#: a short preset does not handicap the truth in the truth-vs-learned comparison.
TRUTH_MIN_STEPS = 20000


def require_unlabelled(benchmark: Benchmark) -> Benchmark:
    """``benchmark`` itself, or a :class:`ConfigError` if it is labelled (fit that with M2)."""
    if benchmark.labelled:
        raise ConfigError(
            f"{benchmark.name!r} is a labelled benchmark: fit it with "
            "vaefail.semisupervised.run_semisupervised, not the unsupervised fit"
        )
    return benchmark


def init_models(config: FitConfig, benchmark: Benchmark, keys: list[jax.Array]) -> VAE:
    """Freshly initialised stacked models, one per key."""
    sigma = benchmark.sigma_eps if config.sigma_eps is None else config.sigma_eps
    return stack(
        [
            make_vae(
                benchmark.x_dim, config.latent_dim, sigma, key=k, learn_sigma=config.learn_sigma,
                width=config.hidden_width, depth=config.hidden_depth, activation=config.activation,
            )
            for k in keys
        ]
    )


@functools.lru_cache(maxsize=32)
def _decoder_fit_loss(benchmark: Benchmark, latent_dim: int) -> Loss:
    """``(1/B) sum_b ||f_theta(z_b) - f_gt(z_b[:K_gt])||^2`` with fresh ``z_b ~ N(0, I_K)`` (batch 512), so
    extra latent dimensions are taught to be ignored (one object per benchmark and K: compiled once)."""

    def loss(model, _batch, k):
        z = materialise(jax.random.normal(k, (512, latent_dim)))
        pred = jax.vmap(model.decoder)(z)
        target = jax.vmap(benchmark.f_gt)(z[:, : benchmark.latent_dim])
        return jnp.mean(jnp.sum((pred - target) ** 2, axis=-1)), None

    return loss


def encoder_targets(benchmark: Benchmark, x: np.ndarray, latent_dim: int) -> np.ndarray:
    """Mean and log-std of the exact posterior ``p_gt(z|x)``, per point, as encoder regression targets.

    The first ``benchmark.latent_dim`` coordinates get the moments of the exact posterior
    (:func:`vaefail.quadrature.posterior_moments_1d` on 8,001 nodes over ``[-8, 8]``, fine enough for every
    benchmark); extra coordinates, which the truth's decoder ignores, get the prior's (mean 0, log-std 0).
    Returns shape ``(n, 2K)``: means, then log-stds.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    mean = np.zeros((len(x), latent_dim))
    log_std = np.zeros((len(x), latent_dim))
    mean[:, 0], log_std[:, 0] = _exact_posterior_moments(benchmark, x.tobytes(), x.shape)
    return np.concatenate([mean, log_std], axis=1)


@functools.lru_cache(maxsize=4)
def _exact_posterior_moments(
    benchmark: Benchmark, x_bytes: bytes, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-std of ``z`` per point (cached: the truth restarts and the truth model of
    one fit warm-start on the same points)."""
    x = np.frombuffer(x_bytes, dtype=np.float64).reshape(shape)
    return posterior_moments_1d(benchmark.posterior, x, np.linspace(-8.0, 8.0, 8001))


def _encoder_regression_loss(model: VAE, batch: jax.Array, _key: jax.Array) -> tuple[jax.Array, None]:
    """``mean_b ||mu_phi(x_b) - m_b||^2 + ||log sigma_phi(x_b) - log s_b||^2``, rows ``[x, m, log s]``."""
    d = model.x_dim
    mu, log_std = jax.vmap(model.encoder)(batch[:, :d])
    k = mu.shape[1]
    err = (mu - batch[:, d : d + k]) ** 2 + (log_std - batch[:, d + k :]) ** 2
    return jnp.mean(jnp.sum(err, axis=1)), None


def warm_start_encoder(
    models: VAE, benchmark: Benchmark, x: np.ndarray, key: jax.Array, *, steps: int, progress: bool = False
) -> VAE:
    """Regress each restart's encoder onto the exact posterior's moments (decoder untouched).

    A starting point for the "best encoder" of a truth decoder: moment matching gives the mass-covering
    Gaussian, and the training that follows (:func:`vaefail.protocol.fit_inference`) moves it to the
    objective's own optimum. Uses at most 2,000 points of ``x``.
    """
    x = np.asarray(x[:2000], dtype=np.float64)
    targets = encoder_targets(benchmark, x, models.latent_dim)
    data = _as_f32(np.concatenate([x, targets], axis=1))
    return optimise(
        models, _encoder_regression_loss, data, key, steps=steps, batch_size=256, learning_rate=3e-3,
        final_lr_factor=0.03, trainable=lambda m: m.encoder, eval_every=max(1, steps // 10),
        description="encoder to exact posterior", progress=progress,
    ).model


def _as_f32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def objective_of(config: FitConfig, *, evaluation: bool = False) -> Objective:
    """The config's objective with its training samples (``evaluation=False``) or evaluation samples."""
    samples = config.eval_num_samples if evaluation else config.train_samples
    return Objective(config.objective, samples, config.dreg and not evaluation)


@eqx.filter_jit
def _chunk_bounds(params, xc, key, *, static, score, samples):
    """Per restart: ``score`` (the training bound) and the mean ELBO with ``samples`` draws on ``xc``."""

    def one(p):
        model = eqx.combine(p, static)
        return score(model, (xc, key)), jnp.mean(elbo(model, xc, jax.random.fold_in(key, 1), samples).bound)

    return jax.vmap(one)(params)


def evaluate_bounds(
    models: VAE, x: np.ndarray, config: FitConfig, key: jax.Array, chunk: int = 500
) -> dict[str, np.ndarray]:
    """Mean ELBO and mean training-objective bound of every stacked restart on ``x``.

    Returns ``{"elbo": (R,), "bound": (R,)}``: ``elbo`` is ``(1/n) sum_i ELBO(x_i)`` with
    ``eval_samples`` samples per point; ``bound`` is the training objective's bound (equal in
    expectation to ``elbo`` for ``vae``; ``IWAE_S`` for ``iwae``). Points are processed in chunks of
    ``chunk`` (chunk ``i`` draws from ``fold_in(key, i)``); the default 500 divides the default and preset
    split sizes (500, 1,000, 2,000), so every split reuses one compiled program.
    """
    params, static = eqx.partition(models, eqx.is_inexact_array)
    score = MeanBound(objective_of(config, evaluation=True))
    xs = _as_f32(x)
    totals = {"bound": 0.0, "elbo": 0.0}
    for i, start in enumerate(range(0, len(xs), chunk)):
        xc = xs[start : start + chunk]
        bound, elbo_mean = _chunk_bounds(
            params, xc, jax.random.fold_in(key, i), static=static, score=score, samples=config.eval_samples
        )
        totals["bound"] = totals["bound"] + np.asarray(bound, np.float64) * len(xc) / len(xs)
        totals["elbo"] = totals["elbo"] + np.asarray(elbo_mean, np.float64) * len(xc) / len(xs)
    return totals


class MFGFamily(ModelFamily):
    """The MFG-VAE and the IWAE: ``p(z) = N(0, I)``, ``p_theta(x|z) = N(f_theta(z), sigma_eps^2 I)``,
    ``q(z|x) = N(mu_phi(x), diag sigma_phi(x)^2)``, trained on the ELBO or the IWAE bound."""

    name = "vae"
    selection = "val_bound"
    config_type = FitConfig
    #: The decoder fit and the warm start read neither the objective, sigma_eps's mode, nor the main
    #: training's or the optimiser's fields; the encoder fit (decoder and sigma_eps frozen) reads everything
    #: but sigma_eps's mode and the main training's step budget.
    start_ignores = {
        "decoder": frozenset({"objective", "num_samples", "dreg", "learn_sigma", "steps", "batch_size",
                              "learning_rate", "final_lr_factor", "eval_every", "patience", "tol", "converge",
                              "eval_samples"}),
        "inference": frozenset({"learn_sigma", "steps"}),
    }

    def make_data(self, benchmark: Benchmark, config: FitConfig) -> Splits:
        return require_unlabelled(benchmark).splits(config.n_train, config.n_val, config.n_test,
                                                    seed=config.split_seed)

    def init(self, config: FitConfig, benchmark: Benchmark, keys: list[jax.Array]) -> VAE:
        return init_models(config, benchmark, keys)

    def train_data(self, data: Splits) -> jax.Array:
        return _as_f32(data.train.x)

    def val_data(self, data: Splits) -> jax.Array:
        return _as_f32(data.val.x)

    def decoder_fit_loss(self, benchmark: Benchmark, model: VAE) -> Loss:
        return _decoder_fit_loss(benchmark, model.latent_dim)

    def warm_start(self, models: VAE, benchmark: Benchmark, data: Splits, key: jax.Array, config: FitConfig,
                   *, progress: bool = False) -> VAE:
        return warm_start_encoder(models, benchmark, data.train.x, key, steps=config.init_steps,
                                  progress=progress)

    def loss(self, config: FitConfig) -> Objective:
        return objective_of(config)

    def score(self, config: FitConfig) -> MeanBound:
        return MeanBound(objective_of(config, evaluation=True))

    def evaluate(self, models: VAE, data: Splits, config: FitConfig, key: jax.Array) -> dict[str, np.ndarray]:
        # the train bound is a diagnostic (over-fitting); its first 2,000 points are plenty for that
        bounds = {
            part: evaluate_bounds(models, getattr(data, part).x[:limit], config, key)
            for part, limit in (("train", 2000), ("val", None), ("test", None))
        }
        return {
            "train_bound": bounds["train"]["bound"],
            "val_bound": bounds["val"]["bound"],
            "test_bound": bounds["test"]["bound"],
            "test_elbo": bounds["test"]["elbo"],
            "sigma_eps": np.exp(np.asarray(models.log_sigma, dtype=np.float64)),
        }

    def summary(self, columns: dict[str, np.ndarray], selected: int, benchmark: Benchmark, data: Splits,
                config: FitConfig) -> dict[str, Any]:
        return {
            "train_bound": float(columns["train_bound"][selected]),
            "val_bound": float(columns["val_bound"][selected]),
            "test_bound": float(columns["test_bound"][selected]),
            "test_elbo": float(columns["test_elbo"][selected]),
            "test_log_prob_true": float(np.mean(benchmark.log_prob(data.test.x))),
        }

    def truth_summary(self, benchmark: Benchmark, data: Splits, config: FitConfig, key: jax.Array,
                      eval_key: jax.Array, *, progress: bool = False) -> tuple[dict[str, Any], VAE]:
        model = truth_model(self, benchmark, data, config, key, progress=progress)
        tb = evaluate_bounds(stack([model]), data.test.x, config, eval_key)
        return {"truth_test_bound": float(tb["bound"][0]), "truth_test_elbo": float(tb["elbo"][0])}, model


def truth_model(
    family: MFGFamily, benchmark: Benchmark, splits: Splits, config: FitConfig, key: jax.Array, *,
    progress: bool = False,
) -> VAE:
    """The ground-truth model (exact decoder ``f_gt``, true ``sigma_eps``) with its best encoder.

    The encoder is warm-started on the exact posterior's moments (:func:`warm_start_encoder`, key
    ``fold_in(key, 2)``), then trained to convergence with the decoder fixed at the truth, using the same
    objective and optimiser as the restarts and at least :data:`TRUTH_MIN_STEPS` steps, so
    ``bound(truth) - bound(learned)`` measures how far the truth is from the objective's optimum for this
    encoder network. Extra latent dimensions (``K`` above the benchmark's) are ignored by the true decoder.
    """
    decoder = TrueDecoder(f_gt=benchmark.f_gt, true_latent_dim=benchmark.latent_dim)
    model = make_vae(
        benchmark.x_dim, config.latent_dim, benchmark.sigma_eps, key=key,
        width=config.hidden_width, depth=config.hidden_depth, activation=config.activation,
        decoder=decoder,
    )
    models = warm_start_encoder(
        stack([model]), benchmark, splits.train.x, jax.random.fold_in(key, 2),
        steps=max(config.init_steps, 1), progress=progress,
    )
    return truth_with_best_inference(family, models, splits, config, key,
                                     steps=max(config.steps, TRUTH_MIN_STEPS), progress=progress)


MFG = MFGFamily()
