"""Reliability: nothing overwritten, no damaged file believed, progress where it belongs, stale results
never silently reused, and faults in a sweep (a lost Ray node, two sweeps on one store) cost nothing.

The bad-input and damaged-run matrix is in ``test_bad_input.py``; killing a local sweep with ``kill -9``
and resuming it is ``experiments/test_execute_and_store.py::test_killed_sweep_resumes_without_recomputing``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pandas as pd
import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

import vaefail
from vaefail._io import write_atomic
from vaefail.cli import app
from vaefail.errors import StoreError
from vaefail.experiments.provenance import code_fingerprint, source_fingerprint
from vaefail.experiments.reproduce import reproduce
from vaefail.mfg import init_models
from vaefail.results import FitResult

runner = CliRunner()
TINY = ["--restarts", "2", "--steps", "100", "--init-steps", "20", "--no-truth", "--quiet"]

#: The smallest sweeps: table1 at the smoke preset, figure8, VAE, fixed sigma_eps, K = 1 (and 2).
ONE = {"benchmark": ["figure8"], "objective": ["vae"], "latent_dim": ["1"], "sigma_mode": ["fixed"]}
TWO = {**ONE, "latent_dim": ["1", "2"]}
ONE_ARGS = ["--only", "benchmark=figure8", "--only", "objective=vae", "--only", "latent_dim=1",
            "--only", "sigma_mode=fixed"]
TWO_ARGS = ["--only", "benchmark=figure8", "--only", "objective=vae", "--only", "latent_dim=1,2",
            "--only", "sigma_mode=fixed"]


@pytest.mark.slow
def test_fit_out_refuses_an_existing_run_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    config = vaefail.FitConfig(benchmark="figure8", objective="iwae", num_samples=4, restarts=2)
    keys = list(jax.random.split(jax.random.PRNGKey(0), 2))
    models = init_models(config, vaefail.get_benchmark("figure8"), keys)
    restarts = pd.DataFrame({"restart": [0, 1], "selected": [True, False]})
    FitResult(config, models, restarts, 0, {}).save(out)  # an (untrained) figure8 IWAE run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = runner.invoke(app, ["fit", "-b", "linear", "--out", str(out), *TINY])
    assert again.exit_code == 2 and "pass --overwrite" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the IWAE run is untouched
    replaced = runner.invoke(app, ["fit", "-b", "linear", "--out", str(out), "--overwrite", *TINY])
    assert replaced.exit_code == 0, replaced.output
    assert vaefail.load(out).config.benchmark == "linear"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left


def test_write_atomic_under_a_file_is_a_store_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot write"):
        write_atomic(tmp_path / "afile" / "x.csv", b"data")
    write_atomic(tmp_path / "ok" / "x.csv", b"data")
    assert (tmp_path / "ok" / "x.csv").read_bytes() == b"data"
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["x.csv"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"vaefail {vaefail.__version__}"


def test_rich_markup_is_not_eaten():
    out = runner.invoke(app, ["benchmarks"]).stdout
    assert "[cos a_y, sin a_y]" in out.replace("\n", " ").replace("│", " ").replace("  ", " ") or (
        "[cos" in out and "a_y]" in out)


def test_progress_goes_to_stderr_with_eta_and_a_compiling_phase(monkeypatch):
    """The bars live on stderr (stdout stays the results), show the time remaining, and call the first,
    compiling chunk what it is."""
    import vaefail.training as training

    terminal = io.StringIO()
    original = training._progress

    def recorded(enabled: bool) -> Progress:
        bar = original(enabled)
        assert bar.console.stderr  # the real bar writes to stderr
        bar.live.console = Console(file=terminal, force_terminal=True, width=200)  # record what it shows
        return bar

    monkeypatch.setattr(training, "_progress", recorded)
    result = runner.invoke(app, ["fit", "-b", "linear", "--restarts", "2", "--steps", "400", "--init-steps",
                                 "10", "--no-truth"])
    assert result.exit_code == 0, result.output
    shown = terminal.getvalue()
    assert "(compiling)" in shown and "ETA" in shown
    assert "ETA" not in result.stdout and "compiling" not in result.stdout


def test_source_fingerprint_ignores_docstrings_and_comments_only():
    code = 'def f(x):\n    """Doc."""\n    return x + 1  # note\n'
    base = source_fingerprint([("m.py", code)])
    assert source_fingerprint([("m.py", code.replace("Doc.", "Other doc.").replace("note", "n"))]) == base
    assert source_fingerprint([("m.py", code.replace("x + 1", "x + 2"))]) != base
    assert source_fingerprint([("n.py", code)]) != base
    assert len(code_fingerprint()) == 16 and code_fingerprint() == code_fingerprint()


def _runs(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}


@pytest.mark.slow
def test_reproduce_recomputes_stale_results_or_keeps_and_marks_them(tmp_path):
    out = tmp_path / "store"
    first = reproduce("table1", "smoke", out, repeats=1, workers=1, progress=False, only=ONE)
    (key,) = _runs(out)
    provenance = json.loads((out / "runs" / key / "provenance.json").read_text())
    assert provenance["fingerprint"] == code_fingerprint() and provenance["vaefail"] == vaefail.__version__
    # pretend an older version computed it
    (out / "runs" / key / "provenance.json").write_text(json.dumps({**provenance, "fingerprint": "0" * 16}))
    kept = runner.invoke(app, ["reproduce", "table1", "--preset", "smoke", "--repeats", "1", "--workers", "1",
                               "--quiet", "--out", str(out), "--reuse-stale", *ONE_ARGS])
    assert kept.exit_code == 0, kept.output
    assert "kept 1 configurations computed by another version" in kept.stdout
    assert "computed 0 new configurations" in kept.stdout
    assert key in (out / "report.md").read_text() and "--reuse-stale" in (out / "report.md").read_text()
    before = _runs(out)
    redone = reproduce("table1", "smoke", out, repeats=1, workers=1, progress=False, only=ONE)
    assert redone.stale_recomputed == 1 and redone.computed == 1 and redone.stale_kept == []
    assert _runs(out)[key] != before[key]
    stored = json.loads((out / "runs" / key / "provenance.json").read_text())
    assert stored["fingerprint"] == code_fingerprint()
    pd.testing.assert_frame_equal(redone.tables["table1"], first.tables["table1"])  # same code, same numbers
    assert key not in (out / "report.md").read_text()
    assert not list((out / "runs").glob(".tmp-*"))
    again = reproduce("table1", "smoke", out, repeats=1, workers=1, progress=False, only=ONE)
    assert again.computed == 0 and again.stale_recomputed == 0


@pytest.fixture(scope="module")
def local_table(tmp_path_factory) -> pd.DataFrame:
    """table1.csv of the two-configuration sweep, run locally in two worker processes (one XLA device and one
    thread each, as a Ray worker: the optimal-bound optimisation rounds differently with other settings)."""
    out = tmp_path_factory.mktemp("local") / "store"
    reproduce("table1", "smoke", out, repeats=1, workers=2, outputs=False, progress=False, only=TWO)
    return pd.read_csv(out / "table1.csv")


@pytest.mark.slow
def test_two_concurrent_reproduce_processes_on_one_store(tmp_path, local_table):
    """Two `vaefail reproduce` processes on one store at once: both finish, every configuration is stored
    once and complete, and the tables equal a single local run's."""
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "vaefail.cli", "reproduce", "table1", "--preset", "smoke", "--repeats", "1",
           "--workers", "2", "--quiet", "--out", str(out), *TWO_ARGS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
        assert "Traceback" not in stdout + stderr
    assert len(_runs(out)) == 2 and not list((out / "runs").glob(".tmp-*"))
    for run in (out / "runs").iterdir():
        vaefail.load(run)  # every stored run folder is complete and passes its checks
    pd.testing.assert_frame_equal(pd.read_csv(out / "table1.csv"), local_table)
    assert len(local_table) == 2


