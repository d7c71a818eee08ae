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

std::vector<hn::MetricSpec> make_specs(const std::vector<int>& kinds, const std::vector<int64_t>& ks) {
    if (kinds.size() != ks.size()) throw std::invalid_argument("kinds and ks differ in length");
    std::vector<hn::MetricSpec> s;
    for (size_t i = 0; i < kinds.size(); ++i) {
        if (kinds[i] < 0 || kinds[i] > 6) throw std::invalid_argument("unknown metric kind");
        if (kinds[i] == int(hn::MetricKind::Precision) && ks[i] <= 0)
            throw std::invalid_argument("P@k needs k > 0");
        s.push_back({hn::MetricKind(kinds[i]), ks[i]});
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
                             int32_t level, const std::vector<int>& kinds, const std::vector<int64_t>& ks,
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
    if (std::isnan(d))
        throw std::invalid_argument("run score is NaN for query " + std::string(py::repr(qid)) + ", document " +
                                    std::string(py::repr(doc)));
    return d;
}

inline std::pair<const char*, Py_ssize_t> utf8(PyObject* s) {
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p) throw_py();
    return {p, n};
}

// trec_eval: docno a ranks before b on equal float scores iff strcmp(a, b) > 0
inline bool docno_greater(PyObject* a, PyObject* b) {
    auto x = utf8(a), y = utf8(b);
    const int c = std::memcmp(x.first, y.first, size_t(std::min(x.second, y.second)));
    return c != 0 ? c > 0 : x.second > y.second;
}

