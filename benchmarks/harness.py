"""The one timing harness every compare_* script uses (the rules are in benchmarks/README.md).

* ``compare(sides, runs, calls, warmup)``: every side gets the same warm-up and the same number
  of timed calls, interleaved in rotating order (A B C, B C A, C A B, ...), each after the same
  short busy pause; a *run* is one interleaved round set, and each side's time in a run is the
  median of its calls.
* ``Result.ratio(a, b)``: time(b) / time(a) per run, reported as the median with the min-max
  over the runs (at least 3 runs).
* ``set_threads(n)``: the same thread count for every library in the process (threadpoolctl for
  BLAS / OpenMP, torch, faiss, hardneg).
* ``header()``: commit, CPU, SIMD, BLAS kernels, threads and load average, printed at the top of
  every table so that a number never travels without the machine it came from.
* ``blas_problem()``: why a peer's BLAS would run a reduced kernel (None when it does not).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("HARDNEG_SCIFACT", str(ROOT.parent / "shared" / "data" / "scifact")))

# Seconds of busy-waiting before each timed call, whichever side it is.  torch's and faiss's OpenMP
# workers keep spinning a few ms after each op; without a pause the next side would share the cores
# with them, which measures the order of the calls, not the library.  A sleeping pause lets some
# VMs park the idle cores, and the next call may then start slow instead, hence busy.
PAUSE = 0.02

# env: set by run_all.py for the scripts it runs
FORCED_ENV = "HARDNEG_BENCH_FORCED"

# the load average when the script started (the header is printed after the run, whose own threads
# would otherwise count)
START_LOAD = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def _busy_pause(seconds: Optional[float] = None) -> None:
    """Busy-wait ``seconds`` (default: the module's PAUSE as it is when called, so a script
    that sets ``harness.PAUSE`` changes every side's pause alike)."""
    seconds = PAUSE if seconds is None else seconds
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


class Result:
    """Per-side, per-run median times (seconds) of one ``compare`` call."""

    def __init__(self, times: Dict[str, List[List[float]]], outputs: Dict[str, object],
                 first: Dict[str, float]):
        self.times = times  # side -> run -> call times
        self.outputs = outputs  # side -> the output of its last call
        self.first = first  # side -> time of its first (warm-up) call, seconds

    def run_medians(self, side: str) -> List[float]:
        return [statistics.median(r) for r in self.times[side]]

    def median(self, side: str) -> float:
        """Median over runs of the per-run median call time (seconds)."""
        return statistics.median(self.run_medians(side))

    def ms(self, side: str) -> str:
        m = self.run_medians(side)
        return f"{statistics.median(m) * 1e3:.1f} ({min(m) * 1e3:.1f}-{max(m) * 1e3:.1f})"

    def ratio(self, fast: str, slow: str) -> str:
        """time(slow) / time(fast): median over runs, with the min-max; '2.1x (1.9-2.3)'."""
        return self.ratio_best(fast, [slow])

    def ratio_best(self, fast: str, slows: Sequence[str]) -> str:
        """Like ``ratio`` against the fastest of ``slows`` in each run (a peer's best form)."""
        best = [min(ts) for ts in zip(*(self.run_medians(s) for s in slows))]
        r = [b / a for a, b in zip(self.run_medians(fast), best)]
        return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"


def time_once(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn`` after the same pause as a timed call (a probe that sizes a
    run's number of calls; not a result)."""
    _busy_pause()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(sides: Dict[str, Callable[[], object]], runs: int = 3, calls: int = 3, warmup: int = 1) -> Result:
    """Time every side the same way: ``warmup`` untimed calls each (interleaved), then ``runs``
    round sets of ``calls`` interleaved timed calls, each round starting one side later than the
    one before (A B C, B C A, C A B, ...).

    The rotation is there because a call's time depends on its predecessor even after the pause
    (caches, branch predictors, allocator state): in a fixed order B would always follow A.
    Measured on a sub-millisecond loss with three sides, the same function was 2-9% slower in the
    slot after another library than in the slot after itself; rotating, each side follows every
    side, itself included, equally often over ``len(sides)`` rounds.

    A side's time in one run is the median of its calls in that run; report with ``Result``.
    ``runs`` below 3 is raised to 3 (the ratios carry a min-max over the runs).
    """
    runs = max(3, runs)
    names = list(sides)
    outputs: Dict[str, object] = {}
    first: Dict[str, float] = {}
    for w in range(warmup):
        for n in names:
            _busy_pause()
            t = time.perf_counter()
            outputs[n] = sides[n]()
            if w == 0:
                first[n] = time.perf_counter() - t
    times: Dict[str, List[List[float]]] = {n: [] for n in names}
    rounds = 0
    for _ in range(runs):
        cur: Dict[str, List[float]] = {n: [] for n in names}
        for _ in range(calls):
            start = rounds % len(names)
            rounds += 1
            for n in names[start:] + names[:start]:
                _busy_pause()
                t = time.perf_counter()
                outputs[n] = sides[n]()
                cur[n].append(time.perf_counter() - t)
        for n in names:
            times[n].append(cur[n])
    return Result(times, outputs, first)


def set_threads(n: int) -> None:
    """The same thread count for every library loaded now or later in this process."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    import hardneg as hn

    hn.set_num_threads(n)
    for mod, fn in (("torch", "set_num_threads"), ("faiss", "omp_set_num_threads")):
        if mod in sys.modules:
            getattr(sys.modules[mod], fn)(n)


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def blas_info() -> List[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return threadpool_info()


# OpenBLAS core names, ranked by the fp32 GEMM kernel they run (higher = wider SIMD)
_RANK = {"prescott": 1, "core2": 1, "penryn": 1, "dunnington": 1, "nehalem": 1, "atom": 1, "barcelona": 1,
         "opteron": 1, "sandybridge": 2, "bulldozer": 2, "piledriver": 2, "steamroller": 2, "excavator": 2,
         "haswell": 3, "zen": 3, "skylakex": 4, "cooperlake": 4, "sapphirerapids": 4}


def _flags_rank() -> int:
    f = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= f:
        return 4
    if {"avx2", "fma"} <= f:
        return 3
    return 2 if "avx" in f else 1


def blas_problem(script: str) -> Optional[str]:
    """Why an OpenBLAS loaded in this process runs a reduced kernel, with how to rerun; None if none does."""
    libs = [i for i in blas_info() if i.get("internal_api") == "openblas"]
    ranked = [(i, _RANK.get(str(i.get("architecture")).lower())) for i in libs]
    ranked = [(i, r) for i, r in ranked if r is not None]
    env_set = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(v)]
    clean = f"env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/{script}"
    if os.environ.get("OPENBLAS_L2_SIZE"):
        return (f"OPENBLAS_L2_SIZE={os.environ['OPENBLAS_L2_SIZE']} is set: OpenBLAS would not tune its blocking "
                f"to this CPU. Rerun as: {clean}")
    if not ranked:
        return None
    best = max(r for _, r in ranked)
    if os.environ.get("OPENBLAS_CORETYPE"):
        best = max(best, _flags_rank())
    low = [i for i, r in ranked if r < best]
    if not low:
        return None
    which = ", ".join(f"{Path(i['filepath']).name} {i.get('version')} runs {i.get('architecture')}" for i in low)
    if env_set:
        return (f"{which} because OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set. Rerun as: {clean}")
    good = max(ranked, key=lambda x: x[1])[0].get("architecture")
    return (f"{which} although this CPU runs {good} kernels (that OpenBLAS is too old to recognise the CPU). "
            f"Rerun with its best kernel forced: OPENBLAS_CORETYPE={good} python benchmarks/{script} "
            f"(benchmarks/run_all.py does this itself and says so in the header)")


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def header(title: str, threads: int) -> str:
    """Markdown lines describing where and how the numbers below were measured."""
    import hardneg as hn

    info = hn.info()
    flags = sorted(x for x in cpu_flags() if x.startswith(("avx", "fma", "sse4_2", "amx", "f16c")))
    la = START_LOAD
    lines = [f"## {title}", "",
             f"- commit `{commit()}`, hardneg {info.get('version')}, Python {sys.version.split()[0]}",
             f"- CPU: {cpu_model()}, {num_cores()} cores; hardneg SIMD `{info.get('simd_level')}` "
             f"(available {', '.join(info.get('simd_levels_available', []))}); flags {' '.join(flags)}",
             f"- threads: {threads} for every library; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} "
             f"(1/5/15 min) at start"]
    for i in blas_info():
        arch = i.get("architecture") or i.get("corename") or "-"
        lines.append(f"- kernel: {i.get('internal_api')} {i.get('version') or ''} `{Path(i['filepath']).name}` "
                     f"architecture {arch}, num_threads {i.get('num_threads')}")
    if "torch" in sys.modules:  # torch's BLAS (MKL, linked statically) is invisible to threadpoolctl
        torch = sys.modules["torch"]
        blas = next((x.split("=", 1)[1] for x in torch.__config__.show().replace(",", "\n").split("\n")
                     if "BLAS_INFO=" in x), "?")
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
        lines.append(f"- kernel: torch {torch.__version__} BLAS {blas}, CPU capability {cap}, "
                     f"num_threads {torch.get_num_threads()}")
    if "faiss" in sys.modules:
        faiss = sys.modules["faiss"]
        opts = getattr(faiss, "get_compile_options", lambda: "?")()
        lines.append(f"- kernel: faiss {getattr(faiss, '__version__', '?')} compiled with `{opts}`, "
                     f"omp_get_max_threads {faiss.omp_get_max_threads()}")
    for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(v):
            lines.append(f"- environment: {v}={os.environ[v]}")
    if os.environ.get("HARDNEG_BENCH_CORETYPE_NOTE"):
        lines.append(f"- {os.environ['HARDNEG_BENCH_CORETYPE_NOTE']}")
    if os.environ.get(FORCED_ENV) or la[0] > num_cores():
        what = "FORCED under load" if os.environ.get(FORCED_ENV) else "measured under load"
        lines.append(f"- **{what}** (1-minute load average {la[0]:.2f}, {num_cores()} cores): "
                     "absolute times and ratios are not reliable")
    return "\n".join(lines) + "\n"


def fmt_rules(runs: int, calls: int, warmup: int, unit: str = "ms") -> str:
    return (f"Times: {unit}, median over {runs} runs of each side's median call (min-max over runs in brackets); "
            f"a run = {calls} interleaved timed calls per side (rotating order) after {warmup} warm-up call(s) each. "
            "Ratios: the same per run, median (min-max).")
