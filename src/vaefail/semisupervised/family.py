"""The semi-supervised M2 model family: its pieces of the restart protocol (:mod:`vaefail.protocol`).

The protocol is the unsupervised one (:func:`vaefail.protocol.train_restarts`) with what differs for M2: the
data is packed ``[x, y, labelled]`` (:func:`~vaefail.semisupervised.objectives.pack`), the decoder
:math:`f_\\theta(y, z)` of truth starts is regressed onto :math:`f_{gt}(y, z)`, the "best encoders" are the
classifier and the encoder trained on J with the decoder frozen, and a restart is **selected** by the highest
mean validation J (per point, on the validation split with its own labelled subset of the same fraction)
among those that did not diverge.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from vaefail.benchmarks import LabelledBenchmark
from vaefail.protocol import ModelFamily, truth_with_best_inference
from vaefail.semisupervised.config import SemiSupervisedConfig
from vaefail.semisupervised.data import SemiSupervisedData, make_data, require_labelled
from vaefail.semisupervised.model import M2, TrueLabelledDecoder, make_m2
from vaefail.semisupervised.objectives import M2MeanObjective, M2Objective, m2_loss_fn, m2_terms
from vaefail.stacking import restart_count, stack


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
    n_restarts = restart_count(models)
    totals = np.zeros((3, n_restarts))
    for i, start in enumerate(range(0, data.shape[0], chunk)):
        out = _eval_chunk(models, data[start : start + chunk], jax.random.fold_in(key, i), config.objective,
                          config.eval_num_samples, float(config.gamma), float(config.alpha))
        totals += np.array([np.asarray(v, np.float64) for v in out])
    totals /= data.shape[0]
    return {"objective": totals[0], "unlabelled": totals[1], "accuracy": totals[2]}


class M2Family(ModelFamily):
    """Kingma et al.'s M2 on a labelled benchmark: classifier q(y|x), encoder q(z|x) (``mean_field``) or
    q(z|x,y) (``kingma``), decoder f_theta(y, z), trained on J (:mod:`vaefail.semisupervised.objectives`)."""

    name = "M2"
    selection = "val_objective"
    config_type = SemiSupervisedConfig

    def make_data(self, benchmark: Any, config: SemiSupervisedConfig) -> SemiSupervisedData:
        return make_data(require_labelled(benchmark), config)

    def init(self, config: SemiSupervisedConfig, benchmark: LabelledBenchmark, keys: list[jax.Array]) -> M2:
        return init_m2_models(config, benchmark, keys)

    def train_data(self, data: SemiSupervisedData) -> jax.Array:
        return data.packed("train")

    def val_data(self, data: SemiSupervisedData) -> jax.Array:
        return data.packed("val")

    def inference(self, model: M2) -> tuple[eqx.Module, eqx.Module]:
        return model.classifier, model.encoder

    def decoder_fit_loss(self, benchmark: LabelledBenchmark, model: M2) -> Any:
        return _decoder_fit_loss(benchmark, model.latent_dim, model.n_classes)

    def loss(self, config: SemiSupervisedConfig) -> M2Objective:
        return m2_loss_fn(config.objective, config.num_samples, config.gamma, config.alpha)

    def score(self, config: SemiSupervisedConfig) -> M2MeanObjective:
        return M2MeanObjective(M2Objective(config.objective, config.eval_num_samples, float(config.gamma),
                                           float(config.alpha)))

    def evaluate(self, models: M2, data: SemiSupervisedData, config: SemiSupervisedConfig,
                 key: jax.Array) -> dict[str, np.ndarray]:
        val = evaluate_m2(models, data.packed("val"), config, key)
        test = evaluate_m2(models, data.packed("test"), config, key)
        return {
            "val_objective": val["objective"],
            "test_objective": test["objective"],
            "test_unlabelled": test["unlabelled"],
            "test_accuracy": test["accuracy"],
        }

    def summary(self, columns: dict[str, np.ndarray], selected: int, benchmark: LabelledBenchmark,
                data: SemiSupervisedData, config: SemiSupervisedConfig) -> dict[str, Any]:
        return {
            "n_labelled": int(data.train_labelled.sum()),
            "val_objective": float(columns["val_objective"][selected]),
            "test_objective": float(columns["test_objective"][selected]),
            "test_unlabelled": float(columns["test_unlabelled"][selected]),
            "test_log_prob_true": float(np.mean(benchmark.log_prob(data.test.x))),
        }

    def truth_summary(self, benchmark: LabelledBenchmark, data: SemiSupervisedData,
                      config: SemiSupervisedConfig, key: jax.Array, eval_key: jax.Array, *,
                      progress: bool = False) -> tuple[dict[str, Any], M2]:
        model = truth_m2(self, benchmark, data, config, key, progress=progress)
        tv = evaluate_m2(stack([model]), data.packed("val"), config, eval_key)
        tt = evaluate_m2(stack([model]), data.packed("test"), config, eval_key)
        return {
            "truth_val_objective": float(tv["objective"][0]),
            "truth_test_objective": float(tt["objective"][0]),
            "truth_test_unlabelled": float(tt["unlabelled"][0]),
        }, model

    def diverged_message(self) -> str:
        return "every M2 restart diverged (NaN/inf); try a smaller learning_rate"


def truth_m2(
    family: M2Family, benchmark: LabelledBenchmark, data: SemiSupervisedData, config: SemiSupervisedConfig,
    key: jax.Array, *, progress: bool = False,
) -> M2:
    """The ground-truth M2 (exact decoder :math:`f_{gt}(y, z)`, true sigma) with its best classifier and
    encoder, trained on J with the same family, objective, budget and optimiser as the restarts."""
    model = make_m2(
        benchmark.x_dim, config.latent_dim, benchmark.n_classes, benchmark.sigma_eps, key=key,
        encoder=config.encoder, class_prior=benchmark.class_prior(), width=config.hidden_width,
        depth=config.hidden_depth, activation=config.activation,
        decoder=TrueLabelledDecoder(f_gt=benchmark.f_gt),
    )
    return truth_with_best_inference(family, stack([model]), data, config, key, steps=config.steps,
                                     progress=progress)


M2_FAMILY = M2Family()
