"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Also the checks every command runs on its output paths *before* any computation
(:func:`check_output_file`), so a wrong ``--out`` or ``--json`` fails in a second, not after a fit.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from vaefail.errors import StoreError


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary sibling of ``path``, then rename it over ``path``.

    Creates missing parent folders; raises :class:`~vaefail.errors.StoreError` with a readable message
    if the file cannot be written (the temporary file is removed, an existing ``path`` is untouched).
    The temporary name carries a random nonce, so writers on different hosts sharing a folder never
    collide.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a parent that is a file (NotADirectoryError): nothing was created
            pass
    return path


def check_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """Fail early, with a one-line :class:`~vaefail.errors.StoreError`, if a file cannot be written at
    ``path``; nothing is left behind (folders created to probe are removed again).

    Parameters
    ----------
    path
        The file a command will write (an existing file is fine: it will be replaced atomically).
    option
        The option's name for the message, e.g. ``"--json"``.
    """
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{option} {path} is a folder; give a file name")
    check_folder_writable(path.parent, f"{option} {path}")
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """Raise :class:`StoreError` naming ``what`` unless a file can be created in ``folder`` (created and
    removed again if missing, with any parents it needed)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StoreError(f"cannot write {what}: {existing} is not a folder")
    created: list[Path] = []
    try:
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vaefail-probe-"):
            pass
    except OSError as err:
        raise StoreError(f"cannot write {what}: {err.strerror or err}") from err
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                pass
