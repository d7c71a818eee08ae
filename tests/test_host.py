"""The host's rules: thread counts from the environment and threadpoolctl, the hardneg logger,
packaging metadata."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("HARDNEG_NUM_THREADS", "OMP_NUM_THREADS", "HARDNEG_SIMD")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.parametrize("env, want", [
    ({"OMP_NUM_THREADS": "1"}, "1"),                                  # without torch imported
    ({"OMP_NUM_THREADS": "3", "HARDNEG_NUM_THREADS": "2"}, "2"),      # ours first
    ({"OMP_NUM_THREADS": "4,2"}, None),                               # another runtime's syntax: ignored
])
def test_thread_env_order(env, want):
    r = _run("import hardneg as hn; print(hn.get_num_threads())", **env)
    assert r.returncode == 0, r.stderr
    if want is not None:
        assert r.stdout.strip() == want
    else:
        assert int(r.stdout.strip()) >= 1


def test_bad_hardneg_num_threads_names_the_variable():
    r = _run("import hardneg as hn; hn.get_num_threads()", HARDNEG_NUM_THREADS="lots")
    assert r.returncode != 0 and "HARDNEG_NUM_THREADS" in r.stderr


def test_threadpoolctl_limits_hardneg():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    hn.set_num_threads(None)
    mine = [d for d in threadpoolctl.threadpool_info() if d["user_api"] == "hardneg"]
    assert len(mine) == 1 and mine[0]["version"] == hn.__version__
    with threadpoolctl.threadpool_limits(limits=1, user_api="hardneg"):
        assert hn.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(limits=1):
        assert hn.get_num_threads() == 1
    hn.set_num_threads(None)


def test_set_num_threads_checks():
    with pytest.raises(TypeError, match="n must"):
        hn.set_num_threads(1.5)
    with pytest.raises(ValueError, match="n must"):
        hn.set_num_threads(0)
    hn.set_num_threads(3)
    assert hn.get_num_threads() == 3
    hn.set_num_threads(None)


def test_unknown_simd_override_is_logged():
    code = "import logging; logging.basicConfig(); import hardneg as hn; print(hn.simd_level())"
    r = _run(code, HARDNEG_SIMD="avx9")
    assert r.returncode == 0, r.stderr
    assert "HARDNEG_SIMD='avx9'" in r.stderr and r.stdout.strip() in hn.info()["simd_levels_available"]


def test_logger_is_silent_by_default():
    r = _run("import hardneg", HARDNEG_SIMD="avx9")
    assert r.returncode == 0 and r.stderr == ""


def test_typed_and_one_version_source():
    assert (Path(hn.__file__).parent / "py.typed").exists()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "\nversion =" not in text
    try:
        from importlib.metadata import version

        assert version("hardneg") == hn.__version__
    except Exception:  # not installed (run from a source tree)
        pass


class _DLPackOnly:
    """An array type that only speaks DLPack (as JAX and CuPy do)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class _ArrayOnly:
    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_dlpack_and_array_protocol_inputs():
    from hardneg._arrays import vectors_for_kernel

    rng = np.random.default_rng(0)
    C = rng.standard_normal((50, 8)).astype(np.float32)
    Q = rng.standard_normal((3, 8)).astype(np.float32)
    v, _ = vectors_for_kernel(_DLPackOnly(C), "corpus")
    assert np.shares_memory(v, C)  # zero-copy
    want = hn.topk(Q, C, k=5)
    for wrap in (_DLPackOnly, _ArrayOnly):
        s, i = hn.topk(wrap(Q), wrap(C), k=5)
        np.testing.assert_array_equal(i, want[1])
        np.testing.assert_array_equal(s, want[0])
    pd = pytest.importorskip("pandas")
    s, i = hn.topk(Q, pd.DataFrame(C), k=5)
    np.testing.assert_array_equal(i, want[1])
    with pytest.raises(TypeError, match="corpus"):
        hn.topk(Q, object(), k=5)
    with pytest.raises(TypeError, match="corpus"):
        hn.topk(Q, _ArrayOnly(np.array([[object()]])), k=5)
