"""Where is the ELBO's optimum without amortisation? Semi-amortised fine-tuning and optimal warm starts.

Two experiments on a fitted run (:class:`vaefail.results.FitResult`):

- :func:`semi_amortised_finetune`: the decoder is trained jointly with one free Gaussian
  ``q_i = N(m_i, diag s_i^2)`` per training point (no encoder network; Kim et al. 2018's semi-amortised
  VI without the encoder), maximising ``(1/n) sum_i ELBO_{q_i}(x_i)``. At its optimum the decoder is
  judged by ``ELBO*`` rather than by what one encoder network can express.
  :func:`amortisation_study` fine-tunes the selected learned decoder and an MLP fitted to the truth and
  reports whether each moves toward or away from the truth (MLEO = KL(p_gt(x) || p_theta(x)), exact) and
  what happens to its test ``ELBO*``.
- :func:`truth_at_optimum`: the truth's encoder warm-started by regression onto each training point's
  *optimal* Gaussian (the solution of :func:`vaefail.metrics.posterior.gaussian_gap`, on the mode the
  reverse KL prefers) instead of the posterior's moments (which lie between the modes of a bimodal
  posterior), then trained on the ELBO as :func:`vaefail.mfg.truth_model` does; the study reports
  how much of the truth's amortisation gap this closes.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.errors import ConfigError, require
from vaefail.metrics._stats import Estimate
from vaefail.metrics.likelihood import exact_log_likelihood
from vaefail.metrics.optimal import OptimalBound, amortised_elbo, optimal_bound
from vaefail.metrics.posterior import gaussian_gap
from vaefail.mfg import MFG, TRUTH_MIN_STEPS, _encoder_regression_loss, init_models, truth_model
from vaefail.models import VAE, TrueDecoder, make_vae
from vaefail.protocol import fit_decoder_to_truth, fit_inference
from vaefail.stacking import stack, take
from vaefail.training import optimise


class SemiAmortised(eqx.Module):
    """A VAE's decoder with one free diagonal Gaussian per training point (rows of ``mean``, ``log_std``)."""

    vae: VAE
    mean: jax.Array
    log_std: jax.Array


def _semi_amortised_loss(w: SemiAmortised, batch: jax.Array, key: jax.Array) -> tuple[jax.Array, None]:
    """``-mean_b ELBO_{q_b}(x_b)``, one reparameterised draw per row, KL to the prior analytic; rows of
    ``batch`` are ``[x, index]``."""
    d = w.vae.x_dim
    x, idx = batch[:, :d], batch[:, d].astype(jnp.int32)
    m, log_s = w.mean[idx], w.log_std[idx]
    z = m + jnp.exp(log_s) * jax.random.normal(key, m.shape)
    ll = w.vae.log_likelihood_columns(x.T, z.T)
    kl = 0.5 * jnp.sum(m**2 + jnp.exp(2 * log_s) - 1.0 - 2.0 * log_s, axis=1)
    return -jnp.mean(ll - kl), None


