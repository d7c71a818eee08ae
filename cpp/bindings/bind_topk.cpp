// Bindings for topk.cpp: shapes, dtypes and id ranges are checked here (the
// Python layer has already made the friendly checks); the search runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/array_utils.h"
#include "simd/kernels.h"
#include "topk.h"

namespace py = pybind11;
using namespace hn_py;

namespace {

hn::Metric parse_metric(const std::string& m) {
    if (m == "ip") return hn::Metric::IP;
    if (m == "cosine") return hn::Metric::Cosine;
    if (m == "l2") return hn::Metric::L2;
    throw std::invalid_argument("metric must be one of 'ip', 'cosine', 'l2', got '" + m + "'");
}

// segments: list of (array (rows, d), is_bf16, sqnorms float32 (rows,) or None, id_offset)
// cache: a ScreenCache owned by the caller's index for these segments, or None
py::tuple topk_impl(const py::array& queries, bool queries_bf16, const py::list& segments,
                    const std::string& metric, py::ssize_t k, const py::object& indptr,
                    const py::object& indices, int num_threads, hn::ScreenCache* cache, bool screen_only) {
    if (k <= 0) throw std::invalid_argument("k must be a positive integer, got " + std::to_string(k));
    const hn::Metric mt = parse_metric(metric);
    const size_t ldq = row_stride(queries, "queries");
    const hn::DType qt = vec_dtype(queries, queries_bf16, "queries");
    const size_t nq = queries.shape(0), d = queries.shape(1);
    if (d == 0) throw std::invalid_argument("queries must have at least one column");

    std::vector<hn::Segment> segs;
    std::vector<py::object> keep;  // hold references while the GIL is released
    int64_t total = 0;
    for (const py::handle& h : segments) {
        auto t = h.cast<py::tuple>();
        py::array a = t[0].cast<py::array>();
        const size_t ld = row_stride(a, "corpus");
        if ((size_t)a.shape(1) != d)
            throw std::invalid_argument("corpus has dimension " + std::to_string(a.shape(1)) +
                                        " but queries have " + std::to_string(d));
        hn::Segment s{a.data(), vec_dtype(a, t[1].cast<bool>(), "corpus"), (size_t)a.shape(0), ld, nullptr,
                      t[3].cast<int64_t>()};
        if (!t[2].is_none()) {
            auto n = checked<float>(t[2], "corpus norms", 1);
            if ((size_t)n.shape(0) != s.rows) throw std::invalid_argument("corpus norms have the wrong length");
            s.sqnorms = n.data();
            keep.push_back(n);
        }
        total += (int64_t)s.rows;
        keep.push_back(a);
        segs.push_back(s);
    }

    hn::Exclusions ex;
    py::array_t<int64_t> ip, ix;
    if (!indptr.is_none()) {
        ip = checked<int64_t>(indptr, "exclude indptr", 1);
        ix = checked<int64_t>(indices, "exclude indices", 1);
        if ((size_t)ip.shape(0) != nq + 1) throw std::invalid_argument("exclude must have one row per query");
        const int64_t* p = ip.data();
        if (p[0] != 0 || p[nq] != ix.shape(0)) throw std::invalid_argument("exclude indptr is inconsistent");
        for (size_t i = 0; i < nq; ++i)
            if (p[i + 1] < p[i]) throw std::invalid_argument("exclude indptr must be non-decreasing");
        ex.indptr = p;
        ex.indices = ix.data();
    }

    check_out_size((py::ssize_t)nq, k, "k");
    py::array_t<float> scores({(py::ssize_t)nq, k});
    py::array_t<int64_t> ids({(py::ssize_t)nq, k});
    float* so = scores.mutable_data();
    int64_t* io = ids.mutable_data();
    std::vector<size_t> left;
    {
        py::gil_scoped_release nogil;
        hn::topk_search(queries.data(), qt, nq, ldq, d, segs, mt, (size_t)k, ex, so, io, num_threads, cache,
                        screen_only ? &left : nullptr);
    }
    if (!screen_only) return py::make_tuple(scores, ids);
    py::list rest;  // the query ranges [a, b) the screen left to the caller (their rows hold nothing)
    for (size_t j = 0; j + 1 < left.size(); j += 2) rest.append(py::make_tuple(left[j], left[j + 1]));
    return py::make_tuple(scores, ids, rest);
}

py::tuple merge_impl(const py::list& parts_scores, const py::list& parts_ids, bool smallest_first,
                     py::ssize_t k, int num_threads) {
    if (k <= 0) throw std::invalid_argument("k must be a positive integer");
    if (parts_scores.size() != parts_ids.size() || parts_scores.size() == 0)
        throw std::invalid_argument("need the same positive number of score and id arrays");
    std::vector<const float*> ps;
    std::vector<const int64_t*> pi;
    std::vector<size_t> pk;
    std::vector<py::object> keep;
    py::ssize_t nq = -1;
    for (size_t p = 0; p < parts_scores.size(); ++p) {
        auto s = checked<float>(parts_scores[p], "scores", 2);
        auto i = checked<int64_t>(parts_ids[p], "ids", 2);
        if (s.shape(0) != i.shape(0) || s.shape(1) != i.shape(1))
            throw std::invalid_argument("scores and ids of a part must have the same shape");
        if (nq >= 0 && s.shape(0) != nq) throw std::invalid_argument("all parts must have the same number of rows");
        nq = s.shape(0);
        ps.push_back(s.data());
        pi.push_back(i.data());
        pk.push_back(s.shape(1));
        keep.push_back(s);
        keep.push_back(i);
    }
    check_out_size(nq, k, "k");
    py::array_t<float> scores({nq, k});
    py::array_t<int64_t> ids({nq, k});
    float* so = scores.mutable_data();
    int64_t* io = ids.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::merge_topk(ps, pi, pk, (size_t)nq, smallest_first, (size_t)k, so, io, num_threads);
    }
    return py::make_tuple(scores, ids);
}

