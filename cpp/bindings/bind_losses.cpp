// Bindings for losses.cpp: the fused query x memory log-sum-exp.  Validation of
// shapes, dtypes and lengths happens here; the kernel runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "bindings/array_utils.h"
#include "losses.h"

namespace py = pybind11;
using namespace hn_py;

namespace {

// q: (nq, d) float32 (normalised by the caller for cosine); mem: (m, d) float32 /
// float16 / bf16 bit view; mem_ids (m,) int64 or None; pos_ids (nq,) int64 or None;
// thresholds (nq,) float32 or None.  Returns (lse (nq,) float32, grad (nq, d) float32 or None).
py::tuple memory_lse_impl(const py::array& q, const py::array& mem, bool mem_bf16, const py::object& mem_ids,
                          const py::object& pos_ids, const py::object& thresholds, double logit_scale,
                          double grad_scale, bool cosine, bool want_grad, int num_threads) {
    hn::MemoryLseProblem p;
    if (q.dtype().kind() != 'f' || q.itemsize() != 4) throw std::invalid_argument("q must be float32");
    p.ldq = row_stride(q, "q");
    p.nq = (size_t)q.shape(0);
    p.d = (size_t)q.shape(1);
    if (p.d == 0) throw std::invalid_argument("q must have at least one column");
    p.q = static_cast<const float*>(q.data());
    p.ldm = row_stride(mem, "memory");
    p.mem_type = vec_dtype(mem, mem_bf16, "memory");
    p.m = (size_t)mem.shape(0);
    if ((size_t)mem.shape(1) != p.d)
        throw std::invalid_argument("memory has dimension " + std::to_string(mem.shape(1)) + " but q has " +
                                    std::to_string(p.d));
    p.mem = mem.data();
    py::array_t<int64_t> mi, pi;
    py::array_t<float> th;
    if (!mem_ids.is_none()) {
        mi = checked<int64_t>(mem_ids, "memory ids", 1);
        if ((size_t)mi.shape(0) != p.m) throw std::invalid_argument("memory ids must have one entry per memory row");
        p.mem_ids = mi.data();
    }
    if (!pos_ids.is_none()) {
        pi = checked<int64_t>(pos_ids, "pos_ids", 1);
        if ((size_t)pi.shape(0) != p.nq) throw std::invalid_argument("pos_ids must have one entry per query");
        p.pos_ids = pi.data();
    }
    if (!thresholds.is_none()) {
        th = checked<float>(thresholds, "thresholds", 1);
        if ((size_t)th.shape(0) != p.nq) throw std::invalid_argument("thresholds must have one entry per query");
        p.thresholds = th.data();
    }
    if (!std::isfinite(logit_scale) || !std::isfinite(grad_scale))
        throw std::invalid_argument("scale must be finite");
    p.logit_scale = (float)logit_scale;
    p.grad_scale = (float)grad_scale;
    p.cosine = cosine;
    if (num_threads < 1) throw std::invalid_argument("num_threads must be positive");

    py::array_t<float> lse({(py::ssize_t)p.nq});
    py::object grad_obj = py::none();
    float* g = nullptr;
    if (want_grad) {
        py::array_t<float> ga({(py::ssize_t)p.nq, (py::ssize_t)p.d});
        g = ga.mutable_data();
        grad_obj = ga;
    }
    float* l = lse.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::memory_lse(p, l, g, num_threads);
    }
    return py::make_tuple(lse, grad_obj);
}

}  // namespace

void bind_losses(py::module_& m) {
    m.def("memory_lse", &memory_lse_impl, py::arg("q"), py::arg("mem"), py::arg("mem_bf16"), py::arg("mem_ids"),
          py::arg("pos_ids"), py::arg("thresholds"), py::arg("logit_scale"), py::arg("grad_scale"),
          py::arg("cosine"), py::arg("want_grad"), py::arg("num_threads"),
          "Fused streaming log-sum-exp of q x memory scores and its gradient w.r.t. q (private)");
}
