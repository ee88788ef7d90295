"""Which code computed a stored configuration: the package version and a fingerprint of the code that
decides the numbers.

The results store keys a configuration by its config (:func:`~vaefail.experiments.store.config_hash`);
``provenance.json`` beside its results says which code produced them. :func:`code_fingerprint` is the
SHA-256 of

- the syntax trees of every module of the package that computes numbers, with docstrings removed (so
  documentation and comments do not count; any change to the code does), in a fixed order;
- the versions of the numerical libraries (JAX, jaxlib, Equinox, Optax, NumPy, SciPy), whose upgrades
  change floating-point results too.

Modules that only present or schedule results (:data:`PRESENTATION`) are left out: tables, figures,
claims and reports are rebuilt from the stored numbers on every run anyway.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Modules (relative to the package folder) that do not decide any stored number.
PRESENTATION = frozenset({
    "cli.py", "_io.py", "experiments/report.py", "experiments/figures.py", "experiments/claims.py",
    "experiments/reproduce.py", "experiments/execute.py", "experiments/store.py",
    "experiments/provenance.py", "semisupervised/figures.py",
})

#: Libraries whose version is part of the fingerprint.
LIBRARIES = ("jax", "jaxlib", "equinox", "optax", "numpy", "scipy")


def source_fingerprint(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of ``(name, source)`` pairs: each source's syntax tree without docstrings, in order.

    Raises :class:`SyntaxError` for a source that does not parse.
    """
    digest = hashlib.sha256()
    for name, source in files:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                    and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(name.encode() + b"\0" + ast.dump(tree, annotate_fields=False).encode() + b"\0")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (``"missing"`` for one that is not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The fingerprint of this installation's number-deciding code and libraries (16 hex digits)."""
    root = Path(__file__).resolve().parent.parent
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    sources = [(name, (root / name).read_text(encoding="utf-8")) for name in files
               if name not in PRESENTATION]
    blob = source_fingerprint(sources) + json.dumps(library_versions(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance() -> dict[str, Any]:
    """The ``provenance.json`` record of a configuration computed by this process."""
    from vaefail import __version__

    return {"vaefail": __version__, "fingerprint": code_fingerprint(), "libraries": library_versions()}
