// BM25: a UTF-8 tokeniser, an inverted index and top-k search (bm25.cpp,
// bm25_search.cpp).
//
// The index is one CSR over terms: the postings of term t are
// docs[offsets[t] .. offsets[t+1]) in ascending document order.  Each posting
// also has a code: an index into a table of the distinct (term count, document
// length) pairs of the corpus, and a table of their "impacts" (the TF part of
// the BM25 formula without the IDF, minus its tf = 0 value for bm25l / bm25+).
// Natural text has a few thousand such pairs, so a posting costs 4 + 2 bytes
// (4 + 4 once there are more than 65,536 pairs) and recomputing the impacts
// after `add` (the average length changed) only recomputes the table.  IDFs are
// computed per query, so all scores use global statistics and equal a fresh
// index over all documents.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hn {
namespace bm25 {

enum class Method : int { Robertson = 0, Lucene = 1, Atire = 2, BM25L = 3, BM25Plus = 4 };
// The method of its name ("robertson", "lucene", "atire", "bm25l", "bm25+"); throws invalid_argument.
Method method_of(const std::string& name);

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
// The Unicode version of the tokeniser's frozen tables (cpp/unicode_tables.h).
const char* unicode_version();
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

// Word -> int64 value, by open addressing over an arena of the words (looked
// up straight from the tokeniser's buffer).  The index's word cache maps a
// surface word to its term id, or Vocabulary::kStop / kUnknown; the tokeniser's batch
// vocabularies map a word to its index, in order of first appearance (word(i)).
// Concurrent lookups are safe; writes need exclusive access.
class WordCache {
   public:
    static constexpr int64_t kAbsent = INT64_MIN;
    int64_t find(std::string_view w) const;  // kAbsent when not cached
    // The value cached for w, after caching `value` for it if it was absent.
    int64_t find_or_add(std::string_view w, int64_t value);
    void set(std::string_view w, int64_t value);
    void forget(int64_t value);  // entries holding `value` are dropped
    void clear();
    size_t size() const { return hashes_.size(); }
    int64_t value(size_t i) const { return values_[i]; }
    std::string_view word(size_t i) const { return {arena_.data() + starts_[i], size_t(starts_[i + 1] - starts_[i])}; }

   private:
    size_t slot_of(std::string_view w, uint64_t h) const;
    std::vector<char> arena_;
    std::vector<uint64_t> starts_{0};
    std::vector<uint64_t> hashes_;
    std::vector<int64_t> values_;
    std::vector<uint64_t> slots_ = std::vector<uint64_t>(1024, 0);  // hash tag | entry + 1, 0 = empty
};

// The vocabulary (term <-> term id) and the word cache (surface word -> term id,
// kStop for a dropped word, kUnknown for a query word whose term is not in the
// vocabulary), with the lock that guards both: lookups share it, learning takes
// it exclusively, so tokenising queries in one thread while another thread adds
// documents never reads a half-grown table.  Term ids are dense: 0 .. size().
class Vocabulary {
   public:
    static constexpr int64_t kStop = -1, kUnknown = -2;
    size_t size() const;
    std::vector<std::string> terms() const;  // a copy, by term id

    // The words of a batch that the cache does not know yet (for documents, also
    // the words cached as unknown by earlier queries).
    std::vector<std::string> unknown_words(const std::vector<std::string>& words, bool documents) const;
    // Caches words[i] -> term of terms[i] (nullopt: a stopword).  create: terms
    // not in the vocabulary get the next ids (documents); otherwise they are
    // cached as unknown (queries).
    void learn(const std::vector<std::string>& words, const std::vector<std::optional<std::string>>& terms,
               bool create);
    // Term ids (CSR offsets and ids, -1 for dropped or unknown words) of texts
    // whose words are all cached; false and the distinct missing words otherwise.
    bool cached_ids(const std::vector<std::string_view>& texts, int num_threads, std::vector<int64_t>& offsets,
                    std::vector<int64_t>& ids, std::vector<std::string>& missing) const;
    // Term id of each word of a batch (every word must be cached), -1 = dropped or unknown.
    std::vector<int64_t> word_ids(const std::vector<std::string>& words) const;
    // Term ids of verbatim tokens; create: new terms get the next ids, else -1 for unknown ones.
    std::vector<int64_t> token_ids(const std::vector<std::string>& tokens, bool create);
    // Forgets every term with id >= n (and the cached words pointing at them): undoes a failed add.
    void truncate(size_t n);
    // Replaces the vocabulary by `terms` (term i gets id i) and empties the cache; throws on a duplicate.
    void assign(const std::vector<std::string>& terms);

   private:
    int64_t term_id(const std::string& term, bool create);  // caller holds the lock
    mutable std::shared_mutex mu_;
    std::vector<std::string> terms_;
    std::unordered_map<std::string, uint32_t> ids_;
    WordCache cache_;
};

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

// The index.  search() and score() share the index lock, add_docs() and
// borrow() take it exclusively: a search running in one thread never sees the
// arrays that an add in another thread is replacing.
class Index {
   public:
    Params params;
    Vocabulary vocab;

    Array<int64_t> offsets;    // terms + 1
    Array<uint32_t> docs;      // postings: document ids
    Array<uint16_t> codes16;   // postings: code (while the table has <= 65,536 entries) ...
    Array<uint32_t> codes32;   // ... or this one (exactly one of the two is in use)
    Array<uint32_t> code_tf;   // per code: term count
    Array<uint32_t> code_len;  // per code: document length
    Array<uint32_t> doc_len;   // per document, tokens after stopword removal
    double total_len = 0;
    std::vector<float> code_imp;    // per code: impact (derived from the two above)
    std::vector<float> max_impact;  // per term: the largest impact (upper bounds)
    bool wide() const { return codes32.size() > 0; }
    size_t num_codes() const { return code_tf.size(); }

