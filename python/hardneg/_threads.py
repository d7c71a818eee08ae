"""How many threads the C++ kernels use.

Order of precedence: the call's ``num_threads`` argument, then
:func:`set_num_threads`, then the ``HARDNEG_NUM_THREADS`` environment variable,
then the default: the CPUs this process may run on, capped by
``torch.get_num_threads()`` when torch is already imported (so hardneg never
oversubscribes next to torch's own pool), and 1 inside a DataLoader worker.
The kernels start their own ``std::thread`` workers per call (no OpenMP), so
they are safe after ``fork``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

_global_threads: Optional[int] = None
# Upper bound for any thread count: the kernels size per-thread state by it, so an
# absurd value (10**9) would ask for gigabytes before starting a single thread.
MAX_THREADS = 1024


def set_num_threads(n: Optional[int]) -> None:
    """Set the default number of threads for hardneg's kernels (``None`` resets)."""
    global _global_threads
    if n is not None:
        n = _check(n, "n")
    _global_threads = n


def _check(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be a positive integer or None, got {n!r}")
    n = int(n)
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer or None, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"{name} must be at most {MAX_THREADS}, got {n}")
    return n


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """The number of threads a call without ``num_threads`` will use."""
    if _global_threads is not None:
        return _global_threads
    env = os.environ.get("HARDNEG_NUM_THREADS")
    if env:
        try:
            return _check(int(env), "HARDNEG_NUM_THREADS")
        except (TypeError, ValueError):
            raise ValueError(f"HARDNEG_NUM_THREADS must be a positive integer, got {env!r}") from None
    n = _cpu_count()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.utils.data.get_worker_info() is not None:
                return 1
            n = min(n, max(1, int(torch.get_num_threads())))
        except Exception:  # pragma: no cover - a partially imported torch
            pass
    return n


def resolve_num_threads(num_threads: Optional[int]) -> int:
    """``num_threads`` if given (validated), else :func:`get_num_threads`."""
    if num_threads is None:
        return get_num_threads()
    return _check(num_threads, "num_threads")
