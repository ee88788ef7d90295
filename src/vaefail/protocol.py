"""The paper's restart protocol, once for every model family.

A configuration trains ``R`` restarts together (:func:`vaefail.training.optimise`): ``n_truth`` of them start
at the ground truth (decoder regressed onto ``f_gt``, then the family's warm start, then its inference
networks trained on the objective with the decoder frozen: the "best encoder"), the rest at random. Every
restart is then trained on the objective, keeping its best-validation parameters; the restart with the best
validation score that did not diverge is selected, and every restart's record is kept. The truth starts'
initial fits can be shared between configurations that compute the same ones (:func:`truth_start`,
:class:`StartCache`; ``vaefail reproduce`` shares them through its results store).

A model family (:class:`ModelFamily`) says only what differs: how to build models and data, the decoder and
inference parts, the losses and scores, and how to evaluate restarts. The MFG-VAE / IWAE
(:class:`vaefail.mfg.MFGFamily`) and the semi-supervised M2 (:class:`vaefail.semisupervised.M2Family`) are
two implementations; a new family needs no change here, in :class:`vaefail.results.FitResult` or in the store.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vaefail.benchmarks import get_benchmark
from vaefail.errors import VaefailError
from vaefail.results import FitResult, family_path
from vaefail.stacking import concat, take
from vaefail.training import Loss, OptimiseResult, optimise

#: Key offsets of the protocol: evaluation of every restart, and the separate ground-truth model.
EVAL_SEED_OFFSET = 1_000_003
TRUTH_SEED_OFFSET = 7


class ModelFamily:
    """What a model family tells the restart protocol. Subclass it and override the methods that raise.

    ``config`` is the family's config (a :class:`vaefail.config.RestartProtocol` with ``seed``,
    ``restarts``, ``n_truth``, ``init_steps``, ``steps`` and the optimiser's fields); ``data`` is what
    :meth:`make_data` returns. A family is a stateless value; its class is recorded in saved runs
    (``module:qualname``) so that :meth:`vaefail.results.FitResult.load` can rebuild its models.
    """

    #: Short name shown in progress bars and messages.
    name = "model"
    #: The restart-table column that selects a restart (higher is better).
    selection = "val_bound"
    #: The family's config class (with ``from_dict``), used to read saved runs.
    config_type: Any = None
    #: Config fields that each stage of the truth start does not read (:func:`start_key`): ``"decoder"``
    #: (:func:`fit_decoder_to_truth` and :meth:`warm_start`) and ``"inference"`` (:func:`fit_inference`).
    #: ``None``: the family's truth starts are never shared. A family that sets it promises that both stages
    #: change only :meth:`decoder` and :meth:`inference` of the models and read no other field.
    start_ignores: dict[str, frozenset[str]] | None = None

    # -- models and data ------------------------------------------------------------------------------
    def make_data(self, benchmark: Any, config: Any) -> Any:
        """The train/validation/test data of a configuration (deterministic in its seeds)."""
        raise NotImplementedError

    def init(self, config: Any, benchmark: Any, keys: list[jax.Array]) -> Any:
        """Freshly initialised stacked models, one per key."""
        raise NotImplementedError

    def make_benchmark(self, config: Any) -> Any:
        """The benchmark (or data set) a config names: by default the registered benchmark with its
        parameters."""
        return get_benchmark(config.benchmark, **config.benchmark_params)

    def skeleton(self, config: Any) -> Any:
        """Stacked models of the structure ``config`` describes (their values are overwritten when a saved
        run is read): :meth:`init` on :meth:`make_benchmark`."""
        keys = list(jax.random.split(jax.random.PRNGKey(0), config.restarts))
        return self.init(config, self.make_benchmark(config), keys)

    def train_data(self, data: Any) -> jax.Array:
        """The training array whose rows :func:`~vaefail.training.optimise` samples mini-batches from."""
        raise NotImplementedError

    def val_data(self, data: Any) -> jax.Array:
        """The validation array passed to :meth:`score`."""
        raise NotImplementedError

    # -- the ground-truth start -----------------------------------------------------------------------
    def decoder(self, model: Any) -> Any:
        """The decoder part (trained alone when fitted to the truth)."""
        return model.decoder

    def inference(self, model: Any) -> Any:
        """The inference part (trained alone, decoder frozen, for the "best encoder")."""
        return model.encoder

    def decoder_fit_loss(self, benchmark: Any, model: Any) -> Loss:
        """``loss(model, None, key)``: the mean squared distance of the decoder from the truth's ``f_gt``
        on fresh latent draws (a hashable value or a cached function)."""
        raise NotImplementedError

    def warm_start(self, models: Any, benchmark: Any, data: Any, key: jax.Array, config: Any, *,
                   progress: bool = False) -> Any:
        """Optional step between the decoder fit and the encoder fit of truth starts (default: none)."""
        return models

    # -- objective --------------------------------------------------------------------------------------
    def loss(self, config: Any) -> Loss:
        """The training loss ``loss(model, batch, key) -> (scalar, aux)`` of one restart (hashable)."""
        raise NotImplementedError

    def score(self, config: Any) -> Callable[[Any, Any], jax.Array]:
        """``score(model, (val_data, key))``: the validation score, higher is better (hashable)."""
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate(self, models: Any, data: Any, config: Any, key: jax.Array) -> dict[str, np.ndarray]:
        """Per-restart columns of the restart table (each shape ``(R,)``), including :attr:`selection`."""
        raise NotImplementedError

    def summary(self, columns: dict[str, np.ndarray], selected: int, benchmark: Any, data: Any,
                config: Any) -> dict[str, Any]:
        """Scalar results of the selected restart (beyond ``selected``, ``start`` and ``steps``)."""
        return {name: float(values[selected]) for name, values in columns.items()}

    def truth_summary(self, benchmark: Any, data: Any, config: Any, key: jax.Array, eval_key: jax.Array, *,
                      progress: bool = False) -> tuple[dict[str, Any], Any]:
        """The ground-truth model (true decoder with its best encoder) and its results; default: none."""
        return {}, None

    def diverged_message(self) -> str:
        return "every restart diverged (NaN/inf); try a smaller --learning-rate or a larger sigma_eps"


@dataclass(frozen=True)
class RestartOutcome:
    """All restarts of one configuration after training (stacked) and their bookkeeping."""

    models: Any
    start: list[str]
    diverged: np.ndarray
    best_val: np.ndarray
    steps: int
    history: np.ndarray


def fit_decoder_to_truth(
    family: ModelFamily, models: Any, benchmark: Any, key: jax.Array, *, steps: int, progress: bool = False
) -> Any:
    """Regress each restart's decoder onto the truth's ``f_gt`` (:meth:`ModelFamily.decoder_fit_loss`).

    Adam, batch 512 of fresh latent draws, learning rate 3e-3 decayed to 9e-5 over ``steps``; only
    :meth:`ModelFamily.decoder` is trained.
    """
    return optimise(
        models, family.decoder_fit_loss(benchmark, models), None, key, steps=steps, batch_size=512,
        learning_rate=3e-3, final_lr_factor=0.03, trainable=family.decoder, eval_every=max(1, steps // 10),
        description="fit decoder to f_gt", progress=progress,
    ).model


def fit_inference(
    family: ModelFamily, models: Any, data: Any, config: Any, key: jax.Array, *, steps: int,
    converge: bool = False, description: str = "fit encoder", progress: bool = False,
) -> OptimiseResult:
    """Train only the inference part of stacked models on the training objective, decoders frozen.

    This is the "best encoder" of a fixed decoder: maximising the bound over the encoder alone minimises
    the average gap between the bound and ``log p_theta(x)`` (for the ELBO, ``E_p(x)[KL(q(z|x) ||
    p_theta(z|x))]``).
    """
    k_train, k_score = jax.random.split(key)
    return optimise(
        models, family.loss(config), family.train_data(data), k_train, steps=steps,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        final_lr_factor=config.final_lr_factor, trainable=family.inference, score=family.score(config),
        score_data=(family.val_data(data), k_score), eval_every=config.eval_every, patience=config.patience,
        tol=config.tol, converge=converge, description=description, progress=progress,
    )


class StartCache(Protocol):
    """Where truth starts are shared between configurations (:func:`truth_start`): bytes by key.

    ``load`` returns ``None`` for a key never saved (or whose stored copy is damaged); ``save`` may be called
    by several processes for one key at once, with the same bytes.
    """

    def load(self, key: str) -> bytes | None: ...

    def save(self, key: str, data: bytes) -> None: ...


#: The stages of the truth start, in order.
START_STAGES = ("decoder", "inference")


def start_key(family: ModelFamily, config: Any, stage: str) -> str | None:
    """The content key of a truth start after ``stage`` (``"decoder"`` or ``"inference"``), or ``None``
    when the family does not share them (:attr:`ModelFamily.start_ignores` is ``None``).

    The first 16 hex digits of the SHA-256 of the canonical JSON of the stage, the family's class, the number
    of truth restarts and every config field except :attr:`ModelFamily.start_ignores` of the stage;
    configurations with equal keys compute the same truth start.
    """
    if family.start_ignores is None:
        return None
    fields = {k: v for k, v in config.to_dict().items() if k not in family.start_ignores[stage]}
    blob = json.dumps({"stage": stage, "family": family_path(family), "n_truth": config.n_truth,
                       "config": fields}, sort_keys=True, separators=(",", ":"), default=str)
    return f"truth-start-{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _trained_parts(family: ModelFamily, models: Any) -> tuple[Any, Any]:
    return family.decoder(models), family.inference(models)


def _shared_stage(
    family: ModelFamily, config: Any, stage: str, models: Any, compute: Callable[[Any], Any],
    starts: StartCache | None,
) -> Any:
    """``compute(models)``, or its decoder and inference parts loaded from ``starts`` into ``models``
    (saved there after computing when missing)."""
    key = None if starts is None else start_key(family, config, stage)
    if key is None:
        return compute(models)
    stored = starts.load(key)
    if stored is not None:
        parts = eqx.tree_deserialise_leaves(io.BytesIO(stored), _trained_parts(family, models))
        return eqx.tree_at(lambda m: _trained_parts(family, m), models, parts)
    models = compute(models)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, _trained_parts(family, models))
    starts.save(key, buffer.getvalue())
    return models


def truth_start(
    family: ModelFamily, models: Any, benchmark: Any, data: Any, config: Any, k_dec: jax.Array,
    k_enc: jax.Array, *, starts: StartCache | None = None, progress: bool = False,
) -> Any:
    """The truth-started restarts (stacked ``models``, freshly initialised) before the main training.

    Stage ``"decoder"``: :func:`fit_decoder_to_truth` (key ``k_dec``) and the family's
    :meth:`~ModelFamily.warm_start` (key ``fold_in(k_enc, 1)``); stage ``"inference"``: :func:`fit_inference`
    (key ``k_enc``); each for ``config.init_steps``. With ``starts``, a stage whose :func:`start_key` is
    stored there is loaded instead of computed (bit for bit the same parameters), and a computed one is
    saved: configurations that differ only in fields a stage ignores (for the MFG family the objective and
    sigma_eps mode for the decoder stage, the sigma_eps mode for the inference stage) compute it once.
    """
    def decoder_stage(m: Any) -> Any:
        m = fit_decoder_to_truth(family, m, benchmark, k_dec, steps=config.init_steps, progress=progress)
        return family.warm_start(m, benchmark, data, jax.random.fold_in(k_enc, 1), config, progress=progress)

    def inference_stage(m: Any) -> Any:
        return fit_inference(family, m, data, config, k_enc, steps=config.init_steps, progress=progress,
                             description="fit encoder to truth").model

    def both(m: Any) -> Any:
        return inference_stage(_shared_stage(family, config, "decoder", m, decoder_stage, starts))

    return _shared_stage(family, config, "inference", models, both, starts)


def train_restarts(
    family: ModelFamily, benchmark: Any, data: Any, config: Any, *, progress: bool = True,
    starts: StartCache | None = None,
) -> RestartOutcome:
    """Run the paper's protocol: ``n_truth`` restarts from the truth, the rest random, all trained together.

    Keys: ``init, decoder, encoder, train, score = split(PRNGKey(seed), 5)``; restart ``r`` is initialised
    from ``fold_in(init, r)``. Truth restarts (when ``init_steps > 0``): :func:`fit_decoder_to_truth`, the
    family's :meth:`~ModelFamily.warm_start` (key ``fold_in(encoder, 1)``) and :func:`fit_inference`, each for
    ``init_steps`` (:func:`truth_start`, shared through ``starts`` when given). Then every restart trains all
    its parameters for up to ``steps`` steps, keeping its best-validation parameters.
    """
    key = jax.random.PRNGKey(config.seed)
    k_init, k_dec, k_enc, k_train, k_score = jax.random.split(key, 5)
    init_keys = list(jax.vmap(lambda r: jax.random.fold_in(k_init, r))(jnp.arange(config.restarts)))
    models = family.init(config, benchmark, init_keys)
    n_truth = config.n_truth
    if n_truth > 0 and config.init_steps > 0:
        truth = truth_start(family, take(models, slice(0, n_truth)), benchmark, data, config, k_dec, k_enc,
                            starts=starts, progress=progress)
        models = concat(truth, take(models, slice(n_truth, None)))
    result = train_all(family, models, data, config, k_train, k_score, progress=progress)
    start = ["truth"] * n_truth + ["random"] * (config.restarts - n_truth)
    return RestartOutcome(models=result.model, start=start, diverged=result.diverged,
                          best_val=result.best_score, steps=result.steps, history=result.history)


def train_all(
    family: ModelFamily, models: Any, data: Any, config: Any, key: jax.Array, score_key: jax.Array, *,
    progress: bool = False,
) -> OptimiseResult:
    """Train every parameter of stacked ``models`` on the family's objective: the protocol's main phase.

    Up to ``config.steps`` steps (stopping at convergence when ``config.converge``), mini-batches drawn with
    ``key``, the validation bound (Monte-Carlo key ``score_key``) every ``config.eval_every`` steps; each
    restart keeps its best-validation parameters.
    """
    return optimise(
        models, family.loss(config), family.train_data(data), key, steps=config.steps,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        final_lr_factor=config.final_lr_factor, score=family.score(config),
        score_data=(family.val_data(data), score_key), eval_every=config.eval_every,
        patience=config.patience, tol=config.tol, converge=config.converge,
        description=f"{config.benchmark} {family.name} {config.objective} K={config.latent_dim}",
        progress=progress,
    )


def fit_family(
    family: ModelFamily, config: Any, benchmark: Any, *, truth: bool = False, progress: bool = False,
    starts: StartCache | None = None,
) -> FitResult:
    """Train a configuration with the restart protocol, evaluate every restart and select one.

    The selected restart has the highest :attr:`ModelFamily.selection` column among the restarts that did not
    diverge. Evaluation draws from ``PRNGKey(seed + 1_000_003)``; the ground-truth model (with ``truth``)
    from ``PRNGKey(seed + 7)``. ``starts`` shares truth starts between configurations (:func:`truth_start`).

    Returns
    -------
    FitResult
        The family, config, stacked models, the restart table (``restart, start, status, steps``, the family's
        columns, ``selected``), the selected index, the summary (``selected, start, steps``, the family's
        summary and, with ``truth``, the truth's) and, with ``truth``, the truth model itself (not saved).
    """
    data = family.make_data(benchmark, config)
    outcome = train_restarts(family, benchmark, data, config, progress=progress, starts=starts)
    eval_key = jax.random.PRNGKey(config.seed + EVAL_SEED_OFFSET)
    columns = family.evaluate(outcome.models, data, config, eval_key)
    ok = ~outcome.diverged & np.isfinite(columns[family.selection])
    if not ok.any():
        raise VaefailError(family.diverged_message())
    selected = int(np.argmax(np.where(ok, columns[family.selection], -np.inf)))
    table = pd.DataFrame({
        "restart": np.arange(config.restarts),
        "start": outcome.start,
        "status": np.where(ok, "ok", "diverged"),
        "steps": outcome.steps,
        **columns,
        "selected": np.arange(config.restarts) == selected,
    })
    summary: dict[str, Any] = {"selected": selected, "start": outcome.start[selected], "steps": outcome.steps}
    summary.update(family.summary(columns, selected, benchmark, data, config))
    truth_model = None
    if truth:
        truth_results, truth_model = family.truth_summary(
            benchmark, data, config, jax.random.PRNGKey(config.seed + TRUTH_SEED_OFFSET), eval_key,
            progress=progress,
        )
        summary.update(truth_results)
    return FitResult(config, outcome.models, table, selected, summary, family=family, truth=truth_model)


def truth_with_best_inference(
    family: ModelFamily, models: Any, data: Any, config: Any, key: jax.Array, *, steps: int,
    progress: bool = False,
) -> Any:
    """The truth model (``models``: one stacked restart with the true decoder) with its best inference part:
    :func:`fit_inference` for ``steps`` steps (to convergence when ``config.converge``) with the key
    ``fold_in(key, 1)``. Returns the single (unstacked) model."""
    result = fit_inference(family, models, data, config, jax.random.fold_in(key, 1), steps=steps,
                           converge=config.converge, description="truth: best encoder", progress=progress)
    return take(result.model, 0)
