// Retrieval metrics with trec_eval semantics (ndcg_cut, recip_rank, recall, P,
// map, map_cut, Rprec, success) and rank fusion over top-k id arrays.
//
// Every metric of a query is a function of (a) the ranks of the *judged*
// documents the run retrieved and (b) the query's judgements.  So both input
// forms are reduced to a short list of JudgedHit {rank, relevance} per query
// and scored by the same score_query():
//   * arrays (ids (Q, k) of corpus row numbers, column order = ranking): the
//     row is scanned once, -1 and repeated ids skipped (evaluate_ids below);
//   * run dicts ({qid: {docid: score}}): the binding reads each query's scores
//     and its judged documents, trec_ranks() gives the trec_eval rank of each
//     judged document (score as float32 descending, ties by docno in descending
//     byte order), and evaluate_hits scores them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace hn {

enum class MetricKind : int32_t {
    NDCG = 0,       // ndcg_cut_k (k <= 0: trec_eval "ndcg", whole run)
    RecipRank = 1,  // recip_rank (k <= 0) or MRR@k (run cut at k)
    Recall = 2,     // recall_k
    Precision = 3,  // P_k (k > 0)
    AP = 4,         // map (k <= 0) or map_cut_k
    RPrec = 5,      // Rprec
    Hits = 6,       // success_k: 1 if a relevant document is in the top k
    HitCount = 7,   // ranx hits@k: the number of relevant documents in the top k
};

struct MetricSpec {
    MetricKind kind;
    int64_t k;  // cutoff; <= 0 means none
};

// A judged document found in a ranking: 1-based rank and its judgement.
struct JudgedHit {
    int64_t rank;
    int32_t rel;
};

// A judged document that a run dict holds for the query: its score (rounded to
// float32, as trec_eval keeps it), its judgement and its docno (UTF-8 bytes).
struct FoundDoc {
    float score;
    int32_t rel;
    std::string_view docno;
};

// trec_eval's docno tie-break: a ranks before b on equal scores iff strcmp(a, b) > 0.
bool docno_greater(std::string_view a, std::string_view b);

// trec_eval ranks of the judged documents `found` of one query whose run holds
// the n scores `scores` (every entry, found ones included, any order): the rank
// of found[p] is 1 + the entries with a higher score + the entries with an equal
// score and a greater docno.  Sorts `found` into rank order and appends one
// JudgedHit per found document to `out`.  docno_at(j) gives entry j's docno; it
// is called only when some entry other than the found documents ties a found
// score (rare), and may throw.
void trec_ranks(std::vector<FoundDoc>& found, const float* scores, size_t n,
                const std::function<std::string_view(size_t)>& docno_at, std::vector<JudgedHit>& out);

// Judgements of the qrels queries as CSR: query t owns entries
// [indptr[t], indptr[t+1]).  For evaluate_ids the entries of a query are sorted
// by code (corpus row number, -1 for a document absent from the corpus).
struct QrelsCSR {
    const int64_t* indptr = nullptr;
    const int64_t* codes = nullptr;  // only used by evaluate_ids
    const int32_t* rels = nullptr;
    int64_t num_queries = 0;
};

// Scores one query.  hits sorted by rank ascending; rels: all judgements of the
// query (any order).  out[m] for each spec.  Exposed for testing and reuse.
void score_query(const JudgedHit* hits, size_t n_hits, const int32_t* rels, size_t n_rels,
                 int32_t level, const MetricSpec* specs, size_t n_specs, double* out);

// Array form.  ids: (nq, k) rows with stride ld, values in [-1, n_codes).
// row_query[i]: qrels query of row i, or -1 (row not evaluated: NaN).
// out: (n_specs, nq), metric-major.  Throws std::invalid_argument on an id out
// of range.
void evaluate_ids(const int64_t* ids, size_t nq, size_t k, size_t ld, int64_t n_codes,
                  const int64_t* row_query, const QrelsCSR& qrels, int32_t level,
                  const MetricSpec* specs, size_t n_specs, double* out, int num_threads);

// Precomputed hits.  Query i owns hits [hit_indptr[i], hit_indptr[i+1]) (sorted
// by rank); row_query as above.  out: (n_specs, nq).
void evaluate_hits(size_t nq, const int64_t* hit_indptr, const JudgedHit* hits,
                   const int64_t* row_query, const QrelsCSR& qrels, int32_t level,
                   const MetricSpec* specs, size_t n_specs, double* out, int num_threads);

// ---- rank fusion over id arrays -------------------------------------------
enum class FuseMethod : int32_t { RRF = 0, CombSUM = 1, CombMNZ = 2 };
enum class FuseNorm : int32_t { None = 0, MinMax = 1, ZScore = 2 };

// runs: n_runs arrays of ids (nq, k_r) (and scores (nq, k_r) unless RRF), rows
// best first, -1 padding skipped, repeated ids after the first skipped.
// Output (nq, depth): fused scores descending, ties by ascending id, padded
// with id -1 / score -inf.  weights: one per run.
struct FuseRun {
    const int64_t* ids;
    const float* scores;  // may be null for RRF
    size_t k;
    double weight;
};
void fuse_ids(const FuseRun* runs, size_t n_runs, size_t nq, FuseMethod method, FuseNorm norm,
              double rrf_k, size_t depth, float* out_scores, int64_t* out_ids, int num_threads);

}  // namespace hn