    // Calls f(imp) with imp[j] = impact of posting j (a lookup through its code).
    template <class C>
    struct Impacts {
        const C* code;
        const float* table;
        float operator[](size_t j) const { return table[code[j]]; }
    };
    template <class F>
    void with_impacts(F&& f) const {
        if (wide())
            f(Impacts<uint32_t>{codes32.data(), code_imp.data()});
        else
            f(Impacts<uint16_t>{codes16.data(), code_imp.data()});
    }

    // Block metadata (derived, rebuilt by compute_bounds).  Documents form blocks
    // of kBlock consecutive ids.  A "long" term (one with postings in a good share
    // of the blocks) stores where its postings start in every range of
    // kRangeBlocks blocks (blk_start, relative to offsets[t]; NR + 1 entries, NR =
    // the number of ranges), so the search adds it one accumulator range at a
    // time.  Short terms have none: they are cheap to scan.
    static constexpr size_t kBlockShift = 4, kBlock = size_t(1) << kBlockShift;
    static constexpr size_t kRangeBlocks = 8192 / kBlock;  // 8,192 documents: 32 KiB of accumulator
    static constexpr int64_t kLongMinDf = 256;
    std::vector<int32_t> long_id;      // per term: index among the long terms, or -1
    std::vector<uint32_t> long_terms;  // term id of each long term
    std::vector<uint32_t> blk_start;   // long terms x (NR + 1)
    size_t num_ranges() const { return (num_blocks() + kRangeBlocks - 1) / kRangeBlocks; }
    // Very common terms (in more than a quarter of the documents) also get a dense
    // array of their impacts over all documents (0: absent): adding one is then a
    // vector loop without scatter (simd axpy), several times cheaper than its
    // postings.  Derived, rebuilt with the bounds.
    static constexpr double kDenseBudget = 0.20;
    std::vector<int32_t> dense_id;  // per term: index among the dense terms, or -1
    std::vector<float> dense_imp;   // dense terms x (NB * kBlock)
    size_t num_blocks() const { return (num_docs() + kBlock - 1) / kBlock; }
    // Bytes held in RAM by the index (postings, per-document and derived arrays).
    size_t memory_bytes() const;

    size_t num_docs() const { return doc_len.size(); }
    size_t num_terms() const { return offsets.size() ? offsets.size() - 1 : 0; }
    size_t num_postings() const { return docs.size(); }
    // Code of each posting (width-independent, for add / save).
    uint32_t code_at(size_t j) const { return wide() ? codes32.data()[j] : codes16.data()[j]; }
    double avg_doc_len() const { return num_docs() ? total_len / double(num_docs()) : 0.0; }

    // Appends documents given as term ids (tokens[offsets[i]..offsets[i+1]),
    // entries < 0 are dropped tokens; ids below vocab.size()).  New documents get
    // the next ids.  All or nothing: on an exception the index is unchanged.
    void add_docs(const int64_t* tokens, const uint64_t* offsets, size_t ndocs, int num_threads);

    // Arrays of a saved index, borrowed (e.g. memory-mapped numpy arrays kept
    // alive by the caller); checked, then the impacts and bounds are derived.
    struct Borrowed {
        const int64_t* offsets; size_t n_offsets;
        const uint32_t* docs; size_t n_docs;
        const uint16_t* codes16; const uint32_t* codes32; size_t n_codes;  // one of the two is null
        const uint32_t* code_tf; const uint32_t* code_len; size_t n_table;
        const uint32_t* doc_len; size_t n_doc_len;
        double total_len;
    };
    void borrow(const Borrowed& a, int num_threads);

    // Search strategy: 0 = automatic, 1 = exhaustive, 2 = block-max pruning.  All
    // three now run the exhaustive search: block-max pruning was exact but about
    // 3x slower on every corpus measured (docs/bm25.md) and was removed; the
    // setting is still accepted.
    int strategy() const { return strategy_; }
    void set_strategy(int s);

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
    mutable std::shared_mutex mu_;
    int strategy_ = 0;
    template <class Imp>
    struct Searcher;  // one query's top-k search (bm25_search.cpp)
    void add_docs_locked(const int64_t* tokens, const uint64_t* offsets, size_t ndocs, int num_threads);
    // The impact of each (tf, length) pair of the table at average length lavg;
    // throws invalid_argument on a non-finite one.
    std::vector<float> impact_table(const uint32_t* tf, const uint32_t* len, size_t n, double lavg) const;
    // Recomputes the impact table (after the average length changed), then the bounds.
    void recompute_impacts(int num_threads);
    // Recomputes max_impact and the block metadata from the impacts (after a load
    // or an add); also checks the postings (ascending ids inside the corpus).
    void compute_bounds(int num_threads);
    void build_blocks(int num_threads);
    // The distinct query terms in the canonical order in which every path adds
    // their contributions (so all scores are bit-identical): short terms first,
    // then long terms, each by upper bound descending, then term id.
    struct QueryTerms {
        std::vector<uint32_t> t;  // term ids
        std::vector<float> w;     // weights: count * idf
        std::vector<float> ub;    // upper bounds of the contributions: w * max_impact
        size_t n_short = 0;       // t[0 .. n_short) are short terms
        float base = 0;           // bm25l / bm25+: what every document gets (idf * tf_part(0))
        std::vector<uint32_t> tmp, ord, dt;  // scratch, reused from query to query
        std::vector<float> dw, dub;
    };
    void query_terms(const Queries& q, size_t i, QueryTerms& out) const;
};

}  // namespace bm25
}  // namespace hn
