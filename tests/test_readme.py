"""The README's Python example runs as written; its CLI examples parse (they are run in test_cli)."""

from __future__ import annotations

import re
import shlex
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


def test_reproduce_commands_select_configurations():
    """Every `vaefail reproduce` line of the README parses, and its options select configurations
    (the quick-preset ones also run, in test_report and test_reproduce_semisupervised)."""
    from typer.main import get_command

    from vaefail.cli import app
    from vaefail.experiments.grid import load_experiments, parse_only, select

    lines = re.findall(r"^(vaefail reproduce [^#\n]*)", README.read_text(), flags=re.M)
    assert any("--only" in line for line in lines)
    reproduce = get_command(app).commands["reproduce"]
    for line in lines:
        ctx = reproduce.make_context("reproduce", shlex.split(line)[2:])
        p = ctx.params
        experiments = load_experiments(p["experiment"], p["preset"], p["repeats"])
        chosen = select(experiments, parse_only(p["only"] or []))
        assert chosen and all(e.tasks for e in chosen), line
        if p["only"]:  # the README says how many trainings the selection is
            trainings = sum(t.fit["restarts"] for e in chosen for t in e.tasks)
            assert re.search(rf"{re.escape(line.strip())}\s+# {trainings} trainings", README.read_text())


def test_every_cli_line_parses():
    """Every `vaefail ...` line of the README's shell blocks names a command and options the CLI accepts."""
    from typer.main import get_command

    from vaefail.cli import app

    cli = get_command(app)
    lines = [line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines()
             if line.startswith("vaefail ")]
    assert len(lines) >= 10
    for line in lines:
        name, *args = shlex.split(line)[1:]
        if name.startswith("--"):  # a top-level option such as --version
            assert name in {o for p in cli.params for o in p.opts}, line
            continue
        assert name in cli.commands, line
        cli.commands[name].make_context(name, args)  # raises on an unknown option or a bad value
