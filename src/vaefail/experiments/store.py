"""The results store: one folder per configuration, keyed by a hash of its full config, written atomically.

Layout::

    DIR/store.json            {"format": "vaefail-store/4"}
    DIR/runs/<hash>/          task.json, metrics.json, provenance.json and the run folder files of the
                              fitted result

A configuration's folder is first written under ``DIR/runs/.tmp-<hash>-<nonce>`` and then renamed into
place. ``rename`` onto an existing non-empty folder fails, so when two sweeps on the same store finish the
same configuration, the first one wins and the second discards its copy: a folder under ``runs/`` is
always complete, and a rerun skips every configuration whose folder exists. ``provenance.json`` names
the package version and code fingerprint that computed it (:mod:`vaefail.experiments.provenance`); a
configuration whose fingerprint differs from the running code's is *stale*. Temporary folders are named
by a random nonce, not a process id (hosts sharing a store have unrelated process ids), and removed once
older than :data:`ABANDONED_AFTER` seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
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

#: The store's folder of intermediate results shared between configurations (:class:`SharedFits`).
SHARED = "shared"

#: A temporary folder under ``runs/`` untouched for this long belongs to a writer that is gone (killed,
#: or its host lost): writing a configuration's files takes well under a second.
ABANDONED_AFTER = 3600.0


def config_hash(task: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the task's canonical JSON (sorted keys, with the format)."""
    blob = json.dumps({"format": STORE_FORMAT, **task}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def put_folder(parent: Path, key: str, files: Mapping[str, bytes], *, replace: bool = False) -> bool:
    """Write ``files`` as the folder ``parent/key`` atomically (:meth:`ResultsStore.put`); returns False if
    another writer got there first."""
    tmp = parent / f".tmp-{key}-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if replace and (parent / key).exists():
            old = parent / f".tmp-{key}-{uuid.uuid4().hex[:12]}-old"
            try:
                (parent / key).rename(old)
            except FileNotFoundError:  # another writer swapped it out first
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(parent / key)
        except OSError:
            if (parent / key).is_dir():
                return False
            raise
        return True
    except OSError as err:
        raise StoreError(f"cannot write results to {parent}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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

    def put(self, key: str, files: Mapping[str, bytes], *, replace: bool = False) -> bool:
        """Write a configuration's files atomically; returns False if another writer got there first.

        With ``replace``, an existing folder of ``key`` (a stale result) is swapped out for the new one:
        it is renamed aside, the new folder renamed into place, the old one removed. A reader sees the old
        folder, the new one, or (for an instant) none, which reads as "not computed"; never a mixture.
        """
        return put_folder(self.runs, key, files, replace=replace)

    def metrics(self, key: str) -> dict[str, Any]:
        """The metrics record of a finished configuration."""
        try:
            return json.loads((self.runs / key / "metrics.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"damaged result {self.runs / key}: {err}") from err

    def fingerprint(self, key: str) -> str | None:
        """The code fingerprint recorded with a finished configuration (``None`` if it has none: written
        before fingerprints were recorded, or unreadable)."""
        try:
            found = json.loads((self.runs / key / "provenance.json").read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
        return found if isinstance(found, str) else None

    def _clean_stale(self, now: float | None = None) -> None:
        """Remove temporary folders older than :data:`ABANDONED_AFTER` seconds (left by a killed writer).

        Age, not process id, decides: hosts sharing a store have unrelated process ids, so a live writer
        on another host must not lose its folder because a process id is unused here.
        """
        now = time.time() if now is None else now
        for tmp in [*self.runs.glob(".tmp-*"), *(self.root / SHARED).glob(".tmp-*")]:
            try:
                age = now - tmp.stat().st_mtime
            except OSError:
                continue
            if age > ABANDONED_AFTER:
                shutil.rmtree(tmp, ignore_errors=True)


class SharedFits:
    """Intermediate results that several configurations compute identically (the truth starts of
    :func:`vaefail.protocol.truth_start`), shared through a store: a :class:`vaefail.protocol.StartCache`.

    Each is the folder ``DIR/shared/<key>-<fingerprint>/`` with ``data.eqx`` and ``meta.json`` (the SHA-256
    of ``data.eqx`` and the code fingerprint that computed it), written like a configuration (a temporary
    folder renamed into place: when two workers compute one at once, the first rename wins and both hold the
    same bytes). The code fingerprint is part of the folder's name, so other code never reads it. A copy
    whose checksum does not match is reported (a warning), computed again and replaced.
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: str):
        self.root = Path(root) / SHARED
        self.fingerprint = fingerprint

    @classmethod
    def at(cls, root: str | os.PathLike[str], fingerprint: str) -> SharedFits | None:
        """The shared fits of the store at ``root``, or ``None`` where this process does not see that store
        (a Ray worker on another host): it then computes everything itself."""
        return cls(root, fingerprint) if (Path(root) / "store.json").is_file() else None

    def folder(self, key: str) -> Path:
        return self.root / f"{key}-{self.fingerprint}"

    def load(self, key: str) -> bytes | None:
        """The bytes saved under ``key`` by this code, or ``None`` if there are none or they are damaged."""
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        try:
            data = (folder / "data.eqx").read_bytes()
            meta = json.loads((folder / "meta.json").read_text())
            ok = isinstance(meta, dict) and meta.get("sha256") == hashlib.sha256(data).hexdigest()
        except (OSError, ValueError):
            ok = False
        if not ok:
            warnings.warn(f"damaged shared fit {folder} (missing file or checksum mismatch): computing it "
                          "again", RuntimeWarning, stacklevel=2)
            return None
        return data

    def save(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (kept if an intact copy is already there, replacing a damaged one)."""
        meta = {"sha256": hashlib.sha256(data).hexdigest(), "fingerprint": self.fingerprint}
        folder = self.folder(key)
        damaged = folder.is_dir() and self._intact(key) is None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot write results to {self.root}: {err.strerror or err}") from err
        put_folder(self.root, folder.name, {"data.eqx": data, "meta.json": json.dumps(meta).encode()},
                   replace=damaged)

    def _intact(self, key: str) -> bytes | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.load(key)
