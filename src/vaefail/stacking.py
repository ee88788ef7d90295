"""Stacked restarts: R identically-structured Equinox modules held as one module whose array leaves have a
leading restart axis of length R."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def stack(models: list[Any]) -> Any:
    """Stack identically-structured modules along a new leading restart axis."""
    arrays = [eqx.filter(m, eqx.is_array) for m in models]
    static = eqx.filter(models[0], eqx.is_array, inverse=True)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *arrays)
    return eqx.combine(stacked, static)


def take(stacked: Any, index: int | slice | np.ndarray) -> Any:
    """Select restarts ``index`` from a stacked module."""
    return jax.tree_util.tree_map(lambda a: a[index] if eqx.is_array(a) else a, stacked)


def concat(a: Any, b: Any) -> Any:
    """Concatenate two stacked modules along the restart axis."""
    return jax.tree_util.tree_map(
        lambda u, v: jnp.concatenate([u, v]) if eqx.is_array(u) else u, a, b
    )


def restart_count(stacked: Any) -> int:
    """The number of restarts ``R`` of a stacked module (the leading axis of its inexact array leaves)."""
    return jax.tree_util.tree_leaves(eqx.filter(stacked, eqx.is_inexact_array))[0].shape[0]
