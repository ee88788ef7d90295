"""benchmarks/scaleout.py: stored per-configuration times -> predicted wall time on W workers, under the
executors' scheduling, checked on synthetic stores with known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scaleout  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaleout.py"


def _spec(objective: str, steps: int, seed: int = 0, latent_dim: int = 1) -> dict:
    return {"kind": "fit", "fit": {"objective": objective, "num_samples": 20, "steps": steps, "restarts": 10,
                                   "latent_dim": latent_dim, "seed": seed}}


def _store(root: Path, jobs: list[tuple[str, dict]], seconds: list[float]) -> Path:
    for (key, spec), s in zip(jobs, seconds, strict=True):
        run = root / "runs" / key
        run.mkdir(parents=True)
        (run / "task.json").write_text(json.dumps(spec))
        (run / "timing.json").write_text(json.dumps({"wall_seconds": s, "cpu_seconds": s / 2}))
    return root


def test_greedy_list_scheduling_known_makespans():
    # equal-cost jobs keep submission order: 3, 3, 2, 2, 2 on 2 workers -> {3, 2, 2} and {3, 2} = 7
    jobs = [(f"k{i}", _spec("vae", 100, seed=i)) for i in range(5)]  # equal cost: list order kept
    seconds = [3.0, 3.0, 2.0, 2.0, 2.0]
    assert scaleout.simulate(jobs, seconds, 2, "ray") == pytest.approx(7.0)
    assert scaleout.simulate(jobs, seconds, 1, "ray") == pytest.approx(12.0)
    assert scaleout.simulate(jobs, seconds, 5, "ray") == pytest.approx(3.0)
    assert scaleout.simulate(jobs, seconds, 128, "local") == pytest.approx(3.0)
    # the order is schedule()'s (longest estimated cost first), not the list's
    ordered = [("short", _spec("vae", 10)), ("a", _spec("iwae", 100, 1)), ("b", _spec("iwae", 100, 2))]
    assert scaleout.simulate(ordered, [5.0, 4.0, 4.0], 2, "ray") == pytest.approx(9.0)  # a, b, then short


def test_predictions_respect_the_lower_bound_and_fall_with_workers():
    jobs = [(f"k{i}", _spec("iwae" if i % 3 else "vae", 100 + 37 * i, seed=i)) for i in range(40)]
    seconds = [1.0 + (7 * i) % 11 for i in range(40)]
    preds = scaleout.predict(jobs, seconds, [1, 2, 8, 32, 128])
    assert preds[0].local == pytest.approx(sum(seconds)) and preds[0].ray == pytest.approx(sum(seconds))
    for p in preds:
        assert p.local >= p.lower_bound - 1e-9 and p.ray >= p.lower_bound - 1e-9
        assert p.ray <= sum(seconds) / p.workers + max(seconds) + 1e-9  # Graham's list-scheduling bound
    assert preds[-1].ray == pytest.approx(max(seconds))


def test_missing_times_are_estimated_from_cost(tmp_path):
    jobs = [("a", _spec("iwae", 100)), ("b", _spec("iwae", 200, seed=1)), ("c", _spec("iwae", 300, seed=2))]
    runs = scaleout.stored_runs([_store(tmp_path, jobs[:2], [10.0, 20.0])])
    assert {k: s for k, (_, s) in runs.items()} == {"a": 10.0, "b": 20.0}
    assert runs["a"][0] == jobs[0][1]
    times, estimated = scaleout.job_seconds(jobs, runs)
    assert estimated == 1 and times == pytest.approx([10.0, 20.0, 30.0])  # same seconds per unit cost
    with pytest.raises(ValueError, match="no stored time"):
        scaleout.job_seconds([("d", {"kind": "digits", "fit": {}})], runs)


def test_cli_predicts_a_preset_from_a_store(tmp_path):
    jobs = scaleout.preset_jobs("table1", "smoke")
    _store(tmp_path, jobs, [float(1 + i % 4) for i in range(len(jobs))])
    total = sum(1 + i % 4 for i in range(len(jobs)))
    out = subprocess.run([sys.executable, str(SCRIPT), "--store", str(tmp_path), "--experiment", "table1",
                          "--preset", "smoke", "--workers", "1", "2"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    one = out[1].split(" | ")
    assert one[1] == str(len(jobs)) and one[2] == "0" and one[4] == "1"
    assert one[5] == f"{total / 60:,.1f} min"
    bad = subprocess.run([sys.executable, str(SCRIPT), "--store", str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not a results store" in bad.stderr and "Traceback" not in bad.stderr
