"""Experiment grids, the results store (atomic, resumable, shared), local and Ray executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from vaefail.errors import ConfigError, StoreError, UnknownNameError, VaefailError
from vaefail.experiments.grid import EXPERIMENTS, load_experiment, load_experiments, parse_only, select
from vaefail.experiments.reproduce import reproduce, task_key
from vaefail.experiments.store import ABANDONED_AFTER, ResultsStore, SharedFits, config_hash


def test_every_grid_expands_and_validates_at_every_preset():
    for name in EXPERIMENTS:
        for preset in ("quick", "paper", "smoke"):
            exp = load_experiment(name, preset)
            assert exp.tasks and exp.description
            assert len({task_key(t) for t in exp.tasks}) == len(exp.tasks)  # no accidental duplicates
    table1 = load_experiment("table1", "paper")
    assert len(table1.tasks) == 2 * 2 * 3 * 2 * 3  # benchmarks x objectives x K x sigma modes x repeats
    assert {t.fit["restarts"] for t in table1.tasks} == {10}
    learned = [t for t in table1.tasks if t.labels["sigma_mode"] == "learned"]
    assert learned and all(t.fit["learn_sigma"] for t in learned)
    sigma = load_experiment("sigma", "quick", repeats=1)
    assert sorted(t.fit["sigma_eps"] for t in sigma.tasks)[0] == pytest.approx(0.5 * 0.02**0.5)


def test_grid_errors():
    with pytest.raises(UnknownNameError, match="unknown experiment 'tabel1'.*Did you mean 'table1'"):
        load_experiments("tabel1")
    with pytest.raises(UnknownNameError, match="unknown preset 'fast'"):
        load_experiment("px", "fast")
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        load_experiment("px", "quick", repeats=0)


def test_only_selects_part_of_a_grid():
    paper = load_experiments("table1", "paper", repeats=1)
    (fixed,) = select(paper, parse_only(["sigma_mode=fixed"]))
    assert len(fixed.tasks) == 12 and sum(t.fit["restarts"] for t in fixed.tasks) == 120
    assert all(not t.fit["learn_sigma"] for t in fixed.tasks)
    (some,) = select(paper, parse_only(["latent_dim=1,3", "objective=iwae", "latent_dim=2"]))
    assert sorted({t.labels["latent_dim"] for t in some.tasks}) == [1, 2, 3]
    assert {t.labels["objective"] for t in some.tasks} == {"iwae"} and len(some.tasks) == 12
    assert select(paper, {}) == paper
    # strict: experiments whose configurations lack a label are left out
    chosen = select(load_experiments("all", "quick"), parse_only(["latent_dim=1", "objective=vae"]))
    assert {e.name for e in chosen} == {"table1", "px", "latent", "sigma", "sweep", "downstream", "flexible"}
    labels = [t.labels for e in chosen for t in e.tasks]
    assert all(la["latent_dim"] == 1 and la["objective"] == "vae" for la in labels)
    with pytest.raises(UnknownNameError, match="unknown label .* 'sigma'.*Did you mean 'sigma_mode'"):
        select(paper, parse_only(["sigma=fixed"]))
    with pytest.raises(ConfigError, match="no configuration has sigma_mode=fix; .* takes fixed, learned"):
        select(paper, parse_only(["sigma_mode=fix"]))
    with pytest.raises(ConfigError, match="no configuration matches all of: benchmark=semicircle latent_d"):
        select(load_experiments("all", "quick"), parse_only(["benchmark=semicircle", "latent_dim=1"]))
    for bad in ("sigma_mode", "=fixed", "sigma_mode=", "sigma_mode=,"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_only([bad])


def test_config_hash_is_canonical():
    a = {"fit": {"x": 1, "y": [1, 2]}, "eval": {}}
    b = {"eval": {}, "fit": {"y": [1, 2], "x": 1}}
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 16
    assert config_hash(a) != config_hash({"fit": {"x": 2, "y": [1, 2]}, "eval": {}})


def test_store_put_is_atomic_and_first_writer_wins(tmp_path):
    store = ResultsStore(tmp_path / "s")
    assert store.put("k", {"metrics.json": b'{"a": 1}', "x.bin": b"1"})
    assert not store.put("k", {"metrics.json": b'{"a": 2}'})  # a second writer discards its copy
    assert store.metrics("k") == {"a": 1} and store.has("k")
    assert not list(store.runs.glob(".tmp-*"))
    # a killed writer's leftovers are cleaned up by age, not by process id: a fresh temporary folder may
    # belong to a live writer on another host sharing the store (its process id means nothing here)
    (store.runs / ".tmp-j-999999999-abcd").mkdir()
    (store.runs / ".tmp-k-1-live").mkdir()
    hour_ago = time.time() - ABANDONED_AFTER - 60
    os.utime(store.runs / ".tmp-j-999999999-abcd", (hour_ago, hour_ago))
    ResultsStore(tmp_path / "s")
    assert [p.name for p in store.runs.glob(".tmp-*")] == [".tmp-k-1-live"]


def test_shared_fits_first_writer_wins_and_damage_is_detected(tmp_path):
    store = ResultsStore(tmp_path / "s")
    shared = SharedFits.at(store.root, "f" * 16)
    assert SharedFits.at(tmp_path / "not-a-store", "f" * 16) is None  # a worker that does not see the store
    assert shared.load("truth-start-decoder-1") is None
    shared.save("truth-start-decoder-1", b"weights")
    shared.save("truth-start-decoder-1", b"weights")  # a second worker that computed it too: kept as is
    assert shared.load("truth-start-decoder-1") == b"weights"
    assert SharedFits.at(store.root, "e" * 16).load("truth-start-decoder-1") is None  # other code: not read
    (shared.folder("truth-start-decoder-1") / "data.eqx").write_bytes(b"weighs")  # damaged on disk
    with pytest.warns(RuntimeWarning, match="damaged shared fit .*checksum"):
        assert shared.load("truth-start-decoder-1") is None  # so it is computed again ...
    shared.save("truth-start-decoder-1", b"weights")  # ... and replaces the damaged copy
    assert shared.load("truth-start-decoder-1") == b"weights"
    assert not list(shared.root.glob(".tmp-*")) and not store.has("truth-start-decoder-1")


def test_store_refuses_incompatible_or_foreign_folders(tmp_path):
    old = tmp_path / "old"
    (old / "runs" / "abc").mkdir(parents=True)
    (old / "store.json").write_text(json.dumps({"format": "vaefail-store/0"}))
    with pytest.raises(StoreError, match="format 'vaefail-store/0'"):
        ResultsStore(old)
    assert (old / "runs" / "abc").is_dir()  # untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not a vaefail results store"):
        ResultsStore(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_unreachable_ray_address_is_one_clear_error(tmp_path):
    with pytest.raises(VaefailError, match="no Ray cluster reachable at 127.0.0.1:9"):
        reproduce("latent", "smoke", tmp_path, executor="ray", address="127.0.0.1:9", progress=False)
    with pytest.raises(ConfigError, match="--address needs --executor ray"):
        reproduce("latent", "smoke", tmp_path, address="127.0.0.1:9", progress=False)


@pytest.mark.slow
def test_local_and_ray_executors_give_identical_tables(tmp_path):
    pytest.importorskip("ray")
    local = reproduce("latent", "smoke", tmp_path / "local", repeats=1, outputs=False, progress=False)
    ray = reproduce("latent", "smoke", tmp_path / "ray", repeats=1, executor="ray", outputs=False,
                    progress=False)
    pd.testing.assert_frame_equal(local.tables["latent"], ray.tables["latent"])


def _finished(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}


@pytest.mark.slow
def test_killed_sweep_resumes_without_recomputing(tmp_path):
    """Kill `vaefail reproduce` after its first finished configuration; the rerun keeps it and completes."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vaefail.cli", "reproduce", "sigma", "--preset", "smoke", "--repeats", "1",
           "--workers", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not _finished(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(out)
    assert 1 <= len(before) < 5, before  # killed part-way through the 5 configurations
    rerun = reproduce("sigma", "smoke", out, repeats=1, workers=1, progress=False)
    assert rerun.computed == 5 - len(before)
    after = _finished(out)
    assert all(after[k] == t for k, t in before.items())  # nothing finished was recomputed
    clean = reproduce("sigma", "smoke", tmp_path / "clean", repeats=1, workers=1, outputs=False,
                      progress=False)
    pd.testing.assert_frame_equal(rerun.tables["sigma"], clean.tables["sigma"])
    assert (out / "sigma.csv").is_file() and (out / "claims.json").is_file()


_NAPPING_DRIVER = """
import os, signal, sys, time
from vaefail.experiments.execute import execute
from vaefail.experiments.store import ResultsStore


def nap(spec):
    if spec["seconds"]:  # a long configuration: say which process runs it
        open(f"{spec['store']}.pid-{os.getpid()}", "w").close()
    time.sleep(spec["seconds"])
    return {"metrics.json": b"{}"}


if __name__ == "__main__":
    # as in a terminal: a test run from a background job would inherit SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    jobs = [(f"k{i}", {"seconds": 300.0 if i else 0.0, "i": i, "store": sys.argv[1]}) for i in range(6)]
    try:
        execute(jobs, ResultsStore(sys.argv[1]), nap, executor=sys.argv[2], workers=2, progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def _napping_driver(tmp_path: Path, executor: str) -> tuple[subprocess.Popen, Path, list[int]]:
    """Start ``_NAPPING_DRIVER`` on two workers and wait until both run a 5-minute configuration (k0, the
    short one, is then finished); returns the driver, its store and the two workers' process ids."""
    script = tmp_path / "driver.py"
    script.write_text(_NAPPING_DRIVER)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(script), str(store), executor], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.time() + 120
    pids: list[int] = []
    while len(pids) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        pids = [int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("store.pid-*")]
    assert len(pids) == 2, "the workers did not start their configurations"
    return proc, store, pids


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_ctrl_c_stops_running_configurations_at_once(tmp_path, executor):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the workers run 5-minute
    configurations: the driver stops them instead of waiting, keeps what finished, writes nothing else
    (with Ray: a private local instance, which ``ray.shutdown`` takes down with its workers)."""
    proc, store, _ = _napping_driver(tmp_path, executor)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("Ctrl-C waited for the running configurations")
    assert proc.returncode == 130 and "interrupted" in out
    assert sorted(os.listdir(store / "runs")) == ["k0"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_driver_alone_stops_its_workers(tmp_path, sig):
    """``kill`` (SIGTERM) or ``kill -9`` of the driver process only, not its group, while both local workers
    run 5-minute configurations: SIGTERM stops them as Ctrl-C does (exit 130, finished work kept); after
    SIGKILL, which the driver cannot handle, the orphaned workers notice and exit within seconds."""
    proc, store, pids = _napping_driver(tmp_path, "local")
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "interrupted" in out
    deadline = time.time() + 20
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in pids if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "a worker outlived its driver"
    assert sorted(os.listdir(store / "runs")) == ["k0"]


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_px_configurations_are_table1_configurations(preset):
    """px's fits (K = 1, sigma_eps fixed) are table1's, with the same evaluation settings: one store key, so
    ``reproduce all`` fits and evaluates them once."""
    table1 = {task_key(t) for t in load_experiment("table1", preset).tasks}
    assert {task_key(t) for t in load_experiment("px", preset).tasks} <= table1


def test_schedule_runs_longest_first_and_separates_repetitions():
    """Equal-cost repetitions of a configuration are not started side by side (they compile the same
    programs; one after the other, the second finds them in the XLA cache)."""
    from vaefail.experiments.execute import estimated_cost, schedule

    def job(name, steps, rep):
        return f"{name}{rep}", {"fit": {"benchmark": name, "steps": steps, "seed": rep, "data_seed": rep}}

    todo = [job(name, steps, rep) for name, steps in (("a", 100), ("b", 400), ("c", 400)) for rep in (0, 1)]
    order = [key for key, _ in schedule(todo)]
    assert order == ["b0", "c0", "b1", "c1", "a0", "a1"]
    costs = [estimated_cost(spec) for _, spec in schedule(todo)]
    assert costs == sorted(costs, reverse=True)
    assert sorted(schedule(todo)) == sorted(todo)


def test_next_job_keeps_program_families_on_one_worker():
    """A free worker takes the largest job of a family it has compiled, else of a family no other worker
    has touched, else the largest job; families are only preferred among jobs of comparable cost."""
    from vaefail.experiments.execute import next_job, program_family

    def job(objective, k, steps, seed=0):
        return f"{objective}{k}-{steps}-{seed}", {"fit": {"objective": objective, "latent_dim": k,
                                                          "steps": steps, "seed": seed, "sigma_eps": seed}}

    queue = [job("vae", 1, 400), job("vae", 2, 400), job("vae", 3, 300), job("vae", 1, 50)]
    fam = [program_family(spec) for _, spec in queue]
    assert fam[0] == program_family(job("vae", 1, 400, seed=7)[1])  # seeds and sigma_eps are data
    assert fam[0] == fam[3] and len(set(fam[:3])) == 3
    assert next_job(queue, set(), set()) == 0
    assert next_job(queue, {fam[2]}, {fam[0]}) == 2  # its own family, though not the largest
    assert next_job(queue, set(), {fam[0]}) == 1  # a family nobody has compiled
    assert next_job(queue, set(), set(fam)) == 0  # nothing fits: longest first
    assert next_job(queue[1:], {fam[0]}, set()) == 0  # the 50-step vae K=1 is too small to jump ahead
    with pytest.raises(ValueError):
        next_job([], set(), set())


_DYING_DRIVER = """
import os, sys, time
from vaefail.experiments.execute import execute
from vaefail.experiments.store import ResultsStore
from vaefail.errors import VaefailError


