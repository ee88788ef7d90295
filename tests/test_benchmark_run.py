"""benchmarks/run.py times `vaefail reproduce` with the options it is given, and reports the peak memory of
the command's largest process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run  # noqa: E402


def test_reproduce_time_passes_options_and_measures_peak_memory():
    wall, peak_mb = run.reproduce_time("sigma:smoke --repeats 1 --only sigma_factor=1.0 --workers 1",
                                       cold_cache=False)
    assert wall > 0
    assert 100 < peak_mb < 8000  # a JAX process, not this test's (the wrapper reports its children only)
    with pytest.raises(subprocess.CalledProcessError):  # the options reach the command: none matches
        run.reproduce_time("sigma:smoke --repeats 1 --only sigma_factor=7", cold_cache=False)