def _children(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, stack = [], [root]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _running_task(node) -> int | None:
    """The process id of a Ray worker of ``node`` executing ``run_task`` (Ray names it ``ray::run_task``)."""
    raylet = node.all_processes["raylet"][0].process.pid
    for pid in _children(raylet):
        try:
            if Path(f"/proc/{pid}/cmdline").read_text().startswith("ray::run_task"):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_killing_a_ray_node_mid_task_loses_nothing(tmp_path, local_table):
    """Ray's multi-node test cluster on 127.0.0.1 (a head without CPUs and two one-CPU worker nodes);
    `vaefail reproduce --executor ray --address` runs two configurations; the node running one of them is
    killed in the middle of it. Ray retries that task on the other node: the sweep completes, each
    configuration is stored once, and the table equals a local run's."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            **loopback})
    proc = None
    try:
        victim = cluster.add_node(num_cpus=1, **loopback)
        cluster.add_node(num_cpus=1, **loopback)
        cluster.wait_for_nodes()
        out = tmp_path / "store"
        cmd = [sys.executable, "-m", "vaefail.cli", "reproduce", "table1", "--preset", "smoke", "--repeats",
               "1", "--quiet", "--out", str(out), "--executor", "ray", "--address", cluster.address,
               *TWO_ARGS]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while _running_task(victim) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # well inside the task (a smoke configuration takes ~10 s)
        worker = _running_task(victim)
        assert worker is not None, "no task ran on the node to be killed"
        assert not _runs(out)  # nothing had finished yet
        cluster.remove_node(victim, allow_graceful=False)  # kills its raylet and its workers
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stderr[-3000:]
        assert "computed 2 new configurations" in stdout
        assert len(_runs(out)) == 2 and not list((out / "runs").glob(".tmp-*"))
        pd.testing.assert_frame_equal(pd.read_csv(out / "table1.csv"), local_table)
        # every task execution starts with a ":task_name:run_task" line in its worker's log: the two
        # configurations, plus the retry of the one on the killed node
        logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
        executions = sum(f.read_text(errors="replace").count(":task_name:run_task")
                         for f in logs.glob("worker-*.out"))
        print(f"\nRay fault test: 1 node killed mid-task, {executions} task executions for 2 configurations "
              f"({executions - 2} retried), {2 - len(_runs(out))} configurations lost, tables identical")
        assert executions == 3
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.shutdown()
