"""Errors raised by vaefail for bad input or impossible options.

Every error a user can cause derives from :class:`VaefailError`; the CLI turns it into one readable
line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VaefailError(Exception):
    """Base class for every user-facing error in vaefail."""


class ConfigError(VaefailError, ValueError):
    """An option or parameter has an impossible value (for example ``sigma_eps <= 0``)."""


class UnknownNameError(ConfigError, KeyError):
    """A name (benchmark, objective, experiment, ...) is not known."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataError(VaefailError, ValueError):
    """Input data is malformed: wrong shape, NaN/inf, unreadable file."""


class StoreError(VaefailError, OSError):
    """A run folder or results store cannot be read or written."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Build an :class:`UnknownNameError` listing the known names and the closest match.

    Parameters
    ----------
    kind
        What the name refers to, e.g. ``"benchmark"``.
    name
        The name the user gave.
    known
        The valid names.
    """
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(known)}.{hint}")


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
