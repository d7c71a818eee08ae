// Bindings for metrics.cpp.  Arrays are checked here; the run-dict form is read
// with the Python C API (GIL held: str keys, float scores), reduced to the ranks
// of the judged documents, and scored without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/array_utils.h"
#include "metrics.h"

namespace py = pybind11;
using namespace hn_py;

namespace {

// Kinds cross the boundary as names, mapped here once: an unknown one is a clear error.
template <class E, size_t N>
E enum_of(const std::string& name, const std::pair<const char*, E> (&table)[N], const char* what) {
    std::string valid;
    for (const auto& e : table) {
        if (name == e.first) return e.second;
        valid += (valid.empty() ? "" : ", ") + std::string(e.first);
    }
    throw std::invalid_argument("unknown " + std::string(what) + " '" + name + "' (expected one of " + valid + ")");
}

const std::pair<const char*, hn::MetricKind> kMetricKinds[] = {
    {"ndcg", hn::MetricKind::NDCG},   {"recip_rank", hn::MetricKind::RecipRank}, {"recall", hn::MetricKind::Recall},
    {"P", hn::MetricKind::Precision}, {"map", hn::MetricKind::AP},               {"Rprec", hn::MetricKind::RPrec},
    {"success", hn::MetricKind::Hits}, {"hits", hn::MetricKind::HitCount},
};
const std::pair<const char*, hn::FuseMethod> kFuseMethods[] = {
    {"rrf", hn::FuseMethod::RRF}, {"combsum", hn::FuseMethod::CombSUM}, {"combmnz", hn::FuseMethod::CombMNZ}};
const std::pair<const char*, hn::FuseNorm> kFuseNorms[] = {
    {"none", hn::FuseNorm::None}, {"minmax", hn::FuseNorm::MinMax}, {"zscore", hn::FuseNorm::ZScore}};

std::vector<hn::MetricSpec> make_specs(const std::vector<std::string>& kinds, const std::vector<int64_t>& ks) {
    if (kinds.size() != ks.size()) throw std::invalid_argument("kinds and ks differ in length");
    std::vector<hn::MetricSpec> s;
    for (size_t i = 0; i < kinds.size(); ++i) {
        const hn::MetricKind kind = enum_of(kinds[i], kMetricKinds, "metric kind");
        if (kind == hn::MetricKind::Precision && ks[i] <= 0) throw std::invalid_argument("P@k needs k > 0");
        s.push_back({kind, ks[i]});
    }
    return s;
}

// CSR of the qrels: indptr (nq+1,), rels (nnz,), codes (nnz,) optional.
struct QrelsArrays {
    py::array_t<int64_t> indptr, codes;
    py::array_t<int32_t> rels;
    hn::QrelsCSR csr;
};

QrelsArrays qrels_arrays(const py::object& indptr, const py::object& codes, const py::object& rels) {
    QrelsArrays q;
    q.indptr = checked<int64_t>(indptr, "qrels indptr", 1);
    q.rels = checked<int32_t>(rels, "qrels rels", 1);
    const int64_t nq = q.indptr.shape(0) - 1;
    if (nq < 0) throw std::invalid_argument("qrels indptr is empty");
    const int64_t* p = q.indptr.data();
    if (p[0] != 0 || p[nq] != q.rels.shape(0)) throw std::invalid_argument("qrels indptr is inconsistent");
    for (int64_t i = 0; i < nq; ++i)
        if (p[i + 1] < p[i]) throw std::invalid_argument("qrels indptr must be non-decreasing");
    q.csr.indptr = p;
    q.csr.rels = q.rels.data();
    q.csr.num_queries = nq;
    if (!codes.is_none()) {
        q.codes = checked<int64_t>(codes, "qrels codes", 1);
        if (q.codes.shape(0) != q.rels.shape(0)) throw std::invalid_argument("qrels codes have the wrong length");
        const int64_t* c = q.codes.data();
        for (int64_t i = 0; i < nq; ++i)
            for (int64_t j = p[i] + 1; j < p[i + 1]; ++j)
                if (c[j] < c[j - 1] || (c[j] == c[j - 1] && c[j] >= 0))
                    throw std::invalid_argument("qrels codes must be sorted and unique per query");
        q.csr.codes = c;
    }
    return q;
}

void check_row_query(const int64_t* rq, size_t n, int64_t nq) {
    for (size_t i = 0; i < n; ++i)
        if (rq[i] < -1 || rq[i] >= nq) throw std::invalid_argument("row_query out of range");
}

py::array_t<double> eval_ids(const py::object& ids_o, int64_t n_codes, const py::object& row_query_o,
                             const py::object& indptr, const py::object& codes, const py::object& rels,
                             int32_t level, const std::vector<std::string>& kinds, const std::vector<int64_t>& ks,
                             int num_threads) {
    auto specs = make_specs(kinds, ks);
    if (!py::isinstance<py::array_t<int64_t>>(ids_o)) throw std::invalid_argument("ids must be int64");
    py::array ids = py::reinterpret_borrow<py::array>(ids_o);
    const size_t ld = row_stride(ids, "ids");
    const size_t nq = ids.shape(0), k = ids.shape(1);
    auto rq = checked<int64_t>(row_query_o, "row_query", 1);
    if ((size_t)rq.shape(0) != nq) throw std::invalid_argument("row_query must have one entry per row of ids");
    if (codes.is_none()) throw std::invalid_argument("qrels codes are required");
    QrelsArrays q = qrels_arrays(indptr, codes, rels);
    check_row_query(rq.data(), nq, q.csr.num_queries);
    if (n_codes < 0) throw std::invalid_argument("n_codes must be >= 0");
    py::array_t<double> out({(py::ssize_t)specs.size(), (py::ssize_t)nq});
    const int64_t* id = static_cast<const int64_t*>(ids.data());
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::evaluate_ids(id, nq, k, ld, n_codes, rq.data(), q.csr, level, specs.data(), specs.size(), o,
                         num_threads);
    }
    return out;
}

