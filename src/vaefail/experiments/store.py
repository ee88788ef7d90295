"""The results store: one folder per configuration, keyed by a hash of its full config, written atomically.

Layout::

    DIR/store.json            {"format": "vaefail-store/4"}
    DIR/runs/<hash>/          task.json, metrics.json and the run folder files of the fitted result

A configuration's folder is first written under ``DIR/runs/.tmp-<hash>-<pid>-<nonce>`` and then renamed
into place. ``rename`` onto an existing non-empty folder fails, so when two sweeps on the same store
finish the same configuration, the first one wins and the second discards its copy: a folder under
``runs/`` is always complete, and a rerun skips every configuration whose folder exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaefail._io import write_atomic
from vaefail.errors import StoreError

#: Bumped whenever stored numbers or run folders change meaning, so a store never mixes results of two
#: versions. 2: run folders ``vaefail-run/2`` and the column-layout numerics (every number moved slightly).
#: 3: standard normals stored once (``vaefail._jax.materialise``); IWAE with K = 1 and the truth-started
#: restarts (decoder regression) round differently. 4: more than two restarts on one device train in pairs
#: (``vaefail.training.restart_group``): the paper presets' numbers round differently (the quick presets,
#: two restarts per configuration, are unchanged).
STORE_FORMAT = "vaefail-store/4"


def config_hash(task: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the task's canonical JSON (sorted keys, with the format)."""
    blob = json.dumps({"format": STORE_FORMAT, **task}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultsStore:
    """A folder of finished configurations.

    Parameters
    ----------
    root
        The store folder; created if missing. A folder written by an incompatible version (another
        ``store.json`` format) is refused with :class:`StoreError` and left untouched.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.runs = self.root / "runs"
        marker = self.root / "store.json"
        try:
            if marker.exists():
                try:
                    found = json.loads(marker.read_text()).get("format")
                except (ValueError, AttributeError):
                    found = "unreadable"
                if found != STORE_FORMAT:
                    raise StoreError(
                        f"{self.root} holds results in format {found!r}; this vaefail writes "
                        f"{STORE_FORMAT!r}. Use another --out folder (nothing was changed)."
                    )
            elif self.root.exists() and any(p.name != "runs" for p in self.root.iterdir()) and not (
                self.runs.exists()
            ):
                raise StoreError(
                    f"{self.root} is a non-empty folder that is not a vaefail results store; "
                    "use another --out folder (nothing was changed)"
                )
            self.runs.mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                write_atomic(marker, json.dumps({"format": STORE_FORMAT}).encode())
        except OSError as err:
            raise StoreError(f"cannot use {self.root} as a results store: {err.strerror or err}") from err
        self._clean_stale()

    def path(self, key: str) -> Path:
        return self.runs / key

    def has(self, key: str) -> bool:
        """Whether configuration ``key`` finished (its folder exists; folders appear only complete)."""
        return (self.runs / key / "metrics.json").is_file()

    def put(self, key: str, files: Mapping[str, bytes]) -> bool:
        """Write a configuration's files atomically; returns False if another writer got there first."""
        tmp = self.runs / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            try:
                tmp.rename(self.runs / key)
            except OSError:
                if self.has(key):
                    return False
                raise
            return True
        except OSError as err:
            raise StoreError(f"cannot write results to {self.runs}: {err.strerror or err}") from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def metrics(self, key: str) -> dict[str, Any]:
        """The metrics record of a finished configuration."""
        try:
            return json.loads((self.runs / key / "metrics.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"damaged result {self.runs / key}: {err}") from err

    def _clean_stale(self) -> None:
        """Remove temporary folders left by writers that are no longer running (e.g. killed)."""
        for tmp in self.runs.glob(".tmp-*"):
            parts = tmp.name.split("-")
            pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
            if pid is not None and _alive(pid):
                continue
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
