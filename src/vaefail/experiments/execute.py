"""Run tasks locally (a pool of single-threaded worker processes) or on a Ray cluster, into a store.

Workers return the finished configuration's files as bytes and the driver writes them into the
:class:`~vaefail.experiments.store.ResultsStore`, so the same code serves a local pool and a remote
cluster, and a configuration's folder appears only once it is complete. Each worker (local or Ray) runs
XLA with one thread and one device (:data:`WORKER_ENV`): on this project's 2-core machines two
single-threaded processes did twice the work of one two-threaded process (docs/performance.md), and the
same thread count everywhere makes local and Ray results identical.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vaefail._jax import configure
from vaefail.errors import ConfigError, VaefailError, unknown_name
from vaefail.experiments.store import ResultsStore

EXECUTORS = ("local", "ray")
#: Environment of every worker: one XLA thread and one device each (two single-threaded processes did
#: twice the work of one two-threaded process, docs/performance.md), and glibc malloc keeping large buffers
#: instead of returning them to the OS after every step (docs/performance.md: measured +7-15% for training,
#: 2x for importance sampling). XLA's own thread flags (``--xla_cpu_multi_thread_eigen=false``) are ignored by
#: jax 0.10 (same numbers and thread count with and without them), so ``VAEFAIL_XLA_THREADS`` limits it.
WORKER_ENV = {
    "VAEFAIL_CPU_DEVICES": "1",  # a worker is one core already (vaefail._jax)
    "VAEFAIL_XLA_THREADS": "1",  # starts XLA with a one-thread pool (vaefail._jax)
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(1024 * 1024 * 1024),
}

Job = tuple[str, dict[str, Any]]  # (store key, task spec)


def execute(
    jobs: Sequence[Job],
    store: ResultsStore,
    run: Callable[[dict[str, Any]], dict[str, bytes]],
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    redo: Collection[str] = (),
) -> int:
    """Run every job whose key is not yet in ``store`` or is in ``redo``; returns how many were computed.

    Parameters
    ----------
    jobs
        ``(key, spec)`` pairs; duplicates of a key are run once.
    store
        Where finished configurations go (and where finished ones are found and skipped).
    run
        ``run(spec) -> {filename: bytes}``, a picklable module-level function.
    executor
        ``"local"``: ``workers`` processes on this machine (default: the number of cores; 1 runs in this
        process). ``"ray"``: one Ray task per configuration on the cluster at ``address`` (default: start
        a local Ray instance).
    redo
        Keys to compute again although they are in the store (stale results); each new result replaces
        the old folder.
    """
    check_executor(executor, address)
    redo = set(redo)
    todo = list({k: s for k, s in jobs if k in redo or not store.has(k)}.items())
    todo = schedule(todo)
    if not todo:
        return 0
    workers = workers or os.cpu_count() or 1
    with _bar(progress, len(todo)) as advance, _sigterm_interrupts():
        if executor == "ray":
            results = _run_ray(todo, run, address, workers)
        elif workers == 1 or len(todo) == 1:
            results = ((k, run(s)) for k, s in todo)
        else:
            results = _run_pool(todo, run, workers)
        for key, files in results:
            store.put(key, files, replace=key in redo)
            advance()
    return len(todo)


def schedule(todo: list[Job]) -> list[Job]:
    """The order to start jobs in: longest first (no long task left alone at the end); among jobs of equal
    cost, the first repetition of every configuration before any second one.

    Repetitions differ only in their seeds, so they compile exactly the same XLA programs: started side
    by side, two workers would both compile them; one after the other, the second finds them in the
    persistent cache. This order alone saved little (on a fresh machine compilation is about a third of
    a quick reproduce run's CPU time: 1,274 -> 1,252 CPU-seconds), as most programs are shared by
    different configurations too; the local pool therefore also hands each free worker the job
    :func:`next_job` picks from this order, keeping configurations that share programs on one worker.
    """
    seen: dict[str, int] = {}
    ranked = []
    for job in todo:
        group = json.dumps(_without_seeds(job[1]), sort_keys=True, default=str)
        ranked.append((-estimated_cost(job[1]), seen.setdefault(group, 0), len(ranked), job))
        seen[group] += 1
    return [job for *_, job in sorted(ranked, key=lambda r: r[:3])]


def _without_seeds(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    return {k: _without_seeds(v) for k, v in spec.items() if k not in ("seed", "data_seed", "seeds")}


def estimated_cost(spec: dict[str, Any]) -> float:
    """A rough relative cost of a job, for scheduling only: restarts x steps x samples per step.

    Reads ``spec["fit"]`` (``restarts``, ``steps``, ``objective``, ``num_samples``, ``latent_dim``), with
    defaults for anything missing, so any spec shape is accepted.
    """
    fit = spec.get("fit", {}) if isinstance(spec, dict) else {}
    if not isinstance(fit, dict):
        return 0.0
    samples = float(fit.get("num_samples", 1)) if fit.get("objective") == "iwae" else 1.0
    return float(fit.get("restarts", 10)) * float(fit.get("steps", 1)) * samples * (
        1.0 + 0.2 * float(fit.get("latent_dim", 1)))


def check_executor(executor: str, address: str | None) -> None:
    """Raise a clear error for an unknown executor, an address without Ray, or an address that is not
    HOST:PORT or where nothing listens."""
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, EXECUTORS)
    if address is not None and executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if address is not None:  # before anything is computed or written
        _check_reachable(address)


#: Fields of a task's ``fit`` that decide which XLA programs it compiles (array shapes and the static
#: structure: objective, encoder, K, samples, restarts, batch and split sizes, of every task kind).
#: Seeds, learning rates and ``sigma_eps`` (fixed or learned) are data: tasks differing only in them share
#: every program. The benchmark is left out on purpose: the training and evaluation programs, most of the
#: compilation, depend on its data dimension only, which the paper's benchmarks share.
PROGRAM_FIELDS = ("objective", "encoder", "latent_dim", "num_samples", "dreg", "restarts",
                  "truth_restarts", "batch_size", "hidden_width", "hidden_depth", "activation", "eval_every",
                  "n_train", "n_val", "n_test", "labelled_fraction", "labels_per_class")


def program_family(spec: dict[str, Any]) -> str:
    """A key shared by tasks that compile the same XLA programs (see :data:`PROGRAM_FIELDS`)."""
    fit = spec.get("fit", {}) if isinstance(spec, dict) else {}
    fit = fit if isinstance(fit, dict) else {}
    kind = spec.get("kind", "fit") if isinstance(spec, dict) else None
    return json.dumps([kind, {k: fit[k] for k in PROGRAM_FIELDS if k in fit}], sort_keys=True, default=str)


def next_job(queue: Sequence[Job], mine: set[str], others: set[str], guard: float = 0.25) -> int:
    """Index in ``queue`` (in :func:`schedule` order) of the job to start on a worker that is free.

    ``mine`` holds the program families (:func:`program_family`) this worker has run, ``others`` those the
    other workers have run or are running. Among the jobs whose estimated cost is at least ``guard`` times
    the largest remaining one (so the longest-first order still holds across cost tiers), it takes the
    first of a family this worker has already compiled, else the first of a family no other worker has
    touched, else the first job. A process reuses the programs it compiled in memory, while a program
    new to it is traced, lowered and compiled (or loaded from the persistent cache) again, and two
    workers starting the same family at once on a fresh machine both compile it. Measured on 2 cores,
    ``vaefail reproduce all --preset quick``, against plain longest-first dispatch: empty XLA cache 7 min
    46 s -> 6 min 29 s (900 -> 750 CPU-seconds, of which compilation 324 -> 197), warm cache 5 min 3 s ->
    4 min 43 s (580 -> 543).
    """
    if not queue:
        raise ValueError("no job left to start")
    head = estimated_cost(queue[0][1])
    eligible = [(i, program_family(spec)) for i, (_, spec) in enumerate(queue)
                if estimated_cost(spec) >= guard * head]
    for wanted in (lambda f: f in mine, lambda f: f not in others):
        for i, family in eligible:
            if wanted(family):
                return i
    return 0


def _run_pool(todo: list[Job], run: Callable, workers: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Run ``todo`` on ``workers`` processes, one job in flight per worker, each free worker given the job
    :func:`next_job` picks for it (a worker reports its process id with every result)."""
    queue = list(todo)
    workers = min(workers, len(queue))
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_exit_with_parent)
    ran: dict[int, set[str]] = {}  # worker pid -> families it ran
    running: dict[cf.Future, tuple[str, str]] = {}  # future -> (store key, family)

    def start(mine: set[str]) -> None:
        others = {f for fams in ran.values() if fams is not mine for f in fams}  # other workers' families
        others |= {family for _, family in running.values()}
        key, spec = queue.pop(next_job(queue, mine, others))
        with _env(**WORKER_ENV):  # workers start at submit and inherit this
            running[pool.submit(_run_reporting_pid, run, spec)] = (key, program_family(spec))

    try:
        for _ in range(workers):
            start(set())
        while running:
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                key, family = running.pop(future)
                try:
                    pid, files = future.result()
                except cf.process.BrokenProcessPool as err:
                    raise VaefailError(
                        f"a worker process died (out of memory or killed?) while running configuration "
                        f"{key}; finished configurations are kept, rerun to resume: {err}"
                    ) from None
                ran.setdefault(pid, set()).add(family)
                yield key, files
                if queue:
                    start(ran[pid])
    except BaseException:  # Ctrl-C, SIGTERM (or a failure): stop now, do not wait for running configurations
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` in the driver (on the main thread;
    elsewhere nothing changes), so ``kill`` stops the workers as Ctrl-C does instead of leaving them running
    without a driver; finished configurations are kept either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_reporting_pid(run: Callable, spec: dict[str, Any]) -> tuple[int, dict[str, bytes]]:
    return os.getpid(), _run_configured(run, spec)


def _run_configured(run: Callable, spec: dict[str, Any]) -> dict[str, bytes]:
    """``run(spec)`` in a worker process, after applying vaefail's JAX settings (:func:`vaefail.configure`,
    which reads :data:`WORKER_ENV`)."""
    configure()
    return run(spec)


def _exit_with_parent(interval: float = 1.0) -> None:
    """The local pool's worker initialiser: exit when the driver that started the worker is gone (killed with
    no chance to stop its workers, e.g. SIGKILL), instead of computing configurations nobody will store. A
    daemon thread checks the parent process id every ``interval`` seconds."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="vaefail-parent-watch", daemon=True).start()


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes.

    ``shutdown`` alone waits for the configurations the workers are running, and for those already handed
    to them (a paper-preset configuration takes 20 minutes); a worker that got the Ctrl-C itself even
    starts the next one. Their results are not stored, so nothing half-finished is kept.
    """
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _run_ray(todo: list[Job], run: Callable, address: str | None, workers: int):
    if address is not None and _is_loopback(address):
        # A cluster on this machine's loopback interface (``ray start --head --node-ip-address 127.0.0.1``):
        # Ray would otherwise rewrite 127.0.0.1 to the machine's outward address, where it does not listen,
        # and retry for minutes. Read by Ray when it is imported (below, in a fresh process).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'vaefail[ray]'"
        ) from None
    env = {"env_vars": dict(WORKER_ENV)}
    with warnings.catch_warnings():
        # Ray starts its local services with subprocess, whose fork is followed at once by exec: JAX's
        # warning about forking a process that runs JAX (a deadlock risk for a child that goes on running
        # Python) does not apply.
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        if address is None:
            # A private local instance on the loopback interface only; "local" starts one even when another
            # cluster's address is recorded in /tmp/ray/ray_current_cluster or RAY_ADDRESS.
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env=env, _node_ip_address="127.0.0.1")
        else:
            _check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, runtime_env=env)
            except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
                raise VaefailError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
    try:
        remote = ray.remote(num_cpus=1)(_run_configured).options(
            name=getattr(getattr(run, "func", run), "__name__", "task"))  # a functools.partial's function
        pending = {remote.remote(run, spec): key for key, spec in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        ray.shutdown()


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message if nothing listens at ``host:port`` (Ray would retry for minutes)."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address must be HOST:PORT (or 'auto'), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise VaefailError(
            f"no Ray cluster reachable at {address}: {err.strerror or err}. Start one with "
            "`ray start --head` or drop --address to use a local instance."
        ) from None


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    with Progress(
        TextColumn("[bold]configurations"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
    ) as bar:
        task = bar.add_task("configurations", total=total)
        yield lambda: bar.update(task, advance=1)