py::array_t<float> sqnorms_impl(const py::array& x, bool bf16) {
    const size_t ld = row_stride(x, "vectors");
    const hn::DType t = vec_dtype(x, bf16, "vectors");
    py::array_t<float> out(x.shape(0));
    float* o = out.mutable_data();
    const void* p = x.data();
    const size_t n = x.shape(0), d = x.shape(1);
    {
        py::gil_scoped_release nogil;
        hn::kernels().sqnorm_rows(p, ld, n, d, t, o);
    }
    return out;
}

}  // namespace

void bind_topk(py::module_& m) {
    // the screen's coded copy of one corpus, owned by an index (hardneg.exact.ExactIndex)
    py::class_<hn::ScreenCache>(m, "ScreenCache")
        .def(py::init<>())
        .def_property_readonly("nbytes", &hn::ScreenCache::nbytes, "bytes of the kept coded copy (0: none)")
        .def("clear", &hn::ScreenCache::clear, "drop the kept coded copy");
    m.def("topk", &topk_impl, py::arg("queries"), py::arg("queries_bf16"), py::arg("segments"),
          py::arg("metric"), py::arg("k"), py::arg("indptr"), py::arg("indices"), py::arg("num_threads"),
          py::arg("cache") = py::none(), py::arg("screen_only") = false);
    m.def("merge_topk", &merge_impl, py::arg("scores"), py::arg("ids"), py::arg("smallest_first"), py::arg("k"),
          py::arg("num_threads"));
    m.def("sqnorms", &sqnorms_impl, py::arg("vectors"), py::arg("bf16"));
    // the low-precision screen of the exact search (see cpp/topk_screen.cpp): 0 off, 1 auto, 2 always
    m.def("set_screen_mode", [](int mode) { hn::set_screen_mode(mode); }, py::arg("mode"));
    m.def("screen_mode", [] { return hn::screen_mode(); });
    m.def("screen_available", [] { return hn::screen_choice(1, 1, 128) != nullptr; });
    // its codes: "auto" (int8 with AVX-512 VNNI when 128 k <= n, else bf16), "bf16" or "int8"
    m.def("set_screen_type", [](const std::string& t) {
        if (t == "auto") hn::set_screen_type(0);
        else if (t == "bf16") hn::set_screen_type(1);
        else if (t == "int8") hn::set_screen_type(2);
        else throw py::value_error("screen type must be 'auto', 'bf16' or 'int8', got '" + t + "'");
    }, py::arg("type"));
    m.def("screen_type", [] {
        const int t = hn::screen_type();
        return std::string(t == 1 ? "bf16" : t == 2 ? "int8" : "auto");
    });
    m.def("screen_types", [] {  // the codes this CPU can screen with
        py::list out;
        for (hn::ScreenType t : {hn::ScreenType::Int8, hn::ScreenType::Bf16})
            if (const hn::ScreenKernels* B = hn::screen_kernels(t)) out.append(B->name);
        return out;
    });
    // the int8 screen on AMX tiles (same codes and results as the VNNI loop): available on this
    // CPU and OS, switched on (HARDNEG_AMX=0 or set_amx(False) keep the VNNI loop)
    m.def("amx_available", [] { return hn::amx_available(); });
    m.def("amx_enabled", [] { return hn::amx_enabled(); });
    m.def("set_amx", [](bool on) { hn::set_amx(on); }, py::arg("on"));
    m.def("screen_choice", [](size_t d, size_t k, size_t n) -> py::object {  // the codes a search would use
        const char* name = hn::screen_choice(d, k, n);
        return name ? py::object(py::str(name)) : py::object(py::none());
    }, py::arg("d"), py::arg("k"), py::arg("n"));
    m.def("screen_counts", [] {
        uint64_t s = 0, f = 0;
        hn::screen_counts(&s, &f);
        return py::make_tuple(s, f);
    }, "(screened searches, of which fell back to the plain path) since the process started");
    m.def("screen_last", [] {
        const hn::ScreenReport r = hn::screen_last();
        py::dict out;
        out["screened"] = bool(r.screened);
        out["estimate"] = r.estimate < 0 ? py::object(py::none()) : py::object(py::float_(r.estimate));
        out["rescored"] = r.rescored < 0 ? py::object(py::none()) : py::object(py::float_(r.rescored));
        out["estimate_seconds"] = r.estimate_seconds;
        out["estimate_reused"] = r.estimate_reused;
        return out;
    }, "what the last search that reached the screen's decision did: screened, auto's estimate of the "
       "fraction of query x row pairs it would rescore, and the fraction its screened panels rescored "
       "(None: not made / nothing screened), the estimate's seconds and whether it was reused from an "
       "earlier one-shot search of the same corpus and k; a diagnostic for benchmarks");
    m.def("screen_extended", [] {
        uint64_t s = 0, f = 0, e = 0;
        hn::screen_counts(&s, &f, &e);
        return e;
    }, "coded copies extended (an index's copy after add(): only the new rows coded) since the process started");
}