def semi_amortised_finetune(
    model: VAE, x: np.ndarray, key: jax.Array, *, steps: int = 10000, batch_size: int = 256,
    learning_rate: float = 3e-3, init: OptimalBound | None = None,
) -> VAE:
    """Train ``model``'s decoder jointly with a free Gaussian per point of ``x`` on the mean ELBO.

    The Gaussians start at ``init`` (e.g. :func:`vaefail.metrics.optimal.optimal_bound` of ``model`` on
    ``x``: each point's optimal Gaussian for the starting decoder), else at the encoder's outputs. Adam
    (``learning_rate`` decayed tenfold over ``steps``), mini-batches of ``batch_size`` points drawn with
    replacement; ``sigma_eps`` stays as the model has it (fixed unless learned). Returns the model with the
    fine-tuned decoder (its encoder unchanged).
    """
    require(steps >= 1 and batch_size >= 1, "steps and batch_size must be >= 1")
    xs = np.asarray(x, np.float64)
    n = xs.shape[0]
    if init is None:
        mu, log_std = jax.vmap(model.encoder)(jnp.asarray(xs, jnp.float32))
    else:
        if init.mean.shape != (n, model.latent_dim):
            raise ConfigError(f"init has shape {init.mean.shape}, need {(n, model.latent_dim)}")
        mu, log_std = init.mean, np.log(init.std)
    w = SemiAmortised(vae=model, mean=jnp.asarray(mu, jnp.float32), log_std=jnp.asarray(log_std, jnp.float32))
    data = jnp.asarray(np.concatenate([xs, np.arange(n)[:, None]], axis=1), jnp.float32)
    out = optimise(
        stack([w]), _semi_amortised_loss, data, key, steps=steps, batch_size=batch_size,
        learning_rate=learning_rate, final_lr_factor=0.1,
        trainable=lambda s: (s.vae.decoder, s.mean, s.log_std), eval_every=max(1, steps // 10),
        description="semi-amortised fine-tuning", progress=False,
    )
    return take(out.model, 0).vae


def truth_optimal_gaussians(benchmark: Any, x: np.ndarray, latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's optimal mean-field Gaussian for the true decoder in ``latent_dim`` dimensions: mean and
    log-std, each ``(n, latent_dim)``.

    The first coordinate is :func:`vaefail.metrics.posterior.gaussian_gap`'s solution on the exact 1-D
    posterior. The true decoder ignores the others, so ``p(z|x) = p(z_1|x) N(z_rest; 0, I)`` and the
    reverse KL of a mean-field ``q`` splits into ``KL(q_1 || p(z_1|x)) + KL(q_rest || N(0, I))``: the optimum
    is the 1-D one times the prior (mean 0, log-std 0), the ``K = 2`` grid optimum in closed form.
    """
    require(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}")
    gap = gaussian_gap(benchmark, x)
    mean = np.zeros((gap.mean.size, latent_dim))
    log_std = np.zeros_like(mean)
    mean[:, 0], log_std[:, 0] = gap.mean, np.log(gap.std)
    return mean, log_std


def truth_at_optimum(benchmark: Any, splits: Any, config: Any, key: jax.Array, *, steps: int | None = None,
                     regression_steps: int = 3000) -> tuple[VAE, VAE]:
    """The truth's encoder regressed onto each training point's optimal Gaussian (first 2,000 points;
    :func:`truth_optimal_gaussians`, any ``K``), and that encoder after ELBO training with the decoder
    fixed (``steps``, default as :func:`vaefail.mfg.truth_model`). Returns ``(regressed, trained)``."""
    k = int(config.latent_dim)
    x = np.asarray(splits.train.x[:2000], np.float64)
    mean, log_std = truth_optimal_gaussians(benchmark, x, k)
    targets = np.concatenate([mean, log_std], axis=1)
    model = make_vae(benchmark.x_dim, k, benchmark.sigma_eps, key=key, width=config.hidden_width,
                     depth=config.hidden_depth, activation=config.activation,
                     decoder=TrueDecoder(f_gt=benchmark.f_gt, true_latent_dim=1))
    data = jnp.asarray(np.concatenate([x, targets], axis=1), jnp.float32)
    regressed = optimise(
        stack([model]), _encoder_regression_loss, data, jax.random.fold_in(key, 2), steps=regression_steps,
        batch_size=256, learning_rate=3e-3, final_lr_factor=0.03, trainable=lambda m: m.encoder,
        eval_every=max(1, regression_steps // 10), description="encoder to optimal Gaussians", progress=False,
    ).model
    trained = fit_inference(MFG, regressed, splits, config, jax.random.fold_in(key, 1),
                            steps=steps or max(config.steps, TRUTH_MIN_STEPS), converge=config.converge,
                            description="truth: encoder from optimal Gaussians", progress=False)
    return take(regressed, 0), take(trained.model, 0)


def _terms(model: VAE, x: np.ndarray, log_p_true: np.ndarray, key: jax.Array,
           opt: OptimalBound | None = None) -> dict[str, Any]:
    """-log p, MLEO, -ELBO* and (K = 1: exact) amortisation gap of ``model`` on test points ``x``."""
    lp = exact_log_likelihood(model, x).per_point
    opt = opt or optimal_bound(model, x, key, log_p=lp if model.latent_dim == 2 else None)
    out = {
        "neg_log_p": Estimate.of(-lp).to_dict(),
        "mleo": Estimate.of(log_p_true - lp).to_dict(),
        "neg_elbo_star": Estimate.of(-opt.elbo_star).to_dict(),
        "approximation_gap": Estimate.of(opt.gap).to_dict(),
    }
    elbo, _ = amortised_elbo(model, x, key, log_p=opt.log_p if model.latent_dim == 1 else None)
    out["neg_elbo"] = Estimate.of(-elbo).to_dict()
    out["amortisation_gap"] = Estimate.of(opt.elbo_star - elbo).to_dict()
    return out


#: ``K = 2``: settings of :func:`vaefail.metrics.optimal.optimal_bound` for the fine-tuning's starting
#: Gaussians on every training point (a fixed 151^2 posterior grid, 100 Adam steps on 8^2 Gauss-Hermite
#: nodes, the exact KL on 31^2 nodes): a start, refined by the fine-tuning itself, at a fraction of the cost
#: of the test points' ``ELBO*``.
INIT_K2: dict[str, int] = {"grid_size": 151, "steps": 100, "nodes": 8, "eval_nodes": 31}


def amortisation_study(result: Any, key: jax.Array, *, finetune_steps: int = 10000,
                       test_points: int = 2000, truth_steps: int | None = None,
                       warm_start: bool = True) -> dict[str, Any]:
    """Both experiments of this module on one fitted run; JSON-ready.

    ``finetune``: for the selected learned model and for an MLP decoder fitted to the truth (restart 0's
    initialisation, :func:`vaefail.training.fit_decoder_to_truth`, ``init_steps``), the test terms before
    and after :func:`semi_amortised_finetune` on the training split (Gaussians started at each point's
    optimum; for ``K = 2`` found with :data:`INIT_K2`), and the change in MLEO (negative: toward the truth)
    and in ``-ELBO*`` (test points: :func:`vaefail.metrics.optimal.optimal_bound`'s defaults; the amortised
    ELBO exact for ``K = 1``, Monte Carlo above).
    ``truth_warm_start`` (with ``warm_start``, any ``K``): the truth's test amortisation gap with the
    encoder of :func:`vaefail.mfg.truth_model` (moment warm start), regressed onto the optimal Gaussians
    (:func:`truth_optimal_gaussians`), and after ELBO training from there.
    """
    config, bench = result.config, result.benchmark
    splits = result.splits()
    x_test = np.asarray(splits.test.x[:test_points], np.float64)
    log_p_true = np.asarray(bench.log_prob(x_test), np.float64)
    x_train = np.asarray(splits.train.x, np.float64)
    k_fit, k_truth, k_eval, k_warm = jax.random.split(key, 4)
    out: dict[str, Any] = {"benchmark": config.benchmark, "latent_dim": int(config.latent_dim),
                           "n_test": int(x_test.shape[0]), "finetune_steps": int(finetune_steps)}
    truth_mlp = take(fit_decoder_to_truth(MFG, init_models(config, bench, [k_truth]), bench,
                                          jax.random.fold_in(k_truth, 1), steps=max(1, config.init_steps),
                                          progress=False), 0)
    finetune: dict[str, Any] = {}
    for name, start in (("learned", result.model), ("truth_mlp", truth_mlp)):
        before = _terms(start, x_test, log_p_true, k_eval)
        init = optimal_bound(start, x_train, k_eval, **(INIT_K2 if start.latent_dim == 2 else {}))
        tuned = semi_amortised_finetune(start, x_train, jax.random.fold_in(k_fit, len(finetune)),
                                        steps=finetune_steps, init=init)
        after = _terms(tuned, x_test, log_p_true, k_eval)
        finetune[name] = {
            "before": before, "after": after,
            "mleo_change": after["mleo"]["mean"] - before["mleo"]["mean"],
            "neg_elbo_star_change": after["neg_elbo_star"]["mean"] - before["neg_elbo_star"]["mean"],
        }
    out["finetune"] = finetune
    truth_opt = OptimalBound.from_gap(gaussian_gap(bench, x_test), "grid (K = 1)")
    out["truth_neg_elbo_star"] = Estimate.of(-truth_opt.elbo_star).to_dict()
    if warm_start:
        standard = truth_model(MFG, bench, splits, config, jax.random.PRNGKey(config.seed + 7))
        regressed, trained = truth_at_optimum(bench, splits, config, k_warm, steps=truth_steps)
        warm: dict[str, Any] = {}
        for name, model in (("moments_then_elbo", standard), ("optimum_regressed", regressed),
                            ("optimum_then_elbo", trained)):
            elbo, _ = amortised_elbo(model, x_test, k_eval, log_p=truth_opt.log_p)
            warm[name] = {"neg_elbo": Estimate.of(-elbo).to_dict(),
                          "amortisation_gap": Estimate.of(truth_opt.elbo_star - elbo).to_dict()}
        base = warm["moments_then_elbo"]["amortisation_gap"]["mean"]
        best = min(warm[n]["amortisation_gap"]["mean"] for n in ("optimum_regressed", "optimum_then_elbo"))
        warm["share_closed"] = (base - best) / base if base > 0 and math.isfinite(base) else None
        out["truth_warm_start"] = warm
    return out