// ---- run dicts ---------------------------------------------------------------

[[noreturn]] void throw_py() { throw py::error_already_set(); }

inline double score_of(PyObject* v, PyObject* qid, PyObject* doc) {
    double d;
    if (PyFloat_CheckExact(v)) d = PyFloat_AS_DOUBLE(v);
    else if (PyBool_Check(v) || PyUnicode_Check(v) || PyBytes_Check(v))
        throw py::type_error("run scores must be numbers, got " + std::string(py::repr(v)) + " for query " +
                             std::string(py::repr(qid)) + ", document " + std::string(py::repr(doc)));
    else {
        d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            throw py::type_error("run scores must be numbers, got " + std::string(py::repr(v)) + " for query " +
                                 std::string(py::repr(qid)));
        }
    }
    if (!std::isfinite(d))
        throw std::invalid_argument("run score is " + std::string(std::isnan(d) ? "NaN" : "infinite") + " for query " +
                                    std::string(py::repr(qid)) + ", document " + std::string(py::repr(doc)) +
                                    " (scores must be finite numbers)");
    return d;
}

inline std::pair<const char*, Py_ssize_t> utf8(PyObject* s) {
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p) throw_py();
    return {p, n};
}

py::type_error not_str(PyObject* doc, PyObject* qid) {
    return py::type_error("run document ids must be str, got " + std::string(py::repr(doc)) + " for query " +
                          std::string(py::repr(qid)));
}

// One query's dict {doc_id: score} of a run: its scores, and its keys on demand.
struct QueryRun {
    PyObject* qid;
    PyObject* inner;
    py::object keys;  // the keys as a list, fetched only when a docno is needed
    Py_ssize_t n = 0;  // entries whose scores were read

