"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
from pathlib import Path

from vaefail.errors import StoreError


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary sibling of ``path``, then rename it over ``path``.

    Creates missing parent folders; raises :class:`~vaefail.errors.StoreError` with a readable message
    if the file cannot be written (the temporary file is removed, an existing ``path`` is untouched).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path
