// Bindings for losses.cpp: the fused query x memory log-sum-exp.  Validation of
// shapes, dtypes and lengths happens here; the kernel runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/array_utils.h"
#include "loss_dense.h"
#include "losses.h"

namespace py = pybind11;
using namespace hn_py;

namespace {

// q: (nq, d) float32 (normalised by the caller for cosine); mem: (m, d) float32 /
// float16 / bf16 bit view; mem_ids (m,) int64 or None; pos_ids (nq,) int64 or None;
// thresholds (nq,) float32 or None.  Returns (lse (nq,) float32, grad (nq, d) float32 or None).
py::tuple memory_lse_impl(const py::array& q, const py::array& mem, bool mem_bf16, const py::object& mem_ids,
                          const py::object& pos_ids, const py::object& thresholds, double logit_scale,
                          double grad_scale, bool cosine, bool want_grad, int num_threads,
                          const py::object& query_ids) {
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
    py::array_t<int64_t> qi;
    if (!query_ids.is_none()) {
        qi = checked<int64_t>(query_ids, "query_ids", 1);
        if ((size_t)qi.shape(0) != p.nq) throw std::invalid_argument("query_ids must have one entry per query");
        p.query_ids = qi.data();
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

// A candidate segment from (array (rows, d), is_bf16, ids int64 1-D or None, id_offset, id_stride).
hn::CandSegment to_segment(const py::handle& h, size_t d, const char* name, std::vector<py::object>& keep) {
    auto t = h.cast<py::tuple>();
    if (t.size() != 5) throw std::invalid_argument(std::string(name) + ": segment must be a 5-tuple");
    py::array a = t[0].cast<py::array>();
    hn::CandSegment sg;
    sg.ld = row_stride(a, name);
    sg.dtype = vec_dtype(a, t[1].cast<bool>(), name);
    sg.rows = (size_t)a.shape(0);
    if ((size_t)a.shape(1) != d)
        throw std::invalid_argument(std::string(name) + " has dimension " + std::to_string(a.shape(1)) +
                                    " but q has " + std::to_string(d));
    sg.data = a.data();
    keep.push_back(a);
    if (!t[2].is_none()) {
        auto ids = checked<int64_t>(t[2], "ids", 1);
        const py::ssize_t off = t[3].cast<py::ssize_t>(), stride = t[4].cast<py::ssize_t>();
        if (off < 0 || stride < 1 ||
            (sg.rows > 0 && off + (py::ssize_t)(sg.rows - 1) * stride >= ids.shape(0)))
            throw std::invalid_argument(std::string(name) + ": ids are too short for its rows");
        sg.ids = ids.data() + off;
        sg.id_stride = (size_t)stride;
        keep.push_back(ids);
    }
    return sg;
}

struct InfoNceArgs {
    hn::InfoNceProblem p;
    std::vector<py::object> keep;
};

void build_problem(InfoNceArgs& A, const py::array& q, bool q_bf16, const py::list& batch, const py::object& memory,
                   const py::object& pos_ids, const py::object& margin, double scale, double alpha_own_neg,
                   double alpha_other, double alpha_mem, bool cosine, bool in_batch, const py::object& query_ids) {
    hn::InfoNceProblem& p = A.p;
    p.ldq = row_stride(q, "q");
    p.q_type = vec_dtype(q, q_bf16, "q");
    p.B = (size_t)q.shape(0);
    p.d = (size_t)q.shape(1);
    if (p.d == 0) throw std::invalid_argument("q must have at least one column");
    p.q = q.data();
    A.keep.push_back(q);
    if (batch.size() < 1) throw std::invalid_argument("the positives segment is missing");
    for (size_t k = 0; k < batch.size(); ++k) {
        p.batch.push_back(to_segment(batch[k], p.d, k == 0 ? "pos" : "hard_negatives", A.keep));
        if (p.batch.back().rows != p.B)
            throw std::invalid_argument(std::string(k == 0 ? "pos" : "hard_negatives") + " must have B rows");
    }
    if (!memory.is_none()) p.memory = to_segment(memory, p.d, "memory", A.keep);
    if (!pos_ids.is_none()) {
        auto pi = checked<int64_t>(pos_ids, "pos_ids", 1);
        if ((size_t)pi.shape(0) != p.B) throw std::invalid_argument("pos_ids must have one entry per query");
        p.pos_ids = pi.data();
        A.keep.push_back(pi);
    }
    if (!query_ids.is_none()) {
        auto qi = checked<int64_t>(query_ids, "query_ids", 1);
        if ((size_t)qi.shape(0) != p.B) throw std::invalid_argument("query_ids must have one entry per query");
        p.query_ids = qi.data();
        A.keep.push_back(qi);
    }
    if (!margin.is_none()) {
        p.use_margin = true;
        p.margin = margin.cast<float>();
        if (!std::isfinite(p.margin)) throw std::invalid_argument("false_negative_margin must be finite");
    }
    for (double v : {scale, alpha_own_neg, alpha_other, alpha_mem})
        if (!std::isfinite(v)) throw std::invalid_argument("scale and hardness_strength must be finite");
    if (!(scale > 0)) throw std::invalid_argument("scale must be positive");
    p.scale = (float)scale;
    p.alpha_own_neg = (float)alpha_own_neg;
    p.alpha_other = (float)alpha_other;
    p.alpha_mem = (float)alpha_mem;
    p.cosine = cosine;
    p.in_batch = in_batch;
}

template <class T>
py::array_t<T> vec_to_array(const std::vector<T>& v, py::ssize_t rows, py::ssize_t cols) {
    py::array_t<T> a = cols > 0 ? py::array_t<T>({rows, cols}) : py::array_t<T>({rows});
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

template <class T>
void array_to_vec(const py::object& o, std::vector<T>& v, size_t n, const char* name) {
    auto a = checked<T>(o, name, (int)py::array(o.cast<py::array>()).ndim());
    if ((size_t)a.size() != n) throw std::invalid_argument(std::string("state ") + name + " has the wrong size");
    v.assign(a.data(), a.data() + n);
}

py::tuple infonce_forward_impl(const py::array& q, bool q_bf16, const py::list& batch, const py::object& memory,
                               const py::object& pos_ids, const py::object& margin, double scale,
                               double alpha_own_neg, double alpha_other, double alpha_mem, bool cosine,
                               bool in_batch, bool want_grad, int num_threads, const py::object& query_ids) {
    if (num_threads < 1) throw std::invalid_argument("num_threads must be positive");
    InfoNceArgs A;
    build_problem(A, q, q_bf16, batch, memory, pos_ids, margin, scale, alpha_own_neg, alpha_other, alpha_mem,
                  cosine, in_batch, query_ids);
    const auto B = (py::ssize_t)A.p.B, d = (py::ssize_t)A.p.d;
    py::array_t<float> loss({B});
    float* lp = loss.mutable_data();
    hn::InfoNceState st;
    {
        py::gil_scoped_release nogil;
        hn::infonce_forward(A.p, want_grad, lp, st, num_threads);
    }
    py::tuple state = py::make_tuple(vec_to_array(st.qhat, B, d), vec_to_array(st.qinv, B, 0),
                                     vec_to_array(st.sim_pos, B, 0), vec_to_array(st.lnorm, B, 0),
                                     want_grad ? py::object(vec_to_array(st.gq, B, d)) : py::object(py::none()));
    return py::make_tuple(loss, state);
}

py::tuple infonce_backward_impl(const py::array& q, bool q_bf16, const py::list& batch, const py::object& memory,
                                const py::object& pos_ids, const py::object& margin, double scale,
                                double alpha_own_neg, double alpha_other, double alpha_mem, bool cosine,
                                bool in_batch, const py::tuple& state, const py::object& g,
                                const py::list& want_batch_grad, int num_threads, const py::object& query_ids) {
    if (num_threads < 1) throw std::invalid_argument("num_threads must be positive");
    InfoNceArgs A;
    build_problem(A, q, q_bf16, batch, memory, pos_ids, margin, scale, alpha_own_neg, alpha_other, alpha_mem,
                  cosine, in_batch, query_ids);
    const size_t B = A.p.B, d = A.p.d;
    if (state.size() != 5 || state[4].is_none()) throw std::invalid_argument("forward state is incomplete");
    hn::InfoNceState st;
    array_to_vec<float>(state[0], st.qhat, B * d, "qhat");
    array_to_vec<float>(state[1], st.qinv, B, "qinv");
    array_to_vec<float>(state[2], st.sim_pos, B, "sim_pos");
    array_to_vec<float>(state[3], st.lnorm, B, "lnorm");
    array_to_vec<float>(state[4], st.gq, B * d, "gq");
    auto ga = checked<float>(g, "grad_output", 1);
    if ((size_t)ga.shape(0) != B) throw std::invalid_argument("grad_output must have B entries");
    if (want_batch_grad.size() != A.p.batch.size()) throw std::invalid_argument("want_batch_grad has the wrong length");
    py::array_t<float> gq({(py::ssize_t)B, (py::ssize_t)d});
    py::list outs;
    std::vector<float*> ptrs;
    for (size_t k = 0; k < A.p.batch.size(); ++k) {
        if (want_batch_grad[k].cast<bool>()) {
            py::array_t<float> a({(py::ssize_t)B, (py::ssize_t)d});
            ptrs.push_back(a.mutable_data());
            outs.append(a);
        } else {
            ptrs.push_back(nullptr);
            outs.append(py::none());
        }
    }
    float* gqp = gq.mutable_data();
    const float* gp = ga.data();
    {
        py::gil_scoped_release nogil;
        hn::infonce_backward(A.p, st, gp, gqp, ptrs, num_threads);
    }
    return py::make_tuple(gq, outs);
}

// ---- row passes of the dense path (loss_dense.h): S is the caller's score block, written in place

// A writable 2-D block of T with contiguous rows; returns its row stride.
template <class T>
size_t block_of(const py::array& S, const char* name) {
    if (!py::isinstance<py::array_t<T>>(S)) throw std::invalid_argument(std::string(name) + " has the wrong dtype");
    if (!S.writeable()) throw std::invalid_argument(std::string(name) + " must be writable");
    return row_stride(S, name);
}

// A C-contiguous 1-D array of n T (writable when `out`), or null for None.
template <class T>
T* vec_of(const py::object& o, size_t n, const char* name, bool out, std::vector<py::object>& keep) {
    if (o.is_none()) {
        if (out) throw std::invalid_argument(std::string(name) + " is required");
        return nullptr;
    }
    auto a = checked<T>(o, name, 1);
    if ((size_t)a.shape(0) != n)
        throw std::invalid_argument(std::string(name) + " must have " + std::to_string(n) + " entries, got " +
                                    std::to_string(a.shape(0)));
    if (out && !a.writeable()) throw std::invalid_argument(std::string(name) + " must be writable");
    keep.push_back(a);
    return const_cast<T*>(a.data());
}

// A C-contiguous (B, N) bool mask, or null for None.
const uint8_t* mask_of(const py::object& o, size_t B, size_t N, const char* name, std::vector<py::object>& keep) {
    if (o.is_none()) return nullptr;
    auto a = py::reinterpret_borrow<py::array>(o);
    if (!py::isinstance<py::array>(o) || a.dtype().kind() != 'b' || a.ndim() != 2 ||
        !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + " must be a C-contiguous 2-D bool array");
    if ((size_t)a.shape(0) != B || (size_t)a.shape(1) != N)
        throw std::invalid_argument(std::string(name) + " has shape " + shape_str(a) + ", the scores (" +
                                    std::to_string(B) + ", " + std::to_string(N) + ")");
    keep.push_back(a);
    return static_cast<const uint8_t*>(a.data());
}

// The mean of the B per-row losses, summed in double; bad becomes -2 when the rows were all
// finite but the mean is not (z_ic - z_ip, or the sum, overflowed).
template <class T>
T mean_loss(const T* loss, size_t B, long* bad) {
    double sum = 0;
    for (size_t i = 0; i < B; ++i) sum += (double)loss[i];
    const T mean = (T)(sum / (double)B);
    if (*bad < 0 && !std::isfinite(mean)) *bad = -2;
    return mean;
}

template <class T>
py::tuple dense_rows_t(py::array S, double scale, double alpha, double grad_scale, const py::object& pen,
                       const py::object& removed, const py::object& lse_mem, int num_threads) {
    hn::DenseRows<T> p;
    p.lds = block_of<T>(S, "scores");
    p.B = (size_t)S.shape(0);
    p.N = (size_t)S.shape(1);
    if (p.B == 0) throw std::invalid_argument("scores must have at least one row");
    if (p.B > p.N) throw std::invalid_argument("scores: row i's positive is column i, so rows <= columns");
    p.S = static_cast<T*>(S.mutable_data());
    p.scale = (T)scale;
    p.alpha = (T)alpha;
    p.grad_scale = (T)grad_scale;
    std::vector<py::object> keep;
    p.pen = mask_of(pen, p.B, p.N, "pen", keep);
    p.removed = mask_of(removed, p.B, p.N, "removed", keep);
    p.lse_mem = vec_of<T>(lse_mem, p.B, "lse_mem", false, keep);
    py::array_t<T> loss((py::ssize_t)p.B);
    py::object pmem_obj = py::none();
    T* pmem = nullptr;
    if (p.lse_mem) {
        py::array_t<T> pm((py::ssize_t)p.B);
        pmem = pm.mutable_data();
        pmem_obj = pm;
    }
    T* l = loss.mutable_data();
    py::array_t<T> mean_arr(std::vector<py::ssize_t>{});  // 0-d: becomes the loss tensor without a copy
    T* mean = mean_arr.mutable_data();
    long bad;
    {
        py::gil_scoped_release nogil;
        bad = hn::dense_rows(p, l, pmem, num_threads);
        *mean = mean_loss(l, p.B, &bad);
    }
    return py::make_tuple(mean_arr, loss, pmem_obj, bad);
}

// scores (B, N) float32 / float64, written in place with grad_scale * dloss_i/dz_ic; pen,
// removed: (B, N) bool or None; lse_mem (B,) of the scores' dtype or None.  Returns (the mean
// loss (0-d array, summed in double), loss (B,), pmem (B,) or None, the first row with a
// non-finite logit, or -2 when the logits are finite but the mean loss is not, or -1).
py::tuple dense_rows_impl(const py::array& S, double scale, double alpha, double grad_scale, const py::object& pen,
                          const py::object& removed, const py::object& lse_mem, int num_threads) {
    if (py::isinstance<py::array_t<float>>(S))
        return dense_rows_t<float>(S, scale, alpha, grad_scale, pen, removed, lse_mem, num_threads);
    if (py::isinstance<py::array_t<double>>(S))
        return dense_rows_t<double>(S, scale, alpha, grad_scale, pen, removed, lse_mem, num_threads);
    throw std::invalid_argument("scores must be float32 or float64");
}

// q, pos: (B, d) float32, C-contiguous; hard: (B, n, d) float32 C-contiguous or None.  The
// whole plain in-batch step (loss_dense.h DenseStep), of dot products or cosines.  Returns (the mean loss (0-d float32
// array, summed in double), gq (B, d), gpos (B, d), ghard (B, n, d) or None, bad) with bad as
// dense_rows_impl's (on bad != -1 the gradients are unspecified).
py::tuple dense_step_impl(const py::object& q, const py::object& pos, const py::object& hard, double scale,
                          double grad_scale, bool cosine, int num_threads) {
    auto qa = checked<float>(q, "q", 2);
    auto pa = checked<float>(pos, "pos", 2);
    hn::DenseStep p;
    p.B = (size_t)qa.shape(0);
    p.d = (size_t)qa.shape(1);
    if (p.B == 0 || p.d == 0) throw std::invalid_argument("q must have at least one row and one column");
    if (pa.shape(0) != qa.shape(0) || pa.shape(1) != qa.shape(1))
        throw std::invalid_argument("pos has shape " + shape_str(pa) + " but q has " + shape_str(qa));
    py::array_t<float> ha;
    if (!hard.is_none()) {
        ha = checked<float>(hard, "hard", 3);
        if (ha.shape(0) != qa.shape(0) || ha.shape(2) != qa.shape(1))
            throw std::invalid_argument("hard has shape " + shape_str(ha) + " but q has " + shape_str(qa));
        p.n = (size_t)ha.shape(1);
    }
    const size_t N = p.B * (1 + p.n);
    check_out_size((py::ssize_t)p.B, (py::ssize_t)N, "the scores");
    p.q = qa.data();
    p.pos = pa.data();
    p.hard = p.n ? ha.data() : nullptr;
    p.scale = (float)scale;
    p.grad_scale = (float)grad_scale;
    p.cosine = cosine;
    std::unique_ptr<float[]> S(new float[p.B * N]);  // uninitialised: the step writes it whole
    p.S = S.get();
    py::array_t<float> gq({(py::ssize_t)p.B, (py::ssize_t)p.d}), gpos({(py::ssize_t)p.B, (py::ssize_t)p.d});
    p.gq = gq.mutable_data();
    p.gpos = gpos.mutable_data();
    py::object ghard_obj = py::none();
    if (p.n) {
        py::array_t<float> gh({(py::ssize_t)p.B, (py::ssize_t)p.n, (py::ssize_t)p.d});
        p.ghard = gh.mutable_data();
        ghard_obj = gh;
    }
    py::array_t<float> mean_arr(std::vector<py::ssize_t>{});
    float* mean = mean_arr.mutable_data();
    std::unique_ptr<float[]> loss(new float[p.B]);
    long bad;
    {
        py::gil_scoped_release nogil;
        bad = hn::dense_step(p, loss.get(), num_threads);
        *mean = mean_loss(loss.get(), p.B, &bad);
    }
    return py::make_tuple(mean_arr, gq, gpos, ghard_obj, bad);
}

template <class T>
bool lse_chunk_t(py::array S, const py::object& inv, const py::object& thresholds,
                 const py::object& col_ids, const py::object& pos_ids, const py::object& query_ids,
                 double logit_scale, const py::object& run_max, const py::object& run_sum, const py::object& r,
                 int num_threads) {
    hn::LseChunk<T> p;
    p.lds = block_of<T>(S, "scores");
    p.B = (size_t)S.shape(0);
    p.C = (size_t)S.shape(1);
    p.S = static_cast<T*>(S.mutable_data());
    std::vector<py::object> keep;
    p.inv = vec_of<T>(inv, p.C, "inv", false, keep);
    p.thresholds = vec_of<T>(thresholds, p.B, "thresholds", false, keep);
    if (!col_ids.is_none()) {
        if (pos_ids.is_none()) throw std::invalid_argument("col_ids needs pos_ids");
        p.col_ids = vec_of<int64_t>(col_ids, p.C, "col_ids", false, keep);
        p.pos_ids = vec_of<int64_t>(pos_ids, p.B, "pos_ids", false, keep);
        p.query_ids = vec_of<int64_t>(query_ids, p.B, "query_ids", false, keep);
    }
    p.logit_scale = (T)logit_scale;
    T* mx = vec_of<T>(run_max, p.B, "run_max", true, keep);
    T* sm = vec_of<T>(run_sum, p.B, "run_sum", true, keep);
    T* rr = vec_of<T>(r, p.B, "r", true, keep);
    py::gil_scoped_release nogil;
    return hn::lse_chunk(p, mx, sm, rr, num_threads);
}

// One memory chunk of the streaming log-sum-exp (loss_dense.h); scores (B, C) float32 /
// float64 written in place with the weights; run_max, run_sum, r (B,) of that dtype, updated.
// Returns True when a logit is not finite.
bool lse_chunk_impl(const py::array& S, const py::object& inv, const py::object& thresholds,
                    const py::object& col_ids, const py::object& pos_ids, const py::object& query_ids,
                    double logit_scale, const py::object& run_max, const py::object& run_sum, const py::object& r,
                    int num_threads) {
    if (py::isinstance<py::array_t<float>>(S))
        return lse_chunk_t<float>(S, inv, thresholds, col_ids, pos_ids, query_ids, logit_scale, run_max, run_sum, r,
                                  num_threads);
    if (py::isinstance<py::array_t<double>>(S))
        return lse_chunk_t<double>(S, inv, thresholds, col_ids, pos_ids, query_ids, logit_scale, run_max, run_sum, r,
                                   num_threads);
    throw std::invalid_argument("scores must be float32 or float64");
}

}  // namespace

void bind_losses(py::module_& m) {
    m.def("memory_lse", &memory_lse_impl, py::arg("q"), py::arg("mem"), py::arg("mem_bf16"), py::arg("mem_ids"),
          py::arg("pos_ids"), py::arg("thresholds"), py::arg("logit_scale"), py::arg("grad_scale"),
          py::arg("cosine"), py::arg("want_grad"), py::arg("num_threads"),
          py::arg("query_ids") = py::none(),
          "Fused streaming log-sum-exp of q x memory scores and its gradient w.r.t. q (private)");
    m.def("infonce_forward", &infonce_forward_impl, py::arg("q"), py::arg("q_bf16"), py::arg("batch"),
          py::arg("memory"), py::arg("pos_ids"), py::arg("margin"), py::arg("scale"), py::arg("alpha_own_neg"),
          py::arg("alpha_other"), py::arg("alpha_mem"), py::arg("cosine"), py::arg("in_batch"),
          py::arg("want_grad"), py::arg("num_threads"), py::arg("query_ids") = py::none(),
          "Fused query->passage InfoNCE: per-row losses and the state for the backward (private)");
    m.def("infonce_backward", &infonce_backward_impl, py::arg("q"), py::arg("q_bf16"), py::arg("batch"),
          py::arg("memory"), py::arg("pos_ids"), py::arg("margin"), py::arg("scale"), py::arg("alpha_own_neg"),
          py::arg("alpha_other"), py::arg("alpha_mem"), py::arg("cosine"), py::arg("in_batch"), py::arg("state"),
          py::arg("grad_output"), py::arg("want_batch_grad"), py::arg("num_threads"),
          py::arg("query_ids") = py::none(),
          "Gradients of the fused InfoNCE w.r.t. q and the in-batch passages (private)");
    m.def("dense_rows", &dense_rows_impl, py::arg("scores"), py::arg("scale"), py::arg("alpha"),
          py::arg("grad_scale"), py::arg("pen"),
          py::arg("removed"), py::arg("lse_mem"), py::arg("num_threads"),
          "Row passes of the dense InfoNCE path, in place (private)");
    m.def("dense_step", &dense_step_impl, py::arg("q"), py::arg("pos"), py::arg("hard"), py::arg("scale"),
          py::arg("grad_scale"), py::arg("cosine"), py::arg("num_threads"),
          "The whole plain in-batch InfoNCE step, loss and gradients, in one call (private)");
    m.def("dense_step_fast", &hn::dense_step_fast,
          "Whether dense_step runs at speed with the SIMD level in use (private)");
    m.def("lse_chunk", &lse_chunk_impl, py::arg("scores"), py::arg("inv"), py::arg("thresholds"),
          py::arg("col_ids"), py::arg("pos_ids"), py::arg("query_ids"), py::arg("logit_scale"), py::arg("run_max"),
          py::arg("run_sum"), py::arg("r"), py::arg("num_threads"),
          "One memory chunk of the streaming log-sum-exp, in place (private)");
}
