"""How many threads the C++ kernels use.

Order of precedence: the call's ``num_threads`` argument, then :func:`set_num_threads`
(or ``threadpoolctl.threadpool_limits``, which hardneg registers with), then the
``HARDNEG_NUM_THREADS`` environment variable, then ``OMP_NUM_THREADS``, then the default:
the CPUs this process may run on, capped by ``torch.get_num_threads()`` when torch is
already imported (so hardneg never oversubscribes next to torch's own pool), and 1 inside
a DataLoader worker.  The kernels start their own ``std::thread`` workers per call (no
OpenMP), so they are safe after ``fork``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from hardneg import _core
from hardneg._validate import check_int

# Upper bound for any thread count: the kernels size per-thread state by it, so an
# absurd value (10**9) would ask for gigabytes before starting a single thread.
MAX_THREADS = 1024
ENV_VARS = ("HARDNEG_NUM_THREADS", "OMP_NUM_THREADS")


def set_num_threads(n: Optional[int]) -> None:
    """Set the default number of threads for hardneg's kernels (``None`` resets).

    Parameters
    ----------
    n : int in 1..1024, or None
        The thread count every call without ``num_threads`` uses from now on.
    """
    _core.set_default_threads(0 if n is None else _check(n, "n"))


def _check(n, name: str) -> int:
    try:
        return check_int(n, name, 1, MAX_THREADS)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer or None, got {n!r}") from None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _from_env() -> Optional[int]:
    for var in ENV_VARS:
        env = os.environ.get(var)
        if env:
            try:
                return _check(int(env), var)
            except (TypeError, ValueError):
                if var == "OMP_NUM_THREADS":  # other runtimes' syntax ("4,2"): not ours to reject
                    continue
                raise ValueError(f"{var} must be a positive integer, got {env!r}") from None
    return None


def get_num_threads() -> int:
    """The number of threads a call without ``num_threads`` will use."""
    n = _core.default_threads()
    if n > 0:
        return n
    env = _from_env()
    if env is not None:
        return env
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


def register_threadpoolctl() -> bool:
    """Let ``threadpoolctl`` see and limit hardneg's kernels (``user_api="hardneg"``).

    Called on import when threadpoolctl (>= 3.0) is installed; returns whether it registered.
    ``threadpool_limits(1)`` then sets hardneg's default to 1 thread inside its block.
    """
    try:
        import threadpoolctl
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register") or not hasattr(threadpoolctl, "LibController"):
        return False

    class HardnegController(threadpoolctl.LibController):
        user_api = "hardneg"
        internal_api = "hardneg"
        filename_prefixes = ("_core",)
        check_symbols = ("hardneg_get_num_threads", "hardneg_set_num_threads")

        def get_num_threads(self):
            return get_num_threads() if self._is_ours() else self.dynlib.hardneg_get_num_threads()

        def set_num_threads(self, num_threads):
            return self.dynlib.hardneg_set_num_threads(int(num_threads))

        def get_version(self):
            from hardneg._version import __version__

            return __version__

        def set_additional_attributes(self):
            pass

        def _is_ours(self) -> bool:
            return os.path.realpath(self.filepath) == os.path.realpath(_core.__file__)

    threadpoolctl.register(HardnegController)
    return True