    PyObject* key_at(Py_ssize_t j) {
        if (!keys) {
            keys = py::reinterpret_steal<py::object>(PyDict_Keys(inner));
            if (!keys) throw_py();
            if (PyList_GET_SIZE(keys.ptr()) != n) throw std::invalid_argument("run changed during evaluation");
        }
        return PyList_GET_ITEM(keys.ptr(), j);
    }
    // The UTF-8 docno of entry j (valid while `keys` holds it).
    std::string_view docno(Py_ssize_t j) {
        PyObject* doc = key_at(j);
        if (!PyUnicode_Check(doc)) throw not_str(doc, qid);
        auto u = utf8(doc);
        return {u.first, size_t(u.second)};
    }
    // Every score as float32 (trec_eval keeps float), checked (numbers, finite).
    // The values are read with the dict's values iterator: unlike PyDict_Next and
    // PyDict_Values (which read every key's hash) it never visits the key objects,
    // scattered in memory, so the str objects stay untouched.  The key type is
    // checked on the first key, and wherever docnos are compared.
    void read_scores(std::vector<float>& scores) {
        {
            Py_ssize_t j0 = 0;
            PyObject *k0, *v0;
            if (PyDict_Next(inner, &j0, &k0, &v0) && !PyUnicode_Check(k0)) throw not_str(k0, qid);
        }
        n = PyDict_GET_SIZE(inner);
        scores.resize(size_t(n));
        py::object view = py::reinterpret_steal<py::object>(PyObject_CallMethod(inner, "values", nullptr));
        if (!view) throw_py();
        py::object iter = py::reinterpret_steal<py::object>(PyObject_GetIter(view.ptr()));
        if (!iter) throw_py();
        Py_ssize_t c = 0;
        while (PyObject* v = PyIter_Next(iter.ptr())) {
            py::object hold_v = py::reinterpret_steal<py::object>(v);
            if (c >= n) throw std::invalid_argument("run changed during evaluation");
            double dv;
            if (!PyFloat_CheckExact(v) || !std::isfinite(dv = PyFloat_AS_DOUBLE(v)))
                dv = score_of(v, qid, key_at(c));  // other number types, or the error message
            scores[size_t(c)] = float(dv);
            ++c;
        }
        if (PyErr_Occurred()) throw_py();
        if (c != n) throw std::invalid_argument("run changed during evaluation");
    }
};

// Returns out (n_specs, n_run) float64 for the run's queries in its iteration order.
// q_index: {qid: qrels query}; docs / rels: the qrels entries (CSR by indptr).
//
// Only the judged documents are looked up in a query's run dict; the other keys
// are never touched (visiting 10M str objects scattered in memory is what makes
// dict conversion slow).  The values are read once into float32 scores, and
// hn::trec_ranks (metrics.cpp) gives each judged document its trec_eval rank.
py::array_t<double> eval_dict(const py::object& run_o, const py::object& q_index_o, const py::object& indptr,
                              const py::object& docs_o, const py::object& rels, int32_t level,
                              const std::vector<std::string>& kinds, const std::vector<int64_t>& ks, int num_threads) {
    auto specs = make_specs(kinds, ks);
    if (!PyDict_Check(run_o.ptr())) throw py::type_error("run must be a dict {query_id: {doc_id: score}}");
    if (!PyDict_Check(q_index_o.ptr())) throw std::invalid_argument("q_index must be a dict");
    if (!PyList_Check(docs_o.ptr())) throw std::invalid_argument("qrels docs must be a list");
    QrelsArrays q = qrels_arrays(indptr, py::none(), rels);
    PyObject* docs = docs_o.ptr();
    if (PyList_GET_SIZE(docs) != q.rels.shape(0)) throw std::invalid_argument("qrels arrays differ in length");
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(docs); ++i)
        if (!PyUnicode_Check(PyList_GET_ITEM(docs, i))) throw std::invalid_argument("qrels doc ids must be str");
    const int64_t* qp = q.csr.indptr;
    const int32_t* qr = q.csr.rels;

    PyObject* run = run_o.ptr();
    PyObject* q_index = q_index_o.ptr();
    const size_t n_run = size_t(PyDict_Size(run));
    std::vector<int64_t> row_query(n_run, -1), hit_indptr(n_run + 1, 0);
    std::vector<hn::JudgedHit> hits;
    std::vector<hn::FoundDoc> found;
    std::vector<py::object> found_hold;  // keeps the docnos alive even if a score's __float__ mutates the qrels
    std::vector<float> scores;

    Py_ssize_t it = 0;
    PyObject *qid, *inner;
    size_t qi = 0;
    while (PyDict_Next(run, &it, &qid, &inner)) {
        if (qi >= n_run) throw std::invalid_argument("run changed size during evaluation");
        py::object hold_q = py::reinterpret_borrow<py::object>(qid);  // alive even if the run is mutated
        py::object hold_i = py::reinterpret_borrow<py::object>(inner);
        if (!PyUnicode_Check(qid))
            throw py::type_error("run query ids must be str, got " + std::string(py::repr(qid)));
        if (!PyDict_Check(inner))
            throw py::type_error("run[" + std::string(py::repr(qid)) + "] must be a dict {doc_id: score}");
        PyObject* tq = PyDict_GetItemWithError(q_index, qid);
        if (!tq && PyErr_Occurred()) throw_py();
        int64_t t = -1;
        if (tq) {
            t = PyLong_AsLongLong(tq);
            if (t < 0 || t >= q.csr.num_queries) throw std::invalid_argument("q_index out of range");
        }
        row_query[qi] = t;
        if (t >= 0) {
            // judged documents that can change a metric, looked up in the run
            found.clear();
            found_hold.clear();
            for (int64_t x = qp[t]; x < qp[t + 1]; ++x) {
                const int32_t rel = qr[x];
                if (!(rel > 0 || rel >= level)) continue;
                if (x >= PyList_GET_SIZE(docs)) throw std::invalid_argument("qrels changed during evaluation");
                py::object d = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(docs, x));
                py::object v = py::reinterpret_borrow<py::object>(PyDict_GetItemWithError(inner, d.ptr()));
                if (!v) {
                    if (PyErr_Occurred()) throw_py();
                    continue;
                }
                const float sc = float(score_of(v.ptr(), qid, d.ptr()));  // trec_eval keeps float
                auto u = utf8(d.ptr());
                found.push_back({sc, rel, std::string_view(u.first, size_t(u.second))});
                found_hold.push_back(d);
            }
            QueryRun qr_run{qid, inner};
            qr_run.read_scores(scores);
            auto docno_at = [&](size_t j) { return qr_run.docno(Py_ssize_t(j)); };
            hn::trec_ranks(found, scores.data(), scores.size(), docno_at, hits);
        }
        hit_indptr[++qi] = int64_t(hits.size());
    }
    if (qi != n_run) throw std::invalid_argument("run changed size during evaluation");

    py::array_t<double> out({(py::ssize_t)specs.size(), (py::ssize_t)n_run});
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::evaluate_hits(n_run, hit_indptr.data(), hits.data(), row_query.data(), q.csr, level, specs.data(),
                          specs.size(), o, num_threads);
    }
    return out;
}