// Returns (out (n_specs, n_run) float64, judged-hit count) for the run's queries in
// its iteration order.  q_index: {qid: qrels query}; the qrels entries of each
// query are sorted by q_hash (Python str hashes of q_docs).
py::array_t<double> eval_dict(const py::object& run_o, const py::object& q_index_o, const py::object& indptr,
                              const py::object& hashes_o, const py::object& docs_o, const py::object& rels,
                              int32_t level, const std::vector<int>& kinds, const std::vector<int64_t>& ks,
                              int num_threads) {
    auto specs = make_specs(kinds, ks);
    if (!PyDict_Check(run_o.ptr())) throw py::type_error("run must be a dict {query_id: {doc_id: score}}");
    if (!PyDict_Check(q_index_o.ptr())) throw std::invalid_argument("q_index must be a dict");
    if (!PyList_Check(docs_o.ptr())) throw std::invalid_argument("qrels docs must be a list");
    QrelsArrays q = qrels_arrays(indptr, py::none(), rels);
    auto hashes = checked<int64_t>(hashes_o, "qrels hashes", 1);
    PyObject* docs = docs_o.ptr();
    if (hashes.shape(0) != q.rels.shape(0) || PyList_GET_SIZE(docs) != q.rels.shape(0))
        throw std::invalid_argument("qrels arrays differ in length");
    const int64_t* qh = hashes.data();
    const int64_t* qp = q.csr.indptr;
    const int32_t* qr = q.csr.rels;

    PyObject* run = run_o.ptr();
    PyObject* q_index = q_index_o.ptr();
    const size_t n_run = size_t(PyDict_Size(run));
    std::vector<int64_t> row_query(n_run, -1), hit_indptr(n_run + 1, 0);
    std::vector<hn::JudgedHit> hits;
    std::vector<float> sc;
    std::vector<PyObject*> keys;
    struct Found {
        size_t pos;
        int32_t rel;
        int64_t rank;
    };
    std::vector<Found> found;
    std::vector<size_t> order;

    Py_ssize_t it = 0;
    PyObject *qid, *inner;
    size_t qi = 0;
    while (PyDict_Next(run, &it, &qid, &inner)) {
        if (qi >= n_run) throw std::invalid_argument("run changed size during evaluation");
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
            const int64_t b = qp[t], e = qp[t + 1];
            sc.clear();
            keys.clear();
            found.clear();
            Py_ssize_t j = 0;
            PyObject *doc, *val;
            while (PyDict_Next(inner, &j, &doc, &val)) {
                if (!PyUnicode_Check(doc))
                    throw py::type_error("run document ids must be str, got " + std::string(py::repr(doc)) +
                                         " for query " + std::string(py::repr(qid)));
                const float s = float(score_of(val, qid, doc));  // trec_eval keeps scores as float
                const size_t pos = sc.size();
                sc.push_back(s);
                keys.push_back(doc);
                const Py_hash_t h = PyObject_Hash(doc);  // cached in the str object
                if (h == -1 && PyErr_Occurred()) throw_py();
                const int64_t* lo = std::lower_bound(qh + b, qh + e, int64_t(h));
                for (; lo != qh + e && *lo == int64_t(h); ++lo) {
                    PyObject* d = PyList_GET_ITEM(docs, lo - qh);
                    int eq = d == doc;
                    if (!eq) {
                        eq = PyUnicode_Compare(d, doc) == 0;
                        if (PyErr_Occurred()) throw_py();
                    }
                    if (eq) {
                        const int32_t rel = qr[lo - qh];
                        if (rel > 0 || rel >= level) found.push_back({pos, rel, 0});
                        break;
                    }
                }
            }
            // trec_eval rank of each judged document: 1 + the documents ordered before
            // it (higher float score, or equal score and greater docno).
            const size_t n = sc.size();
            if (found.size() <= 16) {
                for (auto& f : found) {
                    const float s = sc[f.pos];
                    int64_t r = 1;
                    bool ties = false;
                    for (size_t i = 0; i < n; ++i) {
                        r += sc[i] > s;
                        ties |= (sc[i] == s) & (i != f.pos);
                    }
                    if (ties)
                        for (size_t i = 0; i < n; ++i)
                            if (sc[i] == s && i != f.pos && docno_greater(keys[i], keys[f.pos])) ++r;
                    f.rank = r;
                }
            } else {
                order.resize(n);
                for (size_t i = 0; i < n; ++i) order[i] = i;
                std::sort(order.begin(), order.end(), [&](size_t a, size_t c) {
                    if (sc[a] != sc[c]) return sc[a] > sc[c];
                    return docno_greater(keys[a], keys[c]);
                });
                std::vector<int64_t> rank_of(n);
                for (size_t i = 0; i < n; ++i) rank_of[order[i]] = int64_t(i + 1);
                for (auto& f : found) f.rank = rank_of[f.pos];
            }
            std::sort(found.begin(), found.end(), [](const Found& a, const Found& c) { return a.rank < c.rank; });
            for (auto& f : found) hits.push_back({f.rank, f.rel});
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
               int method, int norm, double rrf_k, int64_t depth, int num_threads) {
    const size_t nr = ids_list.size();
    if (nr == 0) throw std::invalid_argument("runs must not be empty");
    if (scores_list.size() != nr || weights.size() != nr) throw std::invalid_argument("runs lists differ in length");
    if (method < 0 || method > 2 || norm < 0 || norm > 2) throw std::invalid_argument("bad fusion method");
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
        } else if (method != 0) {
            throw std::invalid_argument("combsum/combmnz need scores");
        }
        const int64_t* p = ids.data();
        for (py::ssize_t i = 0; i < ids.size(); ++i)
            if (p[i] < -1) throw std::invalid_argument("ids must be >= -1");
        keep.push_back(ids);
        runs.push_back({p, s, (size_t)ids.shape(1), weights[r]});
    }
    py::array_t<float> so({(py::ssize_t)nq, (py::ssize_t)depth});
    py::array_t<int64_t> io({(py::ssize_t)nq, (py::ssize_t)depth});
    float* sp = so.mutable_data();
    int64_t* ip = io.mutable_data();
    {
        py::gil_scoped_release nogil;
        hn::fuse_ids(runs.data(), nr, nq, hn::FuseMethod(method), hn::FuseNorm(norm), rrf_k, size_t(depth), sp, ip,
                     num_threads);
    }
    return py::make_tuple(so, io);
}

}  // namespace

void bind_metrics(py::module_& m) {
    m.def("metrics_eval_ids", &eval_ids, py::arg("ids"), py::arg("n_codes"), py::arg("row_query"),
          py::arg("indptr"), py::arg("codes"), py::arg("rels"), py::arg("level"), py::arg("kinds"), py::arg("ks"),
          py::arg("num_threads"));
    m.def("metrics_eval_dict", &eval_dict, py::arg("run"), py::arg("q_index"), py::arg("indptr"),
          py::arg("hashes"), py::arg("docs"), py::arg("rels"), py::arg("level"), py::arg("kinds"), py::arg("ks"),
          py::arg("num_threads"));
    m.def("metrics_map_ids", &map_ids, py::arg("corpus"), py::arg("targets"));
    m.def("fuse_ids", &fuse, py::arg("ids"), py::arg("scores"), py::arg("weights"), py::arg("method"),
          py::arg("norm"), py::arg("rrf_k"), py::arg("depth"), py::arg("num_threads"));
}
