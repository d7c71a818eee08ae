"""Conversion between the caller's arrays (numpy, torch CPU/CUDA) and the
buffers the C++ kernels read.

What is zero-copy and what is copied (for float vectors):

* numpy / CPU torch float32, float16 and bfloat16 with contiguous rows (C order,
  or a row slice of such an array): passed to C++ as is, no copy.  bfloat16 torch
  tensors travel as an int16 bit view.
* float64 (and other real dtypes that numpy can cast exactly enough, e.g. ints):
  converted to float32 (a copy).
* Fortran-ordered or otherwise strided inputs, and unaligned buffers (a view at
  an odd byte offset): copied to aligned C order.
* Other array types: through DLPack (zero-copy on the CPU: JAX, CuPy host arrays,
  TensorFlow) or ``__array__`` (pandas, xarray); results come back as numpy.
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np

_SUPPORTED = "float32, float16 or bfloat16 (float64 is converted to float32)"


def torch_module():
    """The torch module if it is already imported (we never import it ourselves)."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda(x: Any) -> bool:
    return is_torch(x) and x.device.type != "cpu"


def vectors_for_kernel(x: Any, name: str, allow_bf16: bool = True) -> Tuple[np.ndarray, bool]:
    """A 2-D numpy view/copy of ``x`` the kernels can read, and whether it is a bf16 bit view.

    Raises TypeError for unsupported types/dtypes and ValueError for wrong shapes.
    """
    if is_torch(x):
        torch = torch_module()
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; this path needs a CPU tensor")
        t = x.detach()
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
        if t.dtype == torch.bfloat16:
            if t.stride(1) != 1 and t.shape[1] > 1:
                t = t.contiguous()
            return _rows_ok(t.view(torch.int16).numpy()), True
        if t.dtype in (torch.float32, torch.float16):
            return _rows_ok(t.numpy()), False
        if t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            return _as_f32(t.to(torch.float64).numpy(), name), False
        raise TypeError(f"{name} must be {_SUPPORTED}, got torch.{str(t.dtype).split('.')[-1]}")
    if isinstance(x, np.ndarray):
        a = x
    elif isinstance(x, (list, tuple)):
        a = np.asarray(x)
    else:
        a = foreign_array(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {a.shape}")
    if a.dtype in (np.float32, np.float16):
        return _rows_ok(a), False
    if a.dtype.kind in "fiub" and a.dtype != np.bool_:
        return _as_f32(a, name), False
    if a.dtype.name == "bfloat16":  # ml_dtypes
        return _rows_ok(a.view(np.uint16)), True
    raise TypeError(f"{name} must be {_SUPPORTED}, got {a.dtype}")


def foreign_array(x: Any, name: str) -> np.ndarray:
    """Any other array type as numpy: through DLPack when it offers it (JAX, CuPy on the host,
    TensorFlow; zero-copy for CPU buffers), else through ``__array__`` (pandas, xarray; a copy
    where the object has to build one).  TypeError naming ``name`` for anything else."""
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError) as e:
            if not hasattr(x, "__array__"):
                raise TypeError(f"{name}: numpy cannot read its DLPack buffer ({e}); pass a CPU array "
                                "(a CUDA array as a torch tensor)") from None
    if hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.dtype == object:
            raise TypeError(f"{name} must hold numbers, got {type(x).__name__} of Python objects")
        return a
    raise TypeError(f"{name} must be a numpy array, a torch tensor or an object with __dlpack__ or "
                    f"__array__, got {type(x).__name__}")


def check_uint_ids(a: np.ndarray, name: str) -> None:
    """ValueError for unsigned ids that int64 cannot hold (the cast would wrap them, 2**64 - 1 to the -1 padding)."""
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has id {int(a.max())}, beyond the int64 range")


def id_rows(ids: Any, name: str) -> np.ndarray:
    """A (Q, k) array of integer ids (numpy or torch) as C-contiguous, aligned int64.

    ValueError for a wrong ndim or unsigned ids beyond int64, TypeError for non-integers.
    """
    if is_torch(ids):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Q, k), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    check_uint_ids(ids, name)
    return np.require(ids, dtype=np.int64, requirements=["C", "A"])


def _as_f32(a: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=np.float32)
    if a.dtype.kind == "f" and a.size and not np.isfinite(out).all() and np.isfinite(a).all():
        raise ValueError(f"{name} has values too large for float32")
    return out


def _rows_ok(a: np.ndarray) -> np.ndarray:
    """C-contiguous rows (a row slice is fine); anything else, unaligned buffers included, is
    copied to aligned C order (np.ascontiguousarray alone would return an unaligned C array as is)."""
    if a.ndim == 2 and a.flags.aligned and (a.shape[1] <= 1 or a.strides[1] == a.itemsize) and (
        a.shape[0] <= 1 or (a.strides[0] >= a.itemsize * a.shape[1] and a.strides[0] % a.itemsize == 0)
    ):
        return a
    return np.require(a, requirements=["C", "A"])


def check_finite(a: np.ndarray, bf16: bool, name: str) -> None:
    """ValueError when ``a`` (as produced by vectors_for_kernel) has NaN or Inf."""
    if a.size == 0:
        return
    step = max(1, (16 << 20) // max(1, a.itemsize * a.shape[-1]))  # bounded temporary memory
    for r in range(0, a.shape[0], step):
        block = a[r:r + step]
        if bf16:  # exponent bits all ones <=> inf or nan
            bad = ((block.view(np.uint16) & 0x7F80) == 0x7F80).any()
        else:
            bad = not np.isfinite(block).all()
        if bad:
            raise ValueError(f"{name} contains NaN or Inf")


def to_caller(arr: np.ndarray, like: Any):
    """Return ``arr`` as the caller's type: numpy stays numpy, torch goes to like's device."""
    if is_torch(like):
        torch = torch_module()
        t = torch.from_numpy(arr)
        return t if like.device.type == "cpu" else t.to(like.device)
    return arr