def work(spec):
    if spec["die"]:
        time.sleep(2.0)
        os._exit(3)
    return {"metrics.json": b"{}"}


if __name__ == "__main__":
    jobs = [("ok", {"die": False}), ("dies", {"die": True})]
    try:
        execute(jobs, ResultsStore(sys.argv[1]), work, workers=2, progress=False)
    except VaefailError as err:
        print(err, flush=True)
        sys.exit(1)
"""


def test_a_dying_worker_gives_a_clear_error_and_keeps_finished_work(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(_DYING_DRIVER)
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "a worker process died" in proc.stdout and "dies" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(store / "runs")) == ["ok"]


def test_workers_run_xla_with_one_thread(tmp_path):
    """XLA ignores its thread-count flags; VAEFAIL_XLA_THREADS (set for every worker) sizes its pool,
    and the worker is not left confined to one core."""
    script = (
        "import os, vaefail, jax, jax.numpy as jnp\n"
        "vaefail.configure()\n"
        "(jnp.ones((300, 300)) @ jnp.ones((300, 300))).block_until_ready()\n"
        "names = [open(f'/proc/self/task/{t}/comm').read() for t in os.listdir('/proc/self/task')]\n"
        "print(sum(n.startswith('tf_XLAEigen') for n in names), len(os.sched_getaffinity(0)))\n"
    )
    from vaefail.experiments.execute import WORKER_ENV

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two cores")
    for env, threads in (({}, cores), (WORKER_ENV, 1)):
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, text=True,
                             capture_output=True, check=True)
        assert out.stdout.split() == [str(threads), str(cores)]
