"""The restart protocol for M2: R restarts, half from the ground truth, trained together, selected by
validation J.

This reuses :func:`vaefail.training.optimise` (vectorised restarts, fused ``lax.scan`` steps, best-validation
snapshot, divergence detection) with the M2 loss on packed ``[x, y, labelled]`` data. Truth-initialised
restarts first regress the decoder :math:`f_\\theta(y, z)` onto :math:`f_{gt}(y, z)`, then train the
classifier and the encoder with the decoder frozen ("best encoders"); afterwards every restart trains all
parameters on J. **Selection**: the restart with the highest mean validation J (per point, on the
validation split with its own labelled subset of the same fraction) among those that did not diverge.
The same quantity is the ``score`` that keeps each restart's best parameters during training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vaefail.benchmarks import LabelledBenchmark, get_benchmark
from vaefail.benchmarks.labelled import LabelledDataset
from vaefail.errors import ConfigError, VaefailError
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.model import M2, TrueLabelledDecoder, make_m2
from vaefail.semisupervised.objectives import m2_loss_fn, m2_terms, pack
from vaefail.training import OptimiseResult, concat, optimise, stack, take

if TYPE_CHECKING:
    from vaefail.semisupervised.results import SemiSupervisedResult


def require_labelled(benchmark: Any) -> LabelledBenchmark:
    """Return ``benchmark`` if it is a labelled benchmark, else raise a clear :class:`ConfigError`."""
    if not isinstance(benchmark, LabelledBenchmark):
        name = getattr(benchmark, "name", benchmark)
        raise ConfigError(
            f"benchmark {name!r} is not labelled; semi-supervised M2 needs a labelled benchmark "
            "(semicircle, shared_line)"
        )
    return benchmark


def labelled_mask(y: np.ndarray, fraction: float, n_classes: int, seed: int | list[int]) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` points, as balanced over classes as possible.

    Each class ``c`` contributes ``n_l // C`` points (the first ``n_l % C`` classes one more), or all its
    points if it has fewer, and the shortfall is filled from the remaining points; chosen uniformly at
    random with ``numpy.random.default_rng(seed)``.
    """
    y = np.asarray(y)
    n = y.size
    n_l = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        want = n_l // n_classes + (1 if c < n_l % n_classes else 0)
        mask[rng.permutation(idx)[: min(want, idx.size)]] = True
    short = n_l - int(mask.sum())
    if short > 0:
        mask[rng.permutation(np.flatnonzero(~mask))[:short]] = True
    return mask


