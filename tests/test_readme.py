"""The README's Python example runs as written; its CLI examples parse (they are run in test_cli)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "linear" / "config.json").is_file()


def test_quick_start_commands_match_ci():
    commands = blocks("bash")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci
    assert "vaefail reproduce all --preset quick" in commands[0]
