"""Each SIMD kernel table against the scalar one, from C++ (tests/cpp/kernel_check.cpp).

Runs natively when a C++ compiler is present, and for arm64 (the NEON table)
when aarch64-linux-gnu-g++ and qemu-aarch64 are installed; skips otherwise.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["tests/cpp/kernel_check.cpp", "cpp/dispatch.cpp", "cpp/simd/dot_scalar.cpp",
           "cpp/simd/dot_avx2.cpp", "cpp/simd/dot_avx512.cpp", "cpp/simd/screen_avx512bf16.cpp",
           "cpp/simd/screen_avx512vnni.cpp", "cpp/simd/screen_amx.cpp", "cpp/simd/dot_neon.cpp",
           # the loss row passes (dispatch.cpp's row_ops_f32 names them; tests/test_loss_rows.py checks them)
           "cpp/simd/rows_scalar.cpp", "cpp/simd/rows_avx2.cpp", "cpp/simd/rows_avx512.cpp"]
X86_FLAGS = {"dot_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
             "dot_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
             "screen_avx512bf16.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
                                       "-mavx2", "-mfma"],
             "screen_avx512vnni.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
                                       "-mavx2", "-mfma"],
             "screen_amx.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
                                "-mamx-tile", "-mamx-int8", "-mavx2", "-mfma"],
             "rows_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
             "rows_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]}


def build(cxx, out, tmp, x86, extra=()):
    objs = []
    for src in SOURCES:
        obj = tmp / (Path(src).stem + ".o")
        flags = X86_FLAGS.get(Path(src).name, []) if x86 else []
        subprocess.run([cxx, "-std=c++17", "-O2", "-I", str(ROOT / "cpp"), *flags, "-c", str(ROOT / src),
                        "-o", str(obj)], check=True, capture_output=True)
        objs.append(str(obj))
    subprocess.run([cxx, *objs, "-o", str(out), *extra], check=True, capture_output=True)


def test_native_tables(tmp_path):
    import platform

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    x86 = platform.machine() in ("x86_64", "AMD64")
    exe = tmp_path / "kcheck"
    build(cxx, exe, tmp_path, x86, ["-pthread"])
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    from hardneg import _core

    if _core.amx_available():  # the AMX int8 screen was compared with the VNNI loop
        assert "amx int8 screen checked" in r.stdout, r.stdout


def test_neon_table_under_qemu(tmp_path):
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if cxx is None or qemu is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 not installed")
    exe = tmp_path / "kcheck_arm64"
    build(cxx, exe, tmp_path, False, ["-static"])
    r = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "neon checked" in r.stdout, r.stdout + r.stderr