// ---- id mapping ----------------------------------------------------------------
// For each target str, the position of its first occurrence in `corpus` (a list or
// tuple of str), or -1.  A hash table over the targets (FNV-1a of the UTF-8 bytes)
// and one pass over the corpus: no Python dict, no sort of the corpus.
inline uint64_t fnv1a(const char* p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ull;
    for (Py_ssize_t i = 0; i < n; ++i) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

py::array_t<int64_t> map_ids(const py::object& corpus_o, const py::list& targets) {
    const size_t m = targets.size();
    std::vector<const char*> tp(m);
    std::vector<Py_ssize_t> tl(m);
    std::vector<int64_t> alias(m, -1);
    size_t cap = 16;
    while (cap < 2 * m) cap <<= 1;
    std::vector<int64_t> slot(cap, -1);
    std::vector<uint64_t> slot_hash(cap);
    for (size_t i = 0; i < m; ++i) {
        PyObject* t = PyList_GET_ITEM(targets.ptr(), i);
        if (!PyUnicode_Check(t)) throw py::type_error("target ids must be str");
        auto u = utf8(t);
        tp[i] = u.first;
        tl[i] = u.second;
        const uint64_t h = fnv1a(u.first, u.second);
        size_t s = h & (cap - 1);
        for (;; s = (s + 1) & (cap - 1)) {
            if (slot[s] < 0) {
                slot[s] = int64_t(i);
                slot_hash[s] = h;
                break;
            }
            const int64_t j = slot[s];
            if (slot_hash[s] == h && tl[j] == u.second && std::memcmp(tp[j], u.first, size_t(u.second)) == 0) {
                alias[i] = j;  // repeated target
                break;
            }
        }
    }
    py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(corpus_o.ptr(), "corpus_ids must be a sequence"));
    if (!seq) throw_py();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
    PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
    py::array_t<int64_t> out((py::ssize_t)m);
    int64_t* o = out.mutable_data();
    std::fill(o, o + m, int64_t(-1));
    for (Py_ssize_t r = 0; r < n; ++r) {
        PyObject* c = items[r];
        if (!PyUnicode_Check(c))
            throw py::type_error("corpus_ids must be all str (or an integer array), got " + std::string(py::repr(c)) +
                                 " at position " + std::to_string(r));
        auto u = utf8(c);
        const uint64_t h = fnv1a(u.first, u.second);
        for (size_t s = h & (cap - 1); slot[s] >= 0; s = (s + 1) & (cap - 1)) {
            const int64_t j = slot[s];
            if (slot_hash[s] == h && tl[j] == u.second && std::memcmp(tp[j], u.first, size_t(u.second)) == 0) {
                if (o[j] < 0) o[j] = r;  // first occurrence wins
                break;
            }
        }
    }
    for (size_t i = 0; i < m; ++i)
        if (alias[i] >= 0) o[i] = o[alias[i]];
    return out;
}

