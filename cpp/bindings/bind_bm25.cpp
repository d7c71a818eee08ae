// Bindings for bm25.cpp: text and array conversion and checks; the tokeniser,
// index builder and searches run without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/array_utils.h"
#include "bm25.h"

namespace py = pybind11;
using namespace hn_py;
using hn::bm25::Index;
using hn::bm25::TokenBatch;

namespace {

// Index plus the Python objects whose buffers it borrows (memory-mapped arrays).
struct PyIndex : Index {
    std::vector<py::object> keep;
};

// UTF-8 views of a list of str / bytes; `keep` holds temporary encodings.
std::vector<std::string_view> text_views(const py::list& texts, std::vector<py::object>& keep, const char* name) {
    std::vector<std::string_view> v;
    v.reserve(texts.size());
    size_t i = 0;
    for (const py::handle& h : texts) {
        PyObject* o = h.ptr();
        if (PyUnicode_Check(o)) {
            Py_ssize_t n = 0;
            const char* p = PyUnicode_AsUTF8AndSize(o, &n);
            if (!p) {  // lone surrogates: encode them anyway, the tokeniser treats them as separators
                PyErr_Clear();
                py::object b = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"));
                if (!b) throw py::error_already_set();
                char* bp = nullptr;
                PyBytes_AsStringAndSize(b.ptr(), &bp, &n);
                p = bp;
                keep.push_back(b);
            }
            v.emplace_back(p, size_t(n));
        } else if (PyBytes_Check(o)) {
            char* p = nullptr;
            Py_ssize_t n = 0;
            PyBytes_AsStringAndSize(o, &p, &n);
            v.emplace_back(p, size_t(n));
        } else {
            throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be str or bytes, got " +
                                 std::string(py::str(py::type::of(h).attr("__name__"))));
        }
        ++i;
    }
    return v;
}

std::string utf8_of(const py::handle& h, const std::string& what) {
    if (!PyUnicode_Check(h.ptr()))
        throw py::type_error(what + " must be str, got " + std::string(py::str(py::type::of(h).attr("__name__"))));
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
    if (!p) {
        PyErr_Clear();
        py::object b = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(h.ptr(), "utf-8", "surrogatepass"));
        if (!b) throw py::error_already_set();
        return std::string(py::bytes(b));
    }
    return std::string(p, size_t(n));
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete reinterpret_cast<std::vector<T>*>(p); });
    return py::array_t<T>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(T))}, heap->data(), owner);
}