@dataclass(frozen=True)
class SemiSupervisedData:
    """The splits of a labelled benchmark and which labels the objective may see.

    Attributes
    ----------
    train, val, test
        :class:`~vaefail.benchmarks.labelled.LabelledDataset` splits (true x, z, y).
    train_labelled, val_labelled, test_labelled
        Boolean masks of the points whose labels enter J, each a balanced subset of the configured
        fraction (the test mask only matters for the test J; test metrics use every true label).
    """

    train: LabelledDataset
    val: LabelledDataset
    test: LabelledDataset
    train_labelled: np.ndarray
    val_labelled: np.ndarray
    test_labelled: np.ndarray

    def packed(self, part: str) -> jax.Array:
        """``[x, y, labelled]`` of the split ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        data = getattr(self, part)
        return pack(data.x, data.y, getattr(self, f"{part}_labelled"))


def make_data(benchmark: LabelledBenchmark, config: SemiSupervisedConfig) -> SemiSupervisedData:
    """Splits from ``config.split_seed`` and balanced labelled subsets of ``labelled_fraction``."""
    splits = benchmark.splits(config.n_train, config.n_val, config.n_test, seed=config.split_seed)
    c = benchmark.n_classes
    return SemiSupervisedData(
        train=splits.train, val=splits.val, test=splits.test,
        train_labelled=labelled_mask(splits.train.y, config.labelled_fraction, c, [config.split_seed, 1]),
        val_labelled=labelled_mask(splits.val.y, config.labelled_fraction, c, [config.split_seed, 2]),
        test_labelled=labelled_mask(splits.test.y, config.labelled_fraction, c, [config.split_seed, 3]),
    )


def init_m2_models(config: SemiSupervisedConfig, benchmark: LabelledBenchmark, keys: list[jax.Array]) -> M2:
    """Freshly initialised stacked M2 models, one per key."""
    sigma = benchmark.sigma_eps if config.sigma_eps is None else config.sigma_eps
    return stack([
        make_m2(
            benchmark.x_dim, config.latent_dim, benchmark.n_classes, sigma, key=k, encoder=config.encoder,
            class_prior=benchmark.class_prior(), width=config.hidden_width, depth=config.hidden_depth,
            activation=config.activation,
        )
        for k in keys
    ])


def fit_decoder_to_truth(
    models: M2, benchmark: LabelledBenchmark, key: jax.Array, *, steps: int, progress: bool = False
) -> M2:
    """Regress each restart's decoder onto :math:`f_{gt}(y, z)`.

    Minimises :math:`(1/B) \\sum_b \\lVert f_\\theta(y_b, z_b) - f_{gt}(y_b, z_{b,1}) \\rVert^2` with fresh
    :math:`z_b \\sim N(0, I_K)` and :math:`y_b` uniform over classes every step (batch 512); extra latent
    dimensions are taught to be ignored.
    """
    return optimise(
        models, _decoder_fit_loss(benchmark, models.latent_dim, models.n_classes), None, key, steps=steps,
        batch_size=512, learning_rate=3e-3, final_lr_factor=0.03, trainable=_decoder,
        eval_every=max(1, steps // 10),
        description="fit decoder to f_gt(y, z)", progress=progress,
    ).model


@functools.lru_cache(maxsize=32)
def _decoder_fit_loss(benchmark: LabelledBenchmark, latent_dim: int, n_classes: int):
    """The regression loss of :func:`fit_decoder_to_truth` (one object per benchmark and shape)."""

    def loss(model: M2, _batch: Any, k: jax.Array) -> tuple[jax.Array, None]:
        kz, ky = jax.random.split(k)
        z = jax.random.normal(kz, (512, latent_dim))
        y = jax.random.randint(ky, (512,), 0, n_classes)
        pred = jax.vmap(model.decode)(y, z)
        target = benchmark.f_gt(y, z[:, :1])
        return jnp.mean(jnp.sum((pred - target) ** 2, axis=-1)), None

    return loss


def _score_fn(config: SemiSupervisedConfig):
    """Mean validation J per point; ``score_data`` is ``(packed data, key)`` (a fixed key: deterministic)."""
    return _m2_score(config.objective, config.eval_num_samples, float(config.gamma), float(config.alpha))


@functools.lru_cache(maxsize=64)
def _m2_score(objective: str, samples: int, gamma: float, alpha: float):
    """One function object per option set, so :func:`optimise` reuses its compiled evaluation."""

    def score(model: M2, data_and_key: tuple[jax.Array, jax.Array]) -> jax.Array:
        data, key = data_and_key
        record = m2_terms(model, data, key, objective=objective, num_samples=samples, gamma=gamma,
                          alpha=alpha)
        return jnp.mean(record.objective)

    return score


def _classifier_and_encoder(model: M2) -> tuple[eqx.Module, eqx.Module]:
    return model.classifier, model.encoder


def _decoder(model: M2) -> eqx.Module:
    return model.decoder


def _loss(config: SemiSupervisedConfig):
    return m2_loss_fn(config.objective, config.num_samples, config.gamma, config.alpha)


def fit_encoders(
    models: M2, data: SemiSupervisedData, config: SemiSupervisedConfig, key: jax.Array, *, steps: int,
    converge: bool = False, description: str = "fit q(y|x), q(z|.)", progress: bool = False,
) -> OptimiseResult:
    """Train only the classifier and the encoder of stacked models on J, decoders frozen."""
    k_train, k_score = jax.random.split(key)
    return optimise(
        models, _loss(config), data.packed("train"), k_train, steps=steps, batch_size=config.batch_size,
        learning_rate=config.learning_rate, final_lr_factor=config.final_lr_factor,
        trainable=_classifier_and_encoder, score=_score_fn(config),
        score_data=(data.packed("val"), k_score), eval_every=config.eval_every, patience=config.patience,
        tol=config.tol, converge=converge, description=description, progress=progress,
    )


def truth_m2(
    benchmark: LabelledBenchmark, data: SemiSupervisedData, config: SemiSupervisedConfig, key: jax.Array,
    *, progress: bool = False,
) -> M2:
    """The ground-truth M2 (exact decoder :math:`f_{gt}(y, z)`, true sigma) with its best classifier and
    encoder, trained on J with the same family, objective, budget and optimiser as the restarts."""
    model = make_m2(
        benchmark.x_dim, config.latent_dim, benchmark.n_classes, benchmark.sigma_eps, key=key,
        encoder=config.encoder, class_prior=benchmark.class_prior(), width=config.hidden_width,
        depth=config.hidden_depth, activation=config.activation,
        decoder=TrueLabelledDecoder(f_gt=benchmark.f_gt),
    )
    result = fit_encoders(
        stack([model]), data, config, jax.random.fold_in(key, 1), steps=config.steps,
        converge=config.converge, description="truth: best q(y|x), q(z|.)", progress=progress,
    )
    return take(result.model, 0)


@dataclass(frozen=True)
class M2Restarts:
    """All restarts of one configuration after training (stacked) and their bookkeeping."""

    models: M2
    start: list[str]
    diverged: np.ndarray
    best_val: np.ndarray
    steps: int
    history: np.ndarray


def train_m2_restarts(
    benchmark: LabelledBenchmark, data: SemiSupervisedData, config: SemiSupervisedConfig, *,
    progress: bool = True,
) -> M2Restarts:
    """The paper's protocol for M2: ``n_truth`` restarts from the truth, the rest random, trained together."""
    key = jax.random.PRNGKey(config.seed)
    k_init, k_dec, k_enc, k_train, k_score = jax.random.split(key, 5)
    init_keys = list(jax.vmap(lambda r: jax.random.fold_in(k_init, r))(jnp.arange(config.restarts)))
    models = init_m2_models(config, benchmark, init_keys)
    n_truth = config.n_truth
    if n_truth > 0 and config.init_steps > 0:
        truth = take(models, slice(0, n_truth))
        truth = fit_decoder_to_truth(truth, benchmark, k_dec, steps=config.init_steps, progress=progress)
        truth = fit_encoders(truth, data, config, k_enc, steps=config.init_steps, progress=progress,
                             description="fit q(y|x), q(z|.) to the truth").model
        models = concat(truth, take(models, slice(n_truth, None)))
    result = optimise(
        models, _loss(config), data.packed("train"), k_train, steps=config.steps,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        final_lr_factor=config.final_lr_factor, score=_score_fn(config),
        score_data=(data.packed("val"), k_score), eval_every=config.eval_every,
        patience=config.patience, tol=config.tol, converge=config.converge,
        description=f"{config.benchmark} M2 {config.objective}/{config.encoder}", progress=progress,
    )
    start = ["truth"] * n_truth + ["random"] * (config.restarts - n_truth)
    return M2Restarts(models=result.model, start=start, diverged=result.diverged, best_val=result.best_score,
                      steps=result.steps, history=result.history)


