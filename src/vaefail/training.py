"""The optimiser of the restart protocol: R stacked restarts trained together, steps fused with ``lax.scan``.

Restarts are stacked along a leading axis of every parameter array and trained with :func:`jax.vmap`
over a :func:`jax.lax.scan` of optimisation steps; the Python loop only runs once per evaluation chunk
(``eval_every`` steps), where the validation bound is computed, the best parameters of each restart are
kept, divergence is detected and progress is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vaefail._jax import leading_axis_shardings, put_arrays
from vaefail.stacking import take

Loss = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]


@dataclass(frozen=True)
class OptimiseResult:
    """Outcome of :func:`optimise` for ``R`` stacked restarts.

    Attributes
    ----------
    model
        Stacked models: for each restart, the parameters with the best validation score (the final
        ones when there is no validation function).
    best_score
        Best validation score per restart, shape ``(R,)``; ``-inf`` for a diverged restart.
    diverged
        Whether the restart produced a non-finite loss or validation score, shape ``(R,)``.
    steps
        Optimisation steps run (the same for every restart).
    history
        Validation scores after each chunk, shape ``(n_evals, R)``.
    """

    model: Any
    best_score: np.ndarray
    diverged: np.ndarray
    steps: int
    history: np.ndarray


def optimise(
    model: Any,
    loss: Loss,
    data: jax.Array | None,
    key: jax.Array,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    final_lr_factor: float = 0.1,
    trainable: Callable[[Any], Any] | None = None,
    score: Callable[[Any, Any], jax.Array] | None = None,
    score_data: Any = None,
    eval_every: int = 500,
    patience: int = 6,
    tol: float = 1e-3,
    converge: bool = False,
    group: int | None = None,
    description: str = "training",
    progress: bool = True,
) -> OptimiseResult:
    """Minimise ``loss`` for every restart of a stacked model with Adam, fused over steps.

    With several devices (one CPU device per core, :mod:`vaefail._jax`) and ``R`` divisible by their
    number, the restarts are split across the devices; on one device they run in pairs
    (:func:`restart_group`). Restarts never interact, so either changes only floating-point rounding.

    Parameters
    ----------
    model
        A stacked module (leading axis ``R`` on every array leaf).
    loss
        ``loss(model, batch, key) -> (scalar, aux)`` for *one* restart; ``batch`` is ``batch_size`` rows
        of ``data`` drawn with replacement (``None`` when ``data`` is ``None``).
    data
        Training data, shape ``(n, D)``, shared by all restarts, or ``None``.
    key
        PRNG key; restart ``r`` uses ``fold_in(key, r)``, so its trajectory does not depend on ``R``.
    steps, batch_size, learning_rate, final_lr_factor
        Step budget (rounded up to a multiple of ``eval_every``), batch size, Adam learning rate decayed
        exponentially to ``learning_rate * final_lr_factor`` at ``steps``.
    trainable
        ``trainable(model) -> sub-module`` selecting what to train (e.g. ``lambda m: m.encoder``);
        gradients of everything else are zeroed, which keeps it fixed under Adam. ``None`` trains
        every floating-point array.
    score
        ``score(model, score_data) -> scalar`` for one restart, higher is better (e.g. the mean
        validation bound). Evaluated every ``eval_every`` steps; the best-scoring parameters are kept.
    eval_every, patience, tol, converge
        With ``converge``, stop when no restart improved its best score by more than ``tol`` for
        ``patience`` evaluations in a row.
    group
        On one device, how many restarts to vmap at a time (a divisor of ``R``; the groups run one after
        another); default :func:`restart_group`. Ignored when the restarts are split across devices.
    description, progress
        Rich progress bar label, and whether to show it.
    """
    eval_every = min(eval_every, steps)
    n_chunks = -(-steps // eval_every)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    n_restarts = jax.tree_util.tree_leaves(params)[0].shape[0]
    mask = None
    if trainable is not None:
        mask = jax.tree_util.tree_map(lambda _: False, take(params, 0))
        mask = eqx.tree_at(
            trainable, mask, replace_fn=lambda sub: jax.tree_util.tree_map(lambda _: True, sub)
        )
    opt_state = jax.vmap(_ADAM.init)(params)
    total = n_chunks * eval_every
    hyper = jnp.asarray([learning_rate, np.log(final_lr_factor) / total], dtype=jnp.float32)
    restart_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(n_restarts))
    split, shared = leading_axis_shardings(n_restarts)
    if group is not None and (group < 1 or n_restarts % group):
        raise ValueError(f"group must divide the {n_restarts} restarts, got {group}")
    if split is not None:
        group = n_restarts
        params, opt_state, restart_keys = jax.device_put((params, opt_state, restart_keys), split)
        data, score_data, hyper = put_arrays((data, score_data, hyper), shared)
    chunk_args = dict(static=static, loss=loss, mask=mask, batch_size=batch_size,
                      group=group or restart_group(n_restarts))
    best_params = params
    best = np.full(n_restarts, -np.inf)
    diverged = np.zeros(n_restarts, dtype=bool)
    history: list[np.ndarray] = []
    stale = 0
    steps_done = 0
    with _progress(progress) as bar:
        # the first chunk traces and compiles (seconds to minutes), shown as such rather than as 0 steps/s
        task = bar.add_task(f"{description} (compiling)", total=n_chunks * eval_every, best="")
        for i in range(n_chunks):
            chunk_keys = jax.vmap(
                lambda k, i=i: jax.random.split(jax.random.fold_in(k, i), eval_every)
            )(restart_keys)
            params, opt_state, finite = _run_chunk(params, opt_state, chunk_keys, data, hyper, **chunk_args)
            steps_done += eval_every
            diverged |= ~np.asarray(finite)
            if i == 0:
                bar.update(task, description=description)
            if score is None:
                bar.update(task, advance=eval_every)
                continue
            scores = np.asarray(_evaluate(params, score_data, static=static, score=score), np.float64)
            diverged |= ~np.isfinite(scores)
            scores = np.where(diverged, -np.inf, scores)
            history.append(scores)
            improved = scores > best
            alive = ~diverged
            gain = np.max(
                np.where(np.isfinite(best[alive]), scores[alive] - best[alive], np.inf), initial=-np.inf
            )
            best = np.maximum(best, scores)
            best_params = _where_restart(improved, params, best_params)
            stale = stale + 1 if gain <= tol else 0
            shown = best[np.isfinite(best)]
            bar.update(
                task, advance=eval_every,
                best=f"best val {shown.max():.4f}" if shown.size else "all diverged",
            )
            if converge and stale >= patience:
                bar.update(task, total=steps_done)
                break
    if score is None:
        best_params = params
    if split is not None:  # hand back ordinary arrays, not committed to any device (set)
        best_params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), best_params)
    return OptimiseResult(
        model=eqx.combine(best_params, static),
        best_score=np.where(diverged, -np.inf, best),
        diverged=diverged,
        steps=steps_done,
        history=np.array(history).reshape(len(history), n_restarts),
    )


#: Adam without a learning rate: the (decaying) rate is applied in :func:`_run_chunk` from traced
#: hyper-parameters, so one compiled chunk serves every learning rate and step budget.
_ADAM = optax.scale_by_adam()


def restart_group(restarts: int) -> int:
    """How many restarts one device vmaps at once: pairs when ``restarts`` is even and above 2, else all.

    :func:`_run_chunk` runs the groups one after another. Measured on one core (restart-steps/s, 10
    restarts, best of 3, groups of 1 / 2 / 5 / all 10): IWAE S = 20, K = 3, batch 256 (the paper preset's
    shape) 274 / 367 / 300 / 290 and 281 / 340 / 287 / 255; batch 100 797 / 1,038 / 942 / 786; IWAE S = 50,
    batch 100 338 / 378 / 326 / 283; IWAE S = 10, K = 1, batch 100 1,527 / 1,715 / 1,482 / 1,732 and
    1,813 / 1,972 / 1,952 / 1,722; VAE, K = 1, batch 256 4,725 / 7,055 / 6,842 / 5,954; VAE, K = 3, batch 100
    7,799 / 10,281 / 11,025 / 10,129. Pairs were the fastest or within this machine's noise of it in every
    shape (a single restart is slower than a pair); ``python benchmarks/restart_groups.py`` measures it
    again. Restarts never interact, so only the floating-point rounding changes with the grouping.
    """
    return 2 if restarts > 2 and restarts % 2 == 0 else restarts


@eqx.filter_jit
def _run_chunk(params, opt_state, chunk_keys, data, hyper, *, static, loss, mask, batch_size, group):
    """``len(chunk_keys[0])`` Adam steps for every restart: ``vmap`` over restarts of a ``scan`` over steps.

    ``group`` restarts are vmapped at a time and the ``R / group`` groups run one after another
    (:func:`jax.lax.map`, :func:`restart_group`). Module-level and jitted with :func:`equinox.filter_jit`,
    so the compiled code is reused by every call with the same shapes, model structure, ``loss`` object,
    mask, batch size and grouping. ``hyper`` holds the learning rate and the log of its decay per step:
    ``lr_t = lr * exp(log_decay * t)``.
    """

    def one_step(carry, step_key):
        p, state = carry
        k_batch, k_loss = jax.random.split(step_key)
        batch = None
        if data is not None:
            batch = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
        value, grads = jax.value_and_grad(lambda q: loss(eqx.combine(q, static), batch, k_loss)[0])(p)
        if mask is not None:
            grads = jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
        updates, state = _ADAM.update(grads, state, p)
        lr = hyper[0] * jnp.exp(hyper[1] * state.count.astype(jnp.float32))
        updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
        return (optax.apply_updates(p, updates), state), value

    def chunk(p, state, keys):
        (p, state), values = jax.lax.scan(one_step, (p, state), keys)
        return p, state, jnp.all(jnp.isfinite(values))

    n = chunk_keys.shape[0]
    if group == n:
        return jax.vmap(chunk)(params, opt_state, chunk_keys)
    grouped = jax.tree_util.tree_map(lambda a: a.reshape(n // group, group, *a.shape[1:]),
                                     (params, opt_state, chunk_keys))
    out = jax.lax.map(lambda args: jax.vmap(chunk)(*args), grouped)
    return jax.tree_util.tree_map(lambda a: a.reshape(n, *a.shape[2:]), out)


@eqx.filter_jit
def _evaluate(params, score_data, *, static, score):
    """``score`` of every restart (vmapped), compiled once per structure like :func:`_run_chunk`."""
    return jax.vmap(lambda p: score(eqx.combine(p, static), score_data))(params)


@jax.jit
def _where_restart(selected: jax.Array, new: Any, old: Any) -> Any:
    """Per restart, take ``new`` where ``selected`` else ``old`` (stacked pytrees of arrays; one compiled
    function per structure, not one per leaf shape)."""
    sel = jnp.asarray(selected)
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(sel.reshape(-1, *([1] * (a.ndim - 1))), a, b), new, old
    )


def _progress(enabled: bool) -> Progress:
    """A progress bar on stderr (stdout carries results only): steps, best validation score, elapsed time
    and the estimated time remaining."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  {task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
