"""Argument checks shared by every public entry point.

Each check names the argument in its message and raises TypeError for a value of the wrong
kind, ValueError for one of the right kind outside its range.  Keep them small and total: a
check never converts silently beyond what its docstring says.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["check_int", "check_optional_int", "check_float", "check_choice", "check_bool", "check_bytes"]


def check_int(value: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (bools are refused).

    Accepts Python and numpy integers (anything with ``__index__`` that is not a bool).
    """
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, (int, np.integer)) or hasattr(value, "__index__")):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value.__index__()) if not isinstance(value, int) else int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_optional_int(value: Any, name: str, minimum: Optional[int] = None,
                       maximum: Optional[int] = None) -> Optional[int]:
    """:func:`check_int`, or None passed through."""
    return None if value is None else check_int(value, name, minimum, maximum)


def check_float(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False,
                optional: bool = True, maximum: Optional[float] = None) -> Optional[float]:
    """``value`` as a finite Python float (None passes through when ``optional``).

    ``positive``: must be > 0; ``nonnegative``: must be >= 0; ``maximum``: must be <= it.
    NaN and +-inf are always refused.
    """
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must be a number, got None")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value}")
    return v


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared with ==), else ValueError listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable against a set, say
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """A real bool (numpy's too); 0/1 and strings are refused so typos do not pass."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_bytes(nbytes: int, name: str, limit: Optional[int] = None) -> None:
    """Refuse an allocation of ``nbytes`` for ``name`` that cannot succeed.

    ``limit`` defaults to the machine's physical memory (or 2**40 where it cannot be read);
    the message names the argument and the bytes asked for.
    """
    if limit is None:
        limit = _physical_memory()
    if nbytes > limit:
        raise ValueError(f"{name} asks for an output of {nbytes:,} bytes, more than this machine's "
                         f"{limit:,} bytes of memory")


def _physical_memory() -> int:
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40