@eqx.filter_jit
def _eval_chunk(
    models: M2, data: jax.Array, key: jax.Array, objective: str, num_samples: int, gamma: float, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sums over a chunk of J's per-point share, of U(x) and of correct argmax q(y|x), per restart.

    Module-level and jitted with the options static, so repeated evaluations reuse one compilation.
    """

    def one(model: M2) -> tuple[jax.Array, jax.Array, jax.Array]:
        rec = m2_terms(model, data, key, objective=objective, num_samples=num_samples, gamma=gamma,
                       alpha=alpha)
        pred = jnp.argmax(jax.vmap(model.class_log_probs)(data[:, :-2]), axis=1)
        correct = pred == data[:, -2].astype(jnp.int32)
        return jnp.sum(rec.objective), jnp.sum(rec.unlabelled), jnp.sum(correct)

    return eqx.filter_vmap(one)(models)


def evaluate_m2(
    models: M2, data: jax.Array, config: SemiSupervisedConfig, key: jax.Array, chunk: int = 1000
) -> dict[str, np.ndarray]:
    """Per-restart means over packed ``data`` of J's per-point terms, and q(y|x)'s accuracy.

    Returns ``{"objective", "unlabelled", "accuracy"}``, each of shape ``(R,)``: the mean per-point share
    of J, the mean unlabelled bound U(x) over *all* points, and the accuracy of ``argmax q(y|x)`` against
    the packed labels of all points. Points are processed in chunks.
    """
    n_restarts = jax.tree_util.tree_leaves(eqx.filter(models, eqx.is_inexact_array))[0].shape[0]
    totals = np.zeros((3, n_restarts))
    for i, start in enumerate(range(0, data.shape[0], chunk)):
        out = _eval_chunk(models, data[start : start + chunk], jax.random.fold_in(key, i), config.objective,
                          config.eval_num_samples, float(config.gamma), float(config.alpha))
        totals += np.array([np.asarray(v, np.float64) for v in out])
    totals /= data.shape[0]
    return {"objective": totals[0], "unlabelled": totals[1], "accuracy": totals[2]}


def fit_semisupervised(
    config: SemiSupervisedConfig, benchmark: LabelledBenchmark | None = None, *, progress: bool = False
) -> SemiSupervisedResult:
    """Train M2 with the restart protocol and select a restart; returns a
    :class:`~vaefail.semisupervised.results.SemiSupervisedResult`.

    The restart table has one row per restart: ``restart, start, status, steps, val_objective,
    test_objective, test_unlabelled, test_accuracy, selected`` (objectives are mean per-point shares of J
    in nats, higher is better). The summary holds the selected restart's numbers and, with
    ``config.truth``, the ground-truth model's ``truth_val_objective`` / ``truth_test_objective``.
    """
    from vaefail.semisupervised.results import SemiSupervisedResult

    if benchmark is None:
        benchmark = get_benchmark(config.benchmark, **config.benchmark_params)
    benchmark = require_labelled(benchmark)
    data = make_data(benchmark, config)
    outcome = train_m2_restarts(benchmark, data, config, progress=progress)
    eval_key = jax.random.PRNGKey(config.seed + 1_000_003)
    val = evaluate_m2(outcome.models, data.packed("val"), config, eval_key)
    test = evaluate_m2(outcome.models, data.packed("test"), config, eval_key)
    ok = ~outcome.diverged & np.isfinite(val["objective"])
    if not ok.any():
        raise VaefailError("every M2 restart diverged (NaN/inf); try a smaller learning_rate")
    selected = int(np.argmax(np.where(ok, val["objective"], -np.inf)))
    table = pd.DataFrame({
        "restart": np.arange(config.restarts),
        "start": outcome.start,
        "status": np.where(ok, "ok", "diverged"),
        "steps": outcome.steps,
        "val_objective": val["objective"],
        "test_objective": test["objective"],
        "test_unlabelled": test["unlabelled"],
        "test_accuracy": test["accuracy"],
        "selected": np.arange(config.restarts) == selected,
    })
    summary: dict[str, Any] = {
        "selected": selected,
        "start": outcome.start[selected],
        "steps": outcome.steps,
        "n_labelled": int(data.train_labelled.sum()),
        "val_objective": float(val["objective"][selected]),
        "test_objective": float(test["objective"][selected]),
        "test_unlabelled": float(test["unlabelled"][selected]),
        "test_log_prob_true": float(np.mean(benchmark.log_prob(data.test.x))),
    }
    if config.truth:
        model = truth_m2(benchmark, data, config, jax.random.PRNGKey(config.seed + 7), progress=progress)
        tv = evaluate_m2(stack([model]), data.packed("val"), config, eval_key)
        tt = evaluate_m2(stack([model]), data.packed("test"), config, eval_key)
        summary["truth_val_objective"] = float(tv["objective"][0])
        summary["truth_test_objective"] = float(tt["objective"][0])
        summary["truth_test_unlabelled"] = float(tt["unlabelled"][0])
    return SemiSupervisedResult(config, outcome.models, table, selected, summary)
