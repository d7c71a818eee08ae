// BM25: a UTF-8 tokeniser, an inverted index and top-k search (bm25.cpp).
//
// The index is one CSR over terms: the postings of term t are
// docs[offsets[t] .. offsets[t+1]) in ascending document order, with the term
// count (tfs) and the precomputed "impact" (the TF part of the BM25 formula,
// without the IDF, minus its tf = 0 value for bm25l / bm25+).  IDFs depend on
// the corpus size and are computed per query, impacts depend on the average
// document length and are recomputed after every `add`, so all scores always
// use global statistics and equal a fresh index over all documents.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hn {
namespace bm25 {

enum class Method : int { Robertson = 0, Lucene = 1, Atire = 2, BM25L = 3, BM25Plus = 4 };

struct Params {
    Method method = Method::Lucene;
    double k1 = 1.5, b = 0.75, delta = 0.5;
};

// IDF of a term in `df` of `n` documents, and the TF part of the score for a
// term count `tf` in a document with length ratio B = 1 - b + b * L / Lavg.
double idf(const Params& p, double df, double n);
double tf_part(const Params& p, double tf, double B);
// tf_part at tf = 0: non-zero only for bm25l and bm25+ (every document gets idf * this).
double tf_part_zero(const Params& p);

// ---------------------------------------------------------------- tokeniser
// Lowercased tokens of 2+ word characters (Unicode letters, digits, '_',
// combining marks); invalid UTF-8 bytes are separators.
void tokenize_text(std::string_view text, std::vector<std::string>& out);

// A batch of tokenised texts over the batch's distinct words.
struct TokenBatch {
    std::vector<std::string> words;  // distinct words, in order of first appearance
    std::vector<uint64_t> offsets;   // texts + 1
    std::vector<uint32_t> tokens;    // index into words
};
TokenBatch tokenize_batch(const std::vector<std::string_view>& texts, int num_threads);

// Owned storage or a borrowed buffer (e.g. a memory-mapped numpy array).
template <class T>
struct Array {
    std::vector<T> own;
    const T* ext = nullptr;
    size_t ext_n = 0;
    const T* data() const { return ext ? ext : own.data(); }
    size_t size() const { return ext ? ext_n : own.size(); }
    void set(std::vector<T>&& v) {
        own = std::move(v);
        ext = nullptr;
        ext_n = 0;
    }
    void borrow(const T* p, size_t n) {
        std::vector<T>().swap(own);
        ext = p;
        ext_n = n;
    }
};

// Query batch as a CSR of term ids (repeats allowed; -1 entries are ignored).
struct Queries {
    const int64_t* offsets;  // nq + 1
    const int64_t* terms;
    size_t nq;
};

class Index {
   public:
    Params params;
    std::vector<std::string> terms;                   // vocabulary, by term id
    std::unordered_map<std::string, uint32_t> term_ids;
    // Surface word -> term id; kStop for dropped words (stopwords), kUnknown for
    // query words whose term is not in the vocabulary (forgotten on `add`).
    static constexpr int64_t kStop = -1, kUnknown = -2;
    std::unordered_map<std::string, int64_t> word_cache;

    Array<int64_t> offsets;  // terms + 1
    Array<uint32_t> docs;    // postings: document ids
    Array<uint32_t> tfs;     // postings: term counts
    Array<float> impacts;    // postings: tf part (minus its tf = 0 value)
    Array<uint32_t> doc_len; // per document, tokens after stopword removal
    double total_len = 0;
    std::vector<float> max_impact;  // per term: the largest impact (MaxScore upper bounds)

    size_t num_docs() const { return doc_len.size(); }
    size_t num_terms() const { return offsets.size() ? offsets.size() - 1 : 0; }
    size_t num_postings() const { return docs.size(); }
    double avg_doc_len() const { return num_docs() ? total_len / double(num_docs()) : 0.0; }

    // Term id of `term`, created if `create`; -1 when absent and not created.
    int64_t term_id(const std::string& term, bool create);

    // Appends documents given as term ids (tokens[offsets[i]..offsets[i+1]),
    // entries < 0 are dropped tokens).  New documents get the next ids.
    void add_docs(const int64_t* tokens, const uint64_t* offsets, size_t ndocs, int num_threads);

    // Recomputes every impact from tfs and doc lengths (after the average changed).
    void recompute_impacts(int num_threads);
    // Recomputes max_impact from the impacts (after a load).
    void compute_bounds(int num_threads);

    // Search strategy: 0 = automatic, 1 = exhaustive term-at-a-time, 2 = MaxScore
    // document at a time, 3 = term-at-a-time with MaxScore-style early termination.
    int strategy = 0;

    // Top-k per query: scores (nq, k) float32 and ids (nq, k) int64, best first,
    // ties by ascending id, padded with -inf / -1.  excl_indptr / excl_indices:
    // CSR of document ids to leave out per query (may be null).
    void search(const Queries& q, size_t k, const int64_t* excl_indptr, const int64_t* excl_indices,
                int num_threads, float* out_scores, int64_t* out_ids) const;

    // Score of given (query, document) pairs: doc_ids (nq, m), -1 -> -inf.
    void score(const Queries& q, const int64_t* doc_ids, size_t m, int num_threads, float* out) const;

    // Checks the CSR arrays for consistency (sizes, ranges); throws invalid_argument.
    void validate_structure() const;

   private:
    struct QueryTerms {
        std::vector<uint32_t> t;  // term ids, canonical order
        std::vector<float> w;     // weights
        std::vector<float> ub;    // upper bounds of the contributions
        float base = 0;
        std::vector<uint32_t> tmp, ord, t2;
        std::vector<float> w2, u2;
    };
    void query_terms(const Queries& q, size_t i, QueryTerms& out) const;
};

}  // namespace bm25
}  // namespace hn