// ---- fusion ------------------------------------------------------------------
py::tuple fuse(const py::list& ids_list, const py::list& scores_list, const std::vector<double>& weights,
               const std::string& method_name, const std::string& norm_name, double rrf_k, int64_t depth,
               int num_threads) {
    const hn::FuseMethod method = enum_of(method_name, kFuseMethods, "fusion method");
    const hn::FuseNorm norm = enum_of(norm_name, kFuseNorms, "fusion norm");
    const size_t nr = ids_list.size();
    if (nr == 0) throw std::invalid_argument("runs must not be empty");
    if (scores_list.size() != nr || weights.size() != nr) throw std::invalid_argument("runs lists differ in length");
    if (depth <= 0) throw std::invalid_argument("depth must be positive");
    std::vector<hn::FuseRun> runs;
    std::vector<py::object> keep;
    size_t nq = 0;
    for (size_t r = 0; r < nr; ++r) {
        auto ids = checked<int64_t>(ids_list[r], "ids", 2);
        if (r == 0) nq = ids.shape(0);
        if ((size_t)ids.shape(0) != nq) throw std::invalid_argument("all runs need the same number of rows");
        const float* s = nullptr;
        if (!scores_list[r].is_none()) {
            auto sa = checked<float>(scores_list[r], "scores", 2);
            if (sa.shape(0) != ids.shape(0) || sa.shape(1) != ids.shape(1))
                throw std::invalid_argument("scores and ids of a run differ in shape");
            s = sa.data();
            keep.push_back(sa);
        } else if (method != hn::FuseMethod::RRF) {
            throw std::invalid_argument("combsum/combmnz need scores");
        }
        const int64_t* p = ids.data();
        for (py::ssize_t i = 0; i < ids.size(); ++i)
            if (p[i] < -1) throw std::invalid_argument("ids must be >= -1");
        keep.push_back(ids);
        runs.push_back({p, s, (size_t)ids.shape(1), weights[r]});
    }
    check_out_size((py::ssize_t)nq, (py::ssize_t)depth, "depth");
    py::array_t<float> so({(py::ssize_t)nq, (py::ssize_t)depth});
    py::array_t<int64_t> io({(py::ssize_t)nq, (py::ssize_t)depth});
    float* sp = so.mutable_data();
    int64_t* ip = io.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::fuse_ids(runs.data(), nr, nq, method, norm, rrf_k, size_t(depth), sp, ip,
                     num_threads);
    }
    return py::make_tuple(so, io);
}

}  // namespace

void bind_metrics(py::module_& m) {
    m.def("metrics_eval_ids", &eval_ids, py::arg("ids"), py::arg("n_codes"), py::arg("row_query"),
          py::arg("indptr"), py::arg("codes"), py::arg("rels"), py::arg("level"), py::arg("kinds"), py::arg("ks"),
          py::arg("num_threads"));
    m.def("metrics_eval_dict", &eval_dict, py::arg("run"), py::arg("q_index"), py::arg("indptr"), py::arg("docs"), py::arg("rels"), py::arg("level"), py::arg("kinds"), py::arg("ks"),
          py::arg("num_threads"));
    m.def("metrics_map_ids", &map_ids, py::arg("corpus"), py::arg("targets"));
    m.def("fuse_ids", &fuse, py::arg("ids"), py::arg("scores"), py::arg("weights"), py::arg("method"),
          py::arg("norm"), py::arg("rrf_k"), py::arg("depth"), py::arg("num_threads"));
}
