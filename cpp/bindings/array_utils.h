// Helpers shared by the binding files: checked access to numpy buffers.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <limits>
#include <stdexcept>
#include <string>

#include "common.h"

namespace hn_py {
namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// A 2-D array whose rows are contiguous (row stride may be larger than a row).
// Returns the row stride in elements.
// Elements must also be aligned to their size (a numpy view at an odd byte offset
// is not): the kernels load them as typed values.
inline bool is_aligned(const py::array& a) {
    return (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0;
}

inline size_t row_stride(const py::array& a, const char* name) {
    if (a.ndim() != 2)
        throw std::invalid_argument(std::string(name) + " must be 2-D, got shape " + shape_str(a));
    if (!is_aligned(a)) throw std::invalid_argument(std::string(name) + " is not aligned (copy it first)");
    const py::ssize_t it = a.itemsize();
    if (a.shape(0) == 0) return size_t(a.shape(1));
    if (a.shape(1) > 1 && a.strides(1) != it)
        throw std::invalid_argument(std::string(name) + " rows must be contiguous");
    if (a.shape(0) > 1 && (a.strides(0) < it * a.shape(1) || a.strides(0) % it != 0))
        throw std::invalid_argument(std::string(name) + " has an unsupported row stride");
    return a.shape(0) > 1 ? size_t(a.strides(0) / it) : size_t(a.shape(1));
}

// Element type from the numpy dtype: float32, float16, or a uint16/int16 bit view
// tagged as bfloat16 by the caller.
inline hn::DType vec_dtype(const py::array& a, bool bf16, const char* name) {
    const auto k = a.dtype().kind();
    const auto s = a.itemsize();
    if (bf16 && (k == 'u' || k == 'i') && s == 2) return hn::DType::BF16;
    if (k == 'f' && s == 4) return hn::DType::F32;
    if (k == 'f' && s == 2) return hn::DType::F16;
    throw std::invalid_argument(std::string(name) + " must be float32, float16 or bfloat16, got " +
                                std::string(py::str(a.dtype())));
}

// Throws unless a (rows, cols) output of 8-byte elements has a representable
// byte size (pybind11 computes strides as signed products: overflow is UB).
inline void check_out_size(py::ssize_t rows, py::ssize_t cols, const char* name) {
    const py::ssize_t lim = std::numeric_limits<py::ssize_t>::max() / 8;
    if (rows < 0 || cols < 0 || (rows > 0 && cols > lim / rows))
        throw std::invalid_argument(std::string(name) + " is too large: the output would have " + std::to_string(rows) +
                                    " x " + std::to_string(cols) + " entries");
}

template <class T>
py::array_t<T> checked(const py::object& o, const char* name, int ndim) {
    if (!py::isinstance<py::array_t<T>>(o))
        throw std::invalid_argument(std::string(name) + " has the wrong dtype");
    auto a = py::reinterpret_borrow<py::array_t<T>>(o);
    if (a.ndim() != ndim) throw std::invalid_argument(std::string(name) + " has the wrong number of dimensions");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    if (!is_aligned(a)) throw std::invalid_argument(std::string(name) + " is not aligned (copy it first)");
    return a;
}

}  // namespace hn_py
