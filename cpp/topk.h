// Exact batched top-k similarity search over one or more corpus segments.
#pragma once
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>
#include "common.h"

namespace hn {

enum class Metric : int { IP = 0, Cosine = 1, L2 = 2 };

// One contiguous block of corpus rows.  Row r of the segment has global id
// id_offset + r.  sqnorms (optional) holds the squared L2 norm of each row; when
// it is null and the metric needs norms, they are computed block by block.
struct Segment {
    const void* data;
    DType dtype;
    size_t rows;
    size_t ld;  // row stride in elements (>= d)
    const float* sqnorms;
    int64_t id_offset;
};

// Per-query excluded ids in CSR form: the ids of query i are
// indices[indptr[i] .. indptr[i+1]) (any order, duplicates allowed).  Both
// pointers null: no exclusions.
struct Exclusions {
    const int64_t* indptr = nullptr;
    const int64_t* indices = nullptr;
};

namespace detail {
struct CodedCorpus;  // topk_screen.cpp
}

// The low-precision screen's coded copy of one corpus (int8 or bf16 codes and
// the per-row bound coefficients, topk_screen.cpp), owned by whoever searches
// that corpus again and again: hardneg's exact index holds one per index and
// drops it when rows are added.  topk_search builds the copy on the first
// screened search and reuses it on the next ones while the corpus layout
// (segments, metric, codes) is the one it was built for; without a cache every
// search builds a temporary copy.  Searches may share a cache from several
// threads (a search holds its own reference to the copy it reads).
class ScreenCache {
  public:
    ScreenCache();
    ~ScreenCache();
    ScreenCache(const ScreenCache&) = delete;
    ScreenCache& operator=(const ScreenCache&) = delete;
    // Bytes held by the copy (0 when none).
    size_t nbytes() const;
    // Drops the copy (e.g. the corpus changed).
    void clear();
    // The kept copy (or null) and a new one to keep (topk_screen.cpp).
    std::shared_ptr<const detail::CodedCorpus> get() const;
    void put(std::shared_ptr<const detail::CodedCorpus> codes);
    // Counts a search that could screen through this cache; returns how many there were.
    size_t note_search() { return searches_.fetch_add(1) + 1; }

  private:
    mutable std::mutex mu_;
    std::shared_ptr<const detail::CodedCorpus> codes_;
    std::atomic<size_t> searches_{0};
};

// Writes the k best (score, id) of each query to scores[i*k ..] / ids[i*k ..],
// best first: largest score for IP / Cosine, smallest squared distance for L2.
// Ties are ordered by ascending id.  Missing results are id -1 with score -inf
// (+inf for L2).  Q is nq x d (row stride ldq) of type qt.  Memory beyond the
// outputs is O(threads x (tile + panel x k)); the score matrix is never built.
// cache (optional): where the low-precision screen keeps its coded copy of these
// segments between calls (see ScreenCache); null: a temporary copy per call.
// Cosine norms are exact for any finite row: squared norms that overflow or
// underflow in fp32 are recomputed in double.
// left (optional): screen only.  The plain path is not run; the query ranges it would have
// taken are written as pairs [a0, b0, a1, b1, ...] (empty: every query is answered; {0, nq}:
// the screen did not run).  For callers that search the plain way themselves: the streamed
// search of a corpus on disk, whose coded copy lives in memory (hardneg/ooc.py).
void topk_search(const void* Q, DType qt, size_t nq, size_t ldq, size_t d,
                 const std::vector<Segment>& segments, Metric metric, size_t k,
                 const Exclusions& excl, float* scores, int64_t* ids, int num_threads,
                 ScreenCache* cache = nullptr, std::vector<size_t>* left = nullptr);

// The low-precision screen of topk_search for IP / cosine (topk_screen.cpp):
// 0 = off, 1 = auto (large enough searches on CPUs with AVX-512 VNNI or BF16,
// the default), 2 = whenever the CPU and metric allow (tests).  The initial mode
// comes from the environment variable HARDNEG_SCREEN ("0", "1", "2").  Results
// are the same in every mode.
void set_screen_mode(int mode);
int screen_mode();
// Its codes: 0 = auto (int8 with AVX-512 VNNI for small k, else bf16), 1 = bf16,
// 2 = int8 (tests; HARDNEG_SCREEN_TYPE="bf16" / "int8" sets the initial one).
// Results are the same with either.
void set_screen_type(int type);
int screen_type();
// The codes a search of dimension d for the top k of n rows would screen with now
// ("int8", "bf16"), or null when this CPU has neither.
const char* screen_choice(size_t d, size_t k, size_t n);
// Searches that took the screened path / that started it and fell back to the
// plain one / that extended a kept coded copy (an index after add()), since the
// process started.
void screen_counts(uint64_t* screened, uint64_t* fallbacks, uint64_t* extended = nullptr);
// What the last search that reached the screen's decision did (any thread; one search's
// values, published whole when it returns; for benchmarks and diagnostics): screened (0 no,
// 1 yes), auto's estimate of the fraction of query x row pairs it would rescore (negative:
// none made), the fraction the screened panels rescored (negative: nothing screened), and
// the seconds the estimate took.
struct ScreenReport {
    int screened = 0;
    double estimate = -1, rescored = -1, estimate_seconds = 0;
    bool estimate_reused = false;  // the estimate came from an earlier one-shot search of this corpus and k
};
ScreenReport screen_last();

// Merges per-part results: part p gives (nq x kp) scores/ids, best first.  Writes
// the k best over all parts with the same ordering rules (ids < 0 are padding).
void merge_topk(const std::vector<const float*>& part_scores, const std::vector<const int64_t*>& part_ids,
                const std::vector<size_t>& part_k, size_t nq, bool smallest_first, size_t k,
                float* scores, int64_t* ids, int num_threads);

}  // namespace hn