// Read-only numpy view of an index array (the index object is the base).
template <class T>
py::array view(const hn::bm25::Array<T>& a, py::handle base) {
    py::array_t<T> r({py::ssize_t(a.size())}, {py::ssize_t(sizeof(T))}, a.data(), base);
    py::detail::array_proxy(r.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return r;
}

hn::bm25::Queries queries_of(const py::array_t<int64_t>& off, const py::array_t<int64_t>& ids) {
    if (off.ndim() != 1 || off.shape(0) < 1) throw std::invalid_argument("query offsets must be 1-D and non-empty");
    const int64_t* o = off.data();
    const size_t nq = size_t(off.shape(0) - 1);
    if (o[0] != 0 || o[nq] != ids.shape(0)) throw std::invalid_argument("query offsets do not match the term ids");
    for (size_t i = 0; i < nq; ++i)
        if (o[i + 1] < o[i]) throw std::invalid_argument("query offsets must be non-decreasing");
    return {o, ids.data(), nq};
}

// Words and term ids: the vocabulary and word cache (Vocabulary, bm25.h).
void def_vocabulary(py::class_<PyIndex>& c) {
    c
        // Words of the batch that the word cache does not know yet (for documents,
        // also the words cached as "not in the vocabulary" by earlier queries).
        .def("unknown_words",
             [](const PyIndex& ix, const TokenBatch& b, bool documents) {
                 return ix.vocab.unknown_words(b.words, documents);
             })
        // words[i] -> terms[i] (None: a stopword).  create: add new terms (documents);
        // otherwise a term outside the vocabulary is remembered as unknown (queries).
        .def("learn_words",
             [](PyIndex& ix, const py::list& words, const py::list& terms, bool create) {
                 if (words.size() != terms.size()) throw std::invalid_argument("words and terms differ in length");
                 std::vector<std::string> w;
                 std::vector<std::optional<std::string>> t;
                 for (size_t i = 0; i < words.size(); ++i) {
                     w.push_back(utf8_of(words[i], "word"));
                     if (terms[i].is_none()) t.emplace_back();
                     else t.emplace_back(utf8_of(terms[i], "stemmer output"));
                 }
                 ix.vocab.learn(w, t, create);
             })
        // Forgets the terms with id >= n: undoes the learning of a failed add.
        .def("truncate_vocabulary", [](PyIndex& ix, size_t n) {
            if (n < ix.num_terms()) throw std::invalid_argument("cannot drop terms that have postings");
            ix.vocab.truncate(n);
        })
        // (offsets, term ids) of raw texts when the word cache knows all their
        // words; otherwise the list of the words it lacks (learn them, call again).
        .def("cached_ids",
             [](const PyIndex& ix, const py::list& texts, int num_threads, const std::string& name) -> py::object {
                 std::vector<py::object> keep;
                 auto views = text_views(texts, keep, name.c_str());
                 std::vector<int64_t> off, ids;
                 std::vector<std::string> missing;
                 bool ok;
                 {
                     py::gil_scoped_release nogil;
                     ok = ix.vocab.cached_ids(views, num_threads, off, ids, missing);
                 }
                 if (!ok) return py::cast(missing);
                 return py::make_tuple(to_numpy(std::move(off)), to_numpy(std::move(ids)));
             })
        // Term ids of a tokenised batch (every word must be learnt); -1 = dropped.
        .def("batch_ids",
             [](const PyIndex& ix, const TokenBatch& b) {
                 const std::vector<int64_t> wmap = ix.vocab.word_ids(b.words);
                 std::vector<int64_t> ids(b.tokens.size());
                 std::vector<int64_t> off(b.offsets.begin(), b.offsets.end());
                 {
                     py::gil_scoped_release nogil;
                     for (size_t j = 0; j < ids.size(); ++j) ids[j] = wmap[b.tokens[j]];
                 }
                 return py::make_tuple(to_numpy(std::move(off)), to_numpy(std::move(ids)));
             })
        // Term ids of pre-tokenised texts (tokens taken verbatim); create: add new terms.
        .def("pretokenized_ids",
             [](PyIndex& ix, const py::list& docs, bool create, const std::string& name) {
                 std::vector<int64_t> off{0};
                 std::vector<std::string> tokens;
                 size_t i = 0;
                 for (const py::handle& d : docs) {
                     if (!py::isinstance<py::list>(d) && !py::isinstance<py::tuple>(d))
                         throw py::type_error(name + "[" + std::to_string(i) +
                                              "] must be a list of str tokens (all items pre-tokenised or none)");
                     for (const py::handle& t : py::reinterpret_borrow<py::sequence>(d)) {
                         if (!PyUnicode_Check(t.ptr()))
                             throw py::type_error(name + "[" + std::to_string(i) + "] holds a non-str token of type " +
                                                  std::string(py::str(py::type::of(t).attr("__name__"))));
                         std::string key = utf8_of(t, "token");
                         if (!key.empty()) tokens.push_back(std::move(key));
                     }
                     off.push_back(int64_t(tokens.size()));
                     ++i;
                 }
                 return py::make_tuple(to_numpy(std::move(off)), to_numpy(ix.vocab.token_ids(tokens, create)));
             });
}

// Adding documents, search and pair scores.
void def_search(py::class_<PyIndex>& c) {
    c
        .def("add_docs",
             [](PyIndex& ix, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& off,
                const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids, int num_threads) {
                 auto q = queries_of(off, ids);
                 std::vector<uint64_t> uoff(q.offsets, q.offsets + q.nq + 1);
                 py::gil_scoped_release nogil;
                 ix.add_docs(q.terms, uoff.data(), q.nq, num_threads);
             })
        .def("search",
             [](const PyIndex& ix, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& off,
                const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids, py::ssize_t k,
                const py::object& indptr, const py::object& indices, int num_threads) {
                 if (k <= 0) throw std::invalid_argument("k must be a positive integer, got " + std::to_string(k));
                 if (ix.num_docs() == 0) throw std::invalid_argument("the BM25 index is empty: call index() first");
                 auto q = queries_of(off, ids);
                 const int64_t* ip = nullptr;
                 const int64_t* ii = nullptr;
                 py::array_t<int64_t> a_ip, a_ii;
                 if (!indptr.is_none()) {
                     a_ip = checked<int64_t>(indptr, "exclude indptr", 1);
                     a_ii = checked<int64_t>(indices, "exclude indices", 1);
                     if (size_t(a_ip.shape(0)) != q.nq + 1) throw std::invalid_argument("exclude indptr has the wrong length");
                     ip = a_ip.data();
                     ii = a_ii.data();
                     if (ip[0] != 0 || ip[q.nq] != a_ii.shape(0)) throw std::invalid_argument("exclude indptr is inconsistent");
                     for (size_t i = 0; i < q.nq; ++i)
                         if (ip[i + 1] < ip[i]) throw std::invalid_argument("exclude indptr must be non-decreasing");
                     for (py::ssize_t j = 0; j < a_ii.shape(0); ++j)
                         if (ii[j] < 0 || size_t(ii[j]) >= ix.num_docs())
                             throw std::invalid_argument("exclude holds an id outside the corpus");
                 }
                 check_out_size(py::ssize_t(q.nq), k, "k");
                 py::array_t<float> s({py::ssize_t(q.nq), k});
                 py::array_t<int64_t> r({py::ssize_t(q.nq), k});
                 float* sp = s.mutable_data();
                 int64_t* rp = r.mutable_data();
                 {
                     py::gil_scoped_release nogil;
                     ix.search(q, size_t(k), ip, ii, num_threads, sp, rp);
                 }
                 return py::make_tuple(s, r);
             })
        .def("score",
             [](const PyIndex& ix, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& off,
                const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids,
                const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& doc_ids, int num_threads) {
                 auto q = queries_of(off, ids);
                 if (doc_ids.ndim() != 2 || size_t(doc_ids.shape(0)) != q.nq)
                     throw std::invalid_argument("doc_ids must have shape (num_queries, m)");
                 if (!is_aligned(doc_ids)) throw std::invalid_argument("doc_ids is not aligned (copy it first)");
                 const size_t mm = size_t(doc_ids.shape(1));
                 py::array_t<float> s({py::ssize_t(q.nq), py::ssize_t(mm)});
                 float* sp = s.mutable_data();
                 const int64_t* dp = doc_ids.data();
                 {
                     py::gil_scoped_release nogil;
                     ix.score(q, dp, mm, num_threads, sp);
                 }
                 return s;
             });
}

// The arrays of save() and load().
void def_storage(py::class_<PyIndex>& c) {
    c
        .def("arrays",
             [](py::object self) {
                 const PyIndex& ix = self.cast<const PyIndex&>();
                 py::dict d;
                 d["offsets"] = view(ix.offsets, self);
                 d["docs"] = view(ix.docs, self);
                 if (ix.wide())
                     d["codes"] = view(ix.codes32, self);
                 else
                     d["codes"] = view(ix.codes16, self);
                 d["code_tf"] = view(ix.code_tf, self);
                 d["code_len"] = view(ix.code_len, self);
                 d["doc_len"] = view(ix.doc_len, self);
                 return d;
             })
        // Borrows the given arrays (kept alive by the index): used by load().
        .def("set_arrays",
             [](PyIndex& ix, const py::list& terms, const py::object& offsets, const py::object& docs,
                const py::object& codes, const py::object& code_tf, const py::object& code_len,
                const py::object& doc_len, double total_len, int num_threads) {
                 auto o = checked<int64_t>(offsets, "offsets", 1);
                 auto d = checked<uint32_t>(docs, "docs", 1);
                 auto ct = checked<uint32_t>(code_tf, "code_tf", 1);
                 auto cl = checked<uint32_t>(code_len, "code_len", 1);
                 auto dl = checked<uint32_t>(doc_len, "doc_len", 1);
                 if (ct.shape(0) != cl.shape(0)) throw std::invalid_argument("code tables differ in length");
                 std::vector<std::string> vocab;
                 for (const py::handle& h : terms) vocab.push_back(utf8_of(h, "vocabulary entry"));
                 Index::Borrowed a{};
                 // codes: uint16, or uint32 once the (tf, length) table outgrew 16 bits.
                 const py::array carr = py::array::ensure(codes);
                 py::object kc;
                 if (carr && carr.dtype().is(py::dtype::of<uint32_t>())) {
                     auto c = checked<uint32_t>(codes, "codes", 1);
                     a.codes32 = c.data();
                     a.n_codes = size_t(c.shape(0));
                     kc = c;
                 } else {
                     auto c = checked<uint16_t>(codes, "codes", 1);
                     a.codes16 = c.data();
                     a.n_codes = size_t(c.shape(0));
                     kc = c;
                 }
                 a.offsets = o.data();
                 a.n_offsets = size_t(o.shape(0));
                 a.docs = d.data();
                 a.n_docs = size_t(d.shape(0));
                 a.code_tf = ct.data();
                 a.code_len = cl.data();
                 a.n_table = size_t(ct.shape(0));
                 a.doc_len = dl.data();
                 a.n_doc_len = size_t(dl.shape(0));
                 a.total_len = total_len;
                 ix.vocab.assign(vocab);
                 ix.keep = {o, d, kc, ct, cl, dl};
                 py::gil_scoped_release nogil;
                 ix.borrow(a, num_threads);
             },
             py::arg("terms"), py::arg("offsets"), py::arg("docs"), py::arg("codes"), py::arg("code_tf"),
             py::arg("code_len"),
             py::arg("doc_len"), py::arg("total_len"), py::arg("num_threads") = 1);
}

}  // namespace

