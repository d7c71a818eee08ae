"""Shared helpers for the compare_* scripts: timing, peak memory, markdown tables."""
from __future__ import annotations

import time
from typing import Callable, List, Sequence


def best_time(fn: Callable[[], object], repeat: int = 3, min_time: float = 0.0) -> float:
    """Best wall time of ``repeat`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if best > 5 and min_time == 0:
            break
    return best


def proc_status_bytes(field: str) -> int:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM", ...) in bytes (0 where absent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory above the current level while fn runs (Linux: VmHWM reset via clear_refs)."""
    try:  # give freed heap memory back first, so reuse of warm pages is not hidden
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return -1
    base = proc_status_bytes("VmRSS")
    fn()
    return max(0, proc_status_bytes("VmHWM") - base)


def table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def cpu_name() -> str:
    """The CPU model (harness.cpu_model)."""
    from harness import cpu_model

    return cpu_model()
