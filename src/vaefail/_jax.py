"""JAX settings for fast runs, applied by :func:`configure` (never on import): a persistent compilation
cache, one CPU device per core, the unrolled Threefry lowering and the XLA thread count.

``import vaefail`` changes no JAX setting, so a notebook keeps its own JAX set-up; the ``vaefail`` command
and the reproduce workers call :func:`configure` first. Call it yourself, before any JAX computation, to
get the same speed from the Python API.

Compiling the fused training loops takes seconds per configuration, often longer than training a small
one; XLA's persistent cache makes every later process (tests, sweep workers, reruns) reuse compiled
executables. Measured: a 2-restart 500-step figure8 fit took 25 s in a fresh process, 7 s with the cache
warm. The cache lives in ``$VAEFAIL_JAX_CACHE`` (default ``~/.cache/vaefail/jax``); set it to ``off`` to
disable it. A cache directory the user already configured in JAX is left alone.

XLA gives a process one CPU device, and the stacked restarts of a fit run on it one batched op at a time;
the second core mostly idles (one process with two XLA threads did no more than one thread,
docs/performance.md).
With one CPU device per core, :func:`vaefail.training.optimise` shards the restart axis across the
devices, so each core trains its share of the restarts (measured on 2 cores: IWAE S = 20, 10 restarts,
1,351 -> 2,288 restart-steps/s). (:func:`vaefail.metrics.log_likelihood` does not split: its chunks ran
faster on one device with XLA's whole thread pool.)
``$VAEFAIL_CPU_DEVICES`` sets the count (the reproduce workers use 1: they are already one process per
core); a count set through ``XLA_FLAGS`` or after JAX has started is left alone.

XLA sizes its CPU thread pool from the cores the process may run on when it starts, and ignores the
thread-count flags in ``XLA_FLAGS`` (measured, jax 0.10: two busy XLA threads despite them; two such
processes on two cores burnt 1.5 CPU-seconds per second of work). ``$VAEFAIL_XLA_THREADS=N`` (the reproduce
workers use 1) starts XLA while the process is confined to N cores, then gives every thread all the
process's cores back: XLA keeps N threads and the OS still balances the processes over the cores.

JAX lowers the Threefry hash behind every ``jax.random`` draw on CPU as a rolled loop (five iterations
of four rounds) and elsewhere unrolled. On XLA:CPU (jax 0.10) the rolled loop is slower both to compile
and to run: measured on one core, a program drawing 153,600 bits took 3.6 s rolled vs 0.2 s unrolled to
compile and run once, then 27 vs 7 ns per draw; a fresh-process figure8 IWAE configuration (122 compiled
programs) took 54-56 vs 33-37 CPU-s, and ``reproduce all --preset quick`` on a fresh machine 948 -> 792.
:func:`_configure_threefry` registers the unrolled lowering for CPU too. It is the same hash, so every
random number, and every result, is bit-identical (tested).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def configure(
    *,
    compilation_cache: bool = True,
    cpu_devices: int | None = None,
    xla_threads: int | None = None,
    unrolled_threefry: bool = True,
) -> None:
    """Apply vaefail's JAX settings to this process (call it before any JAX computation).

    Parameters
    ----------
    compilation_cache
        Use XLA's persistent compilation cache in ``$VAEFAIL_JAX_CACHE`` (default
        ``~/.cache/vaefail/jax``; ``off`` disables it). A cache directory already set in JAX is kept.
    cpu_devices
        Number of CPU devices (default ``$VAEFAIL_CPU_DEVICES``, else one per core the process may run on).
        Training splits a fit's restarts across them. Ignored once JAX has started, or when the count is
        set through ``XLA_FLAGS`` or ``jax_num_cpu_devices``.
    xla_threads
        Size of XLA's CPU thread pool (default ``$VAEFAIL_XLA_THREADS``, else XLA's own: one per core).
        Starts JAX's CPU backend.
    unrolled_threefry
        Lower the Threefry hash unrolled on CPU too: the same random numbers, compiled and drawn faster.

    Notes
    -----
    Idempotent: calling it again changes nothing that is already set.
    """
    _configure_devices(cpu_devices)
    if compilation_cache:
        _configure_cache()
    if unrolled_threefry:
        _configure_threefry()
    _configure_threads(xla_threads)  # last: it starts the backend


def _configure_cache() -> None:
    where = os.environ.get("VAEFAIL_JAX_CACHE", str(Path.home() / ".cache" / "vaefail" / "jax"))
    if where.strip().lower() in ("", "0", "off", "none", "false"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs speed
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _configure_threefry() -> None:
    try:  # JAX internals: if they move, keep JAX's own (slower, same numbers) lowering
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry
        mlir.register_lowering(
            threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule, platform="cpu"
        )
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        pass


def _configure_devices(count_wanted: int | None = None) -> None:
    if jax.config.jax_num_cpu_devices != -1 or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return  # the user chose
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    wanted = str(count_wanted) if count_wanted is not None else os.environ.get("VAEFAIL_CPU_DEVICES", "")
    wanted = wanted.strip()
    if wanted:
        if wanted.isdigit() and int(wanted) >= 1:
            count = int(wanted)
        else:
            warnings.warn(f"VAEFAIL_CPU_DEVICES must be a positive integer, got {wanted!r}; using {count}",
                          stacklevel=3)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already started in this process: keep its devices
        pass


def leading_axis_shardings(n: int) -> tuple[Any, Any]:
    """Shardings that split a leading axis of length ``n`` across this process's devices, and that
    replicate: ``(split, replicated)``.

    ``(None, None)`` with one device, or when ``n`` does not divide evenly among the devices (each device
    must get the same share). jit partitions a computation whose inputs are split this way, so with one
    CPU device per core each core computes its share (the independent restarts of a fit).
    """
    devices = jax.devices()
    if len(devices) < 2 or n % len(devices):
        return None, None
    mesh = jax.sharding.Mesh(np.array(devices), ("shard",))
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("shard")),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def put_arrays(tree: Any, sharding: Any) -> Any:
    """``jax.device_put`` of the array leaves of ``tree`` only (other leaves are left as they are)."""
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, (jax.Array, np.ndarray)) else a, tree
    )


def materialise(a: jax.Array, width: int = 16) -> jax.Array:
    """``a`` itself, routed through a product with the identity so that XLA computes it only once.

    XLA on CPU fuses elementwise producers into their consumers and evaluates them again for every
    element a consumer reads. Standard normal draws are such a producer, and an expensive one (the
    inverse error function): with ``K = 1`` the first decoder layer is an outer product that XLA writes
    elementwise, so the draws were transformed 50 times per sample, once per hidden unit, and again in
    the backward pass. XLA does not fuse a matrix product into its consumers (and does not simplify a
    product with the identity away), so ``a`` is stored once and read thereafter. Measured, IWAE
    ``S = 20``, batch 100, ``K = 1``, one core: a training step 2.3 -> 1.6 ms. Exact for finite ``a``: each
    output is ``1 * a_i`` plus zeros at full precision (a -0 may become +0). ``a.size`` must share a
    factor of at least 4 with ``width``, else ``a`` is returned as it is.
    """
    m = math.gcd(a.size, width)
    if m < 4:
        return a
    eye = jnp.eye(m, dtype=a.dtype)
    return jnp.matmul(a.reshape(-1, m), eye, precision=jax.lax.Precision.HIGHEST).reshape(a.shape)


def _configure_threads(threads: int | None = None) -> None:
    wanted = str(threads) if threads is not None else os.environ.get("VAEFAIL_XLA_THREADS", "").strip()
    if not wanted or not hasattr(os, "sched_setaffinity"):
        return
    allowed = os.sched_getaffinity(0)
    if not wanted.isdigit() or not 1 <= int(wanted) < len(allowed):
        return
    os.sched_setaffinity(0, set(sorted(allowed)[: int(wanted)]))
    try:
        jax.devices()  # starts the CPU client: its thread pool is sized now
    finally:
        for tid in os.listdir("/proc/self/task"):  # threads started meanwhile inherited the mask
            try:
                os.sched_setaffinity(int(tid), allowed)
            except OSError:  # a thread that has exited
                pass