void bind_bm25(py::module_& m) {
    py::class_<TokenBatch>(m, "_BM25TokenBatch")
        .def_property_readonly("num_texts", [](const TokenBatch& b) { return b.offsets.size() - 1; })
        .def_property_readonly("num_tokens", [](const TokenBatch& b) { return b.tokens.size(); })
        .def_property_readonly("words", [](const TokenBatch& b) { return b.words; });

    m.def("bm25_unicode_version", [] { return std::string(hn::bm25::unicode_version()); },
          "Unicode version of the BM25 tokeniser's frozen tables.");
    m.def(
        "bm25_tokenize_text",
        [](const py::handle& text) {
            std::vector<py::object> keep;
            py::list l;
            l.append(text);
            auto v = text_views(l, keep, "text");
            std::vector<std::string> out;
            hn::bm25::tokenize_text(v[0], out);
            return out;
        },
        "Lowercased 2+ character word tokens of one text (the BM25 tokeniser).");

    m.def(
        "bm25_tokenize",
        [](const py::list& texts, int num_threads, const std::string& name) {
            std::vector<py::object> keep;
            auto views = text_views(texts, keep, name.c_str());
            py::gil_scoped_release nogil;
            return hn::bm25::tokenize_batch(views, num_threads);
        },
        py::arg("texts"), py::arg("num_threads"), py::arg("name") = "texts");

    py::class_<PyIndex> index(m, "_BM25Index");
    index
        .def(py::init([](const std::string& method, double k1, double b, double delta) {
            auto ix = std::make_unique<PyIndex>();
            ix->params.method = hn::bm25::method_of(method);
            ix->params.k1 = k1;
            ix->params.b = b;
            ix->params.delta = delta;
            std::vector<int64_t> z{0};
            ix->offsets.set(std::move(z));
            return ix;
        }))
        .def_property_readonly("num_docs", [](const PyIndex& ix) { return ix.num_docs(); })
        .def_property_readonly("num_terms", [](const PyIndex& ix) { return ix.num_terms(); })
        .def_property_readonly("vocab_size", [](const PyIndex& ix) { return ix.vocab.size(); })
        .def_property_readonly("num_postings", [](const PyIndex& ix) { return ix.num_postings(); })
        .def_property_readonly("avg_doc_len", [](const PyIndex& ix) { return ix.avg_doc_len(); })
        .def_property_readonly("total_len", [](const PyIndex& ix) { return ix.total_len; })
        .def_property_readonly("terms", [](const PyIndex& ix) { return ix.vocab.terms(); })
        .def_property_readonly("memory_bytes", [](const PyIndex& ix) { return ix.memory_bytes(); })
        // 0 = automatic, 1 = exhaustive, 2 = block-max pruning: accepted, all the same search (bm25.h).
        .def_property(
            "strategy", [](const PyIndex& ix) { return ix.strategy(); },
            [](PyIndex& ix, int s) { ix.set_strategy(s); });
    def_vocabulary(index);
    def_search(index);
    def_storage(index);
}
