// BM25 top-k search and pair scoring over the index of bm25.h.
//
// Two paths, exact and bit-identical to each other and to score():
//
// * exhaustive (the default): term at a time into a dense per-thread
//   accumulator, short terms first, then the long terms one range of 8,192
//   documents at a time; a lower bound of the k-th score from block maxima and
//   one filter pass pick the candidates.  On large corpora the dense (very
//   common) terms wait and are added only for documents that can still reach
//   the top k (MaxScore-style);
// * block-max pruning (strategy 2, opt-in): documents form blocks of 16 ids and
//   every long term stores, per block, a byte upper bound of its impacts there
//   (bm25.h).  Short terms (high IDF, short lists) are added in full first.
//   Each block then has an upper bound: its best short-term partial score plus
//   the long terms' block bounds.  A few blocks with the highest bounds are
//   scored exactly, which gives theta, a lower bound of the k-th best score;
//   every block whose upper bound is below theta cannot hold a top-k document
//   and its postings are never read.  The long terms are then added over the
//   surviving ("live") blocks only.
//
// Every contribution w * impact is >= 0, so partial scores are lower bounds of
// final scores and an accumulator of 0 means "not matched".  Contributions are
// always added in the canonical term order of query_terms(), so a document's
// score is the same float whatever path computed it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "bm25.h"
#include "simd/kernels.h"
#include "threads.h"

namespace hn {
namespace bm25 {

void Index::query_terms(const Queries& q, size_t i, QueryTerms& out) const {
    out.t.clear();
    out.w.clear();
    out.ub.clear();
    out.base = 0;
    out.n_short = 0;
    const double N = double(num_docs());
    const int64_t* o = offsets.data();
    const double z = tf_part_zero(params);
    const size_t V = num_terms();
    auto& tmp = out.tmp;
    tmp.clear();
    for (int64_t j = q.offsets[i]; j < q.offsets[i + 1]; ++j) {
        const int64_t t = q.terms[j];
        if (t < 0 || size_t(t) >= V || o[t + 1] == o[t]) continue;
        if (z != 0) out.base += float(idf(params, double(o[t + 1] - o[t]), N) * z);
        tmp.push_back(uint32_t(t));
    }
    std::sort(tmp.begin(), tmp.end());
    // Distinct terms; a repeated query term counts repeatedly (weight = count * idf).
    auto& t = out.dt;
    auto& w = out.dw;
    auto& ub = out.dub;
    t.clear();
    w.clear();
    ub.clear();
    for (size_t j = 0; j < tmp.size();) {
        size_t r = j + 1;
        while (r < tmp.size() && tmp[r] == tmp[j]) ++r;
        const uint32_t term = tmp[j];
        const float wt = float(double(r - j) * idf(params, double(o[term + 1] - o[term]), N));
        if (wt > 0) {  // robertson / atire IDF of 0 adds nothing
            t.push_back(term);
            w.push_back(wt);
            ub.push_back(wt * max_impact[term]);
        }
        j = r;
    }
    auto& ord = out.ord;
    ord.resize(t.size());
    for (size_t a = 0; a < ord.size(); ++a) ord[a] = uint32_t(a);
    auto is_long = [&](uint32_t a) { return long_id[t[a]] >= 0; };
    std::sort(ord.begin(), ord.end(), [&](uint32_t x, uint32_t y) {
        if (is_long(x) != is_long(y)) return !is_long(x);
        return ub[x] > ub[y] || (ub[x] == ub[y] && t[x] < t[y]);
    });
    for (uint32_t a : ord) {
        out.t.push_back(t[a]);
        out.w.push_back(w[a]);
        out.ub.push_back(ub[a]);
        if (!is_long(a)) ++out.n_short;
    }
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A hit packed into one word that sorts like the output: score bits (a positive
// float orders like its bits) above the complemented id, so "larger key" means
// higher score, then lower id.
inline uint64_t pack(float s, uint32_t id) {
    uint32_t b;
    std::memcpy(&b, &s, 4);
    return (uint64_t(b) << 32) | uint64_t(~id);
}
inline float key_score(uint64_t key) {
    const uint32_t b = uint32_t(key >> 32);
    float s;
    std::memcpy(&s, &b, 4);
    return s;
}
inline uint32_t key_id(uint64_t key) { return ~uint32_t(key); }

// Sorts keys descending: a stable LSD radix sort on the bytes that differ
// (scores of one query share their top bits, ids their top bits).  With
// `scores_only` only the score half of the keys is sorted: the caller's keys
// are in ascending id order, which the stable sort keeps for equal scores.
void sort_desc(std::vector<uint64_t>& a, std::vector<uint64_t>& tmp, bool scores_only) {
    const size_t n = a.size();
    if (n < 32) {
        std::sort(a.begin(), a.end(), std::greater<uint64_t>());
        return;
    }
    if (n <= 192 && kernels().sort_desc_small) {  // keys are distinct (one per document)
        tmp.resize(n);
        kernels().sort_desc_small(a.data(), n, tmp.data());
        a.swap(tmp);
        return;
    }
    uint64_t all_or = 0, all_and = ~uint64_t(0);
    for (uint64_t x : a) {
        all_or |= x;
        all_and &= x;
    }
    uint64_t varying = all_or ^ all_and;
    if (scores_only) varying &= ~uint64_t(0) << 32;
    tmp.resize(n);
    uint64_t* src = a.data();
    uint64_t* dst = tmp.data();
    uint32_t cnt[256];
    for (int shift = 0; shift < 64; shift += 8) {
        if (((varying >> shift) & 0xFF) == 0) continue;
        std::memset(cnt, 0, sizeof(cnt));
        for (size_t i = 0; i < n; ++i) ++cnt[255 - ((src[i] >> shift) & 0xFF)];  // descending
        uint32_t sum = 0;
        for (uint32_t& c : cnt) {
            const uint32_t x = c;
            c = sum;
            sum += x;
        }
        for (size_t i = 0; i < n; ++i) dst[cnt[255 - ((src[i] >> shift) & 0xFF)]++] = src[i];
        std::swap(src, dst);
    }
    if (src != a.data()) std::memcpy(a.data(), src, n * sizeof(uint64_t));
}

// The k-th largest of m unsigned values (1 <= k <= m): a radix select on the
// bytes, most significant first, skipping bytes all remaining values share;
// after each byte only the values in the chosen bucket are kept (in `buf`), so
// the passes after the first are short.  Two interleaved histograms halve the
// store-to-load chains when many values fall into one bucket.
uint32_t kth_largest(const uint32_t* v, size_t m, size_t k, std::vector<uint32_t>& buf) {
    const uint32_t* cur = v;
    uint32_t prefix = 0;
    int shift = 24;
    for (;;) {
        uint32_t all_or = 0, all_and = ~0u;
        for (size_t i = 0; i < m; ++i) {
            all_or |= cur[i];
            all_and &= cur[i];
        }
        const uint32_t varying = all_or ^ all_and;
        if (m == 1 || varying == 0) return cur[0];  // k == 1 or all equal: any value is the answer
        while (((varying >> shift) & 255) == 0) shift -= 8;
        uint32_t c0[256], c1[256];
        std::memset(c0, 0, sizeof(c0));
        std::memset(c1, 0, sizeof(c1));
        size_t i = 0;
        for (; i + 2 <= m; i += 2) {
            ++c0[(cur[i] >> shift) & 255];
            ++c1[(cur[i + 1] >> shift) & 255];
        }
        if (i < m) ++c0[(cur[i] >> shift) & 255];
        uint32_t b = ((all_or >> shift) & 255) + 1;  // no value's byte exceeds the OR of them all
        size_t c = 0;
        while (b-- > 0) {
            c = size_t(c0[b]) + c1[b];
            if (c >= k) break;
            k -= c;
        }
        const uint32_t above = shift == 24 ? 0u : ~0u << (shift + 8);  // bytes above: shared
        prefix = (all_and & above) | (b << shift);
        if (shift == 0) return prefix;
        // Keep the values of bucket b (in place once cur is buf: writes trail reads;
        // the branch-free copy writes one slot past the last kept value).
        if (cur != buf.data() && buf.size() < c + 1) buf.resize(c + 1);
        uint32_t* out = buf.data();
        size_t n = 0;
        for (size_t j = 0; j < m; ++j) {
            out[n] = cur[j];
            n += ((cur[j] >> shift) & 255) == b;
        }
        cur = out;
        m = n;
        shift -= 8;
    }
}

// Cuts `cand` back to its k largest keys; `id_order`: the keys are in ascending
// id order, which is kept (the lowest ids win ties at the cut).  Returns the
// score bits of the k-th largest key (0 when there were at most k).
uint32_t select_best(std::vector<uint64_t>& cand, size_t k, std::vector<uint64_t>& tmp, std::vector<uint32_t>& hi,
                 std::vector<uint32_t>& sel, bool id_order) {
    uint32_t th = 0;
    if (cand.size() > k) {
        // The k-th largest score, then every key above it and the best of those tying it.
        const size_t n = cand.size();
        hi.resize(n);
        for (size_t i = 0; i < n; ++i) hi[i] = uint32_t(cand[i] >> 32);
        th = kth_largest(hi.data(), n, k, sel);
        size_t above = 0;
        for (size_t i = 0; i < n; ++i) above += hi[i] > th;
        size_t need = k - above, m = 0;
        if (id_order) {
            // One stable pass: the first `need` ties met are those with the lowest ids.
            for (size_t i = 0; i < n; ++i) {
                const bool tie = hi[i] == th && need > 0;
                need -= tie;
                cand[m] = cand[i];
                m += hi[i] > th || tie;
            }
        } else {
            tmp.clear();
            for (size_t i = 0; i < n; ++i) {
                if (hi[i] > th)
                    cand[m++] = cand[i];
                else if (hi[i] == th)
                    tmp.push_back(cand[i]);
            }
            if (tmp.size() > need)
                std::nth_element(tmp.begin(), tmp.begin() + (need - 1), tmp.end(), std::greater<uint64_t>());
            for (size_t i = 0; i < need; ++i) cand[m++] = tmp[i];
        }
        cand.resize(k);
    }
    return th;
}

// Keeps the k largest keys of `cand`, sorted descending (ties by ascending id).
void keep_best(std::vector<uint64_t>& cand, size_t k, std::vector<uint64_t>& tmp, std::vector<uint32_t>& hi,
               std::vector<uint32_t>& sel, bool id_order) {
    if (id_order && cand.size() > k && cand.size() <= k + k / 2 + 32) {
        // Few more than k: sorting them all is cheaper than selecting first.
        sort_desc(cand, tmp, true);
        cand.resize(k);
        return;
    }
    select_best(cand, k, tmp, hi, sel, id_order);
    sort_desc(cand, tmp, id_order);
}

// The k best hits of a stream: a buffer of keys above a threshold that rises as
// the buffer is cut back to the k best (amortised O(1) per accepted hit).
// Scores are base + x for accumulator values x > 0.
struct Collector {
    std::vector<uint64_t>* buf;
    std::vector<uint32_t> hi, sel;
    std::vector<uint64_t> tmp;
    size_t k;
    float base = 0.f;
    float theta = 0.f;  // k-th best score so far (0 until k hits): lower ones can't enter
    float tau = std::numeric_limits<float>::denorm_min();  // smallest x > 0 with base + x >= theta
    bool id_order = true;  // hits so far came in ascending id order (cheaper cuts and sort)
    uint32_t next_id = 0;
    void reset(std::vector<uint64_t>& b, size_t kk, float bs) {
        buf = &b;
        buf->clear();
        k = kk;
        base = bs;
        theta = 0.f;
        tau = std::numeric_limits<float>::denorm_min();
        id_order = true;
        next_id = 0;
    }
    // Offers the hits filtered out of a span of n documents first_id, first_id + 1, ...:
    // accumulator values v[0 .. c) of documents first_id + ix[r] (take_ge's output).
    void offer_taken(const uint32_t* ix, const float* v, size_t c, uint32_t first_id, size_t n) {
        id_order = id_order && first_id >= next_id;
        next_id = first_id + uint32_t(n);
        for (size_t i = 0; i < c; ++i) {
            const float s = base + v[i];
            if (s < theta) continue;  // x >= tau, but base + x rounds below theta
            buf->push_back(pack(s, first_id + ix[i]));
        }
        if (buf->size() >= 2 * k + 256) cut();
    }
    size_t size() const { return buf->size(); }
    // A single hit (s > 0, s >= theta).
    void push(float s, uint32_t d) {
        id_order = id_order && d >= next_id;
        next_id = d + 1;
        buf->push_back(pack(s, d));
        if (buf->size() >= 2 * k + 256) cut();
    }
    // Document d with accumulator value x (one at a time, ascending ids).
    void consider(float x, uint32_t d) {
        if (x < tau) return;
        const float s = base + x;
        if (s >= theta) push(s, d);
    }
    // Only values x >= f can still matter (f: a lower bound of the k-th best x).
    void raise_floor(float f) {
        if (f <= tau) return;
        tau = f;
        theta = std::max(theta, base + f);
    }
    void cut() {
        const uint32_t th = select_best(*buf, k, tmp, hi, sel, id_order);
        std::memcpy(&theta, &th, 4);
        // x >= tau <=> base + x >= theta (both sides monotone in x).
        float t = std::max(theta - base, std::numeric_limits<float>::denorm_min());
        while (t > std::numeric_limits<float>::denorm_min() && base + std::nextafter(t, 0.f) >= theta)
            t = std::nextafter(t, 0.f);
        while (base + t < theta) t = std::nextafter(t, std::numeric_limits<float>::infinity());
        tau = t;
    }
};

struct alignas(64) Scratch {  // one per thread, on its own cache lines
    std::vector<float> acc;         // dense accumulator (padded to whole blocks), 0 between queries
    std::vector<uint32_t> touched;  // documents touched by the short terms
    std::vector<uint32_t> ex;       // excluded ids of the query
    std::vector<float> bound;       // per block: upper bound of the scores in it
    std::vector<float> pmax;        // per block: best short-term partial score
    std::vector<uint32_t> order;    // blocks by descending bound (bucketed)
    std::vector<uint32_t> bucket_end, fill, live;
    std::vector<uint8_t> done;
    std::vector<float> vals;
    std::vector<uint32_t> idx;      // filter output: indices ...
    std::vector<float> val;         // ... and values
    std::vector<uint32_t> cid;      // candidates for the waiting dense terms: ids ...
    std::vector<float> cval;        // ... and partial scores
    std::vector<const float*> rows; // the waiting dense terms' rows
    std::vector<uint64_t> cand, tmp;
    float local[Index::kBlock];
};

}  // namespace

// The indices and values of x[0 .. n) >= tau, then x[0 .. n) = 0 (one pass
// where the table has filter_take); idx and val hold n entries.
size_t take_ge(const Kernels& K, float* x, size_t n, float tau, uint32_t* idx, float* val) {
    if (K.filter_take) return K.filter_take(x, n, tau, idx, val);
    const size_t c = K.filter_ge(x, n, tau, idx);
    for (size_t i = 0; i < c; ++i) val[i] = x[idx[i]];
    std::memset(x, 0, sizeof(float) * n);
    return c;
}

// A lower bound of the k-th largest of x[0 .. n): the k-th largest maximum of
// blocks of BL values (k blocks each hold a value that high); 0 when n is too
// small for 2k blocks.  Cheap, and it lets the filter skip most values at once.
// The block length BL for n values: 64, halved down to 16 while that leaves
// fewer than 4k blocks (a tighter bound, still cheap), then down to 2 while fewer
// than 2k; 0 when n is too small for 2k blocks even so.
size_t floor_block(size_t n, size_t k) {
    size_t bl = 64;
    while (bl > 16 && n / bl < 4 * k) bl /= 2;
    while (bl > 1 && n / bl < 2 * k) bl /= 2;
    return n / bl < 2 * k || bl < 2 ? 0 : bl;
}

// The floor from the nb >= k block maxima (uint32 bits of floats >= 0): a value at
// or below their k-th largest, by bisection (Kernels::lower_kth: vector counting
// passes, cheaper than a radix select over a few hundred or thousand maxima).
float floor_of_maxima(const uint32_t* bits, size_t nb, size_t k) {
    return kernels().lower_kth(reinterpret_cast<const float*>(bits), nb, k);
}

float kth_floor(const float* x, size_t n, size_t k, std::vector<float>& tmp) {
    const size_t bl = floor_block(n, k);
    if (bl == 0) return 0.f;
    const size_t nb = n / bl;
    tmp.resize(nb);
    // Floats >= 0 order like their bits as int32, and -inf (excluded) is negative:
    // an integer max (vectorised); negative maxima count as 0.
    auto* bits = reinterpret_cast<uint32_t*>(tmp.data());
    if (bl >= 16) {
        kernels().block_max(x, nb, bl, bits);
    } else {
        const int32_t* xi = reinterpret_cast<const int32_t*>(x);
        for (size_t b = 0; b < nb; ++b) {
            int32_t m = 0;
            for (size_t r = 0; r < bl; ++r) m = std::max(m, xi[b * bl + r]);
            bits[b] = uint32_t(m);
        }
    }
    return floor_of_maxima(bits, nb, k);
}

void Index::search(const Queries& q, size_t k, const int64_t* excl_indptr, const int64_t* excl_indices,
                   int num_threads, float* out_scores, int64_t* out_ids) const {
    const size_t N = num_docs();
    if (N == 0) throw std::invalid_argument("the index is empty");
    if (max_impact.size() != num_terms() || long_id.size() != num_terms() || dense_id.size() != num_terms())
        throw std::logic_error("BM25 bounds are stale");
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), q.nq));
    const size_t NB = num_blocks();
    const size_t NBS = (NB + blk_step - 1) / blk_step;
    if (strategy == 2 && blk_step != 1) throw std::logic_error("BM25 pruning metadata is missing");
    constexpr size_t BS = kBlock;
    constexpr size_t kBuckets = 256;
    constexpr size_t kChunkBlocks = kRangeBlocks;  // 32 KiB of accumulator per range
    const int64_t* off = offsets.data();
    const uint32_t* dd = docs.data();
    const Kernels& kern = kernels();
    std::vector<Scratch> scratch(nt);
    with_impacts([&](const auto imp) {
    parallel_for(q.nq, int(nt), 4, [&](size_t qb, size_t qe, int tid) {
        Scratch& S = scratch[tid];
        if (S.acc.empty()) {
            S.acc.assign(NB * BS, 0.f);
            S.idx.resize(kChunkBlocks * BS);  // take() output, one range at most
            S.val.resize(kChunkBlocks * BS);
        }
        float* acc = S.acc.data();
        QueryTerms qt;
        Collector top;
        for (size_t qi = qb; qi < qe; ++qi) {
            query_terms(q, qi, qt);
            S.ex.clear();
            if (excl_indptr)
                for (int64_t j = excl_indptr[qi]; j < excl_indptr[qi + 1]; ++j) S.ex.push_back(uint32_t(excl_indices[j]));
            for (uint32_t d : S.ex) acc[d] = kNegInf;  // never > 0: never a candidate
            const size_t n = qt.t.size(), ns = qt.n_short;
            const float base = qt.base;
            top.reset(S.cand, k, base);
            S.touched.clear();

            // Block-max pruning only on request: on the corpora measured it was slower than the
            // exhaustive pass (docs/bm25.md), so strategy 0 (automatic) is exhaustive.
            const bool prune = n > ns && strategy == 2;
            // Short terms: all postings, remembering the documents they touch
            // (unless every range of the accumulator is scanned and reset below).
            for (size_t a = 0; a < ns; ++a) {
                const float w = qt.w[a];
                if (prune || n == ns) {
                    for (int64_t j = off[qt.t[a]]; j < off[qt.t[a] + 1]; ++j) {
                        const uint32_t d = dd[j];
                        const float x = acc[d];
                        if (x == 0.f) S.touched.push_back(d);
                        acc[d] = x + w * imp[j];
                    }
                } else {
                    for (int64_t j = off[qt.t[a]]; j < off[qt.t[a] + 1]; ++j) acc[dd[j]] += w * imp[j];
                }
            }
            // Long term a's postings in blocks [b0, b1), relative to offsets[t].
            // (b0 and b1 are multiples of blk_step, or NB.)
            auto block_range = [&](size_t a, size_t b0, size_t b1, uint32_t& j0, uint32_t& j1) {
                const uint32_t* st = blk_start.data() + size_t(long_id[qt.t[a]]) * (NBS + 1);
                j0 = st[b0 / blk_step];
                j1 = st[b1 == NB ? NBS : b1 / blk_step];
            };
            // The documents of x[0 .. len) at or above tau into S.idx / S.val; clears x.
            auto take = [&](float* x, size_t len, float tau) {
                return take_ge(kern, x, len, tau, S.idx.data(), S.val.data());
            };
            // Dense term a's row of impacts over all documents.
            auto dense_row = [&](size_t a) { return dense_imp.data() + size_t(dense_id[qt.t[a]]) * NB * BS; };
            // Long term a, all its postings in blocks [c0, c1) (exhaustive passes).
            auto add_long = [&](size_t a, size_t c0, size_t c1) {
                const float w = qt.w[a];
                if (dense_id[qt.t[a]] >= 0) {  // a very common term: one vector pass over the range
                    kern.axpy(acc + c0 * BS, dense_row(a) + c0 * BS, (c1 - c0) * BS, w);
                    return;
                }
                uint32_t j0, j1;
                block_range(a, c0, c1, j0, j1);
                const int64_t o = off[qt.t[a]];
                for (uint32_t j = j0; j < j1; ++j) acc[dd[o + j]] += w * imp[o + j];  // the hot loop
            };
            if (n == ns) {
                // ---- Only short terms: the touched documents are all the matches.
                for (uint32_t d : S.touched) {
                    const float x = acc[d];
                    if (x > 0.f && base + x >= top.theta) top.push(base + x, d);
                }
            } else {
                bool finished = false;
                float* bound = nullptr;
                if (prune) {
                    // ---- Block-max pruning.
                    // Slack so that float rounding of a sum never exceeds a bound.
                    const float slack = float(1.0 + 1e-6 + 2.4e-7 * double(n));
                    // 1. Block bounds: the long terms' quantised block maxima plus the
                    // best short-term partial score in the block.
                    S.bound.assign(NB, 0.f);
                    bound = S.bound.data();
                    for (size_t a = ns; a < n; ++a) {
                        const uint8_t* qm = blk_qmax.data() + size_t(long_id[qt.t[a]]) * NB;
                        const float scale = qt.w[a] * max_impact[qt.t[a]] * (1.f / 255.f);
                        for (size_t b = 0; b < NB; ++b) bound[b] += scale * float(qm[b]);
                    }
                    S.pmax.assign(NB, 0.f);
                    for (uint32_t d : S.touched) S.pmax[d / BS] = std::max(S.pmax[d / BS], acc[d]);
                    float hi = 0.f;
                    for (size_t b = 0; b < NB; ++b) {
                        bound[b] = (bound[b] + S.pmax[b]) * slack;
                        hi = std::max(hi, bound[b]);
                    }
                    // 2. Blocks by descending bound: a counting sort into buckets.
                    const float to_bucket = hi > 0.f ? float(kBuckets) / hi : 0.f;
                    auto bucket_of = [&](float x) {  // 0 = highest
                        return kBuckets - 1 - std::min<size_t>(kBuckets - 1, size_t(x * to_bucket));
                    };
                    S.bucket_end.assign(kBuckets + 1, 0);
                    for (size_t b = 0; b < NB; ++b)
                        if (bound[b] > 0.f) ++S.bucket_end[bucket_of(bound[b]) + 1];
                    for (size_t r = 0; r < kBuckets; ++r) S.bucket_end[r + 1] += S.bucket_end[r];
                    S.order.resize(S.bucket_end[kBuckets]);
                    S.fill.assign(S.bucket_end.begin(), S.bucket_end.end() - 1);
                    for (size_t b = 0; b < NB; ++b)
                        if (bound[b] > 0.f) S.order[S.fill[bucket_of(bound[b])]++] = uint32_t(b);
                    // 3. Score the blocks in that order, each in a local accumulator (the
                    // short-term partial scores, then the long terms in canonical order),
                    // until no remaining block can reach the k-th score, or until a
                    // budget of blocks is spent (the bounds are loose for this query).
                    const size_t budget = std::max<size_t>(256, (4 * k) / BS + NB / 64);
                    S.done.assign(NB, 0);
                    size_t evaluated = 0;
                    finished = true;
                    for (size_t r = 0; r < kBuckets && finished; ++r) {
                        // Bounds in bucket r are below this edge (with a margin for rounding).
                        const float edge = float(double(kBuckets - r) / double(to_bucket) * (1.0 + 1e-5));
                        if (top.size() >= k && base + edge < top.theta) break;
                        for (uint32_t i = S.bucket_end[r]; i < S.bucket_end[r + 1]; ++i) {
                            const size_t b = S.order[i];
                            if (base + bound[b] < top.theta) continue;
                            if (evaluated == budget) {
                                finished = false;
                                break;
                            }
                            float* loc = S.local;
                            std::memcpy(loc, acc + b * BS, sizeof(S.local));
                            const uint32_t b0 = uint32_t(b * BS);
                            for (size_t a = ns; a < n; ++a) {  // the hot loop of this path
                                uint32_t j0, j1;
                                block_range(a, b, b + 1, j0, j1);
                                const int64_t o = off[qt.t[a]];
                                const float w = qt.w[a];
                                for (uint32_t j = j0; j < j1; ++j) loc[dd[o + j] - b0] += w * imp[o + j];
                            }
                            const size_t c = take(loc, BS, top.tau);  // (clears the scratch copy)
                            top.offer_taken(S.idx.data(), S.val.data(), c, b0, BS);
                            S.done[b] = 1;
                            ++evaluated;
                        }
                    }
                }
                if (!finished) {
                    // ---- Term at a time, one range of 8192 documents at a time (the
                    // accumulator range stays in L1/L2).  With pruning, only blocks whose
                    // bound reaches the k-th score so far are live: a long term adds its
                    // postings in those blocks, or all its postings in the range when
                    // that is cheaper.  Every document of the range is then offered:
                    // the partial sums of dead blocks are below their bound, hence below
                    // the threshold, and blocks already scored above are zeroed first.
                    // Exhaustive: the very common terms at the end of the canonical order
                    // (the dense ones, lowest IDF) wait.  Once the others are in, a lower
                    // bound F of the k-th score usually shows that only documents near it
                    // can still reach it, and the dense terms are added for those alone
                    // (below).  (Sparse long terms waiting the same way, MaxScore-style, cost
                    // more than they save here: thousands of documents stay near F, and
                    // finding each in a posting list costs more than a posting.)
                    // Only worth it when the corpus is large next to k: a vector pass costs
                    // ~N/16, the documents near F number a few k, each a cache miss.
                    size_t n_full = n;
                    if (!prune && N >= 256 * k)
                        while (n_full > ns && dense_id[qt.t[n_full - 1]] >= 0) --n_full;
                    // With several ranges, each range's block maxima (for the floor below)
                    // are taken as soon as its terms are in, while it is still in cache.
                    const size_t fbl = floor_block(NB * BS, k), fnb = fbl ? NB * BS / fbl : 0;
                    const bool early_max = !prune && NB > kChunkBlocks && fbl >= 16;
                    if (early_max) S.vals.resize(fnb);
                    uint32_t* fbits = reinterpret_cast<uint32_t*>(S.vals.data());
                    for (size_t c0 = 0; c0 < NB; c0 += kChunkBlocks) {
                        const size_t c1 = std::min(NB, c0 + kChunkBlocks);
                        S.live.clear();
                        if (prune)
                            for (size_t b = c0; b < c1; ++b)
                                if (!S.done[b] && bound[b] > 0.f && base + bound[b] >= top.theta) S.live.push_back(uint32_t(b));
                        if (prune && S.live.empty()) continue;
                        for (size_t a = ns; a < n_full; ++a) {
                            if (!prune) {
                                add_long(a, c0, c1);
                                continue;
                            }
                            uint32_t j0, j1;
                            block_range(a, c0, c1, j0, j1);
                            const int64_t o = off[qt.t[a]];
                            const float w = qt.w[a];
                            if (dense_id[qt.t[a]] >= 0 && S.live.size() * 16 > c1 - c0) {
                                // A very common term: one vector pass over the range.
                                kern.axpy(acc + c0 * BS, dense_row(a) + c0 * BS, (c1 - c0) * BS, w);
                            } else if (S.live.size() * 6 > j1 - j0) {  // a block visit costs ~6 postings
                                for (uint32_t j = j0; j < j1; ++j) acc[dd[o + j]] += w * imp[o + j];
                            } else {
                                for (uint32_t b : S.live) {
                                    block_range(a, b, b + 1, j0, j1);
                                    for (uint32_t j = j0; j < j1; ++j) acc[dd[o + j]] += w * imp[o + j];
                                }
                            }
                        }
                        if (!prune) {  // exhaustive: offered below, once every range is complete
                            if (early_max) {
                                const size_t b0 = c0 * BS / fbl, b1 = std::min(fnb, c1 * BS / fbl);
                                if (b1 > b0) kern.block_max(acc + b0 * fbl, b1 - b0, fbl, fbits + b0);
                            }
                            continue;
                        }
                        float* x = acc + c0 * BS;
                        const size_t len = (c1 - c0) * BS;
                        for (size_t b = c0; b < c1; ++b)
                            if (S.done[b]) std::memset(acc + b * BS, 0, sizeof(float) * BS);
                        if (top.size() < k) top.raise_floor(kth_floor(x, len, k, S.vals));
                        const size_t c = take(x, len, top.tau);  // also clears the range
                        top.offer_taken(S.idx.data(), S.val.data(), c, uint32_t(c0 * BS), len);
                    }
                    bool offered = prune;
                    if (!prune && n_full < n) {
                        // The waiting dense terms add at most U to any score.  With F a lower
                        // bound of the k-th best score so far, a document below F - U (with
                        // margins for float rounding) cannot reach the top k.
                        const float f = early_max ? floor_of_maxima(fbits, fnb, k)
                                                  : kth_floor(acc, NB * BS, k, S.vals);
                        double U = 0;
                        for (size_t a = n_full; a < n; ++a) U += double(qt.ub[a]);
                        auto below = [&](float fl) {  // documents with x < this cannot reach fl
                            const double lim = double(fl) * (1 - 1e-5) - U * (1 + 1e-5);
                            float t = float(lim);
                            if (double(t) > lim) t = std::nextafter(t, 0.f);
                            return t;
                        };
                        if (below(f) > 0.f) {
                            top.raise_floor(f);
                            // Candidates of every range first (partial score >= below(F)), then
                            // the dense terms for them in one pass: a long list lets the row
                            // reads be fetched well ahead (the rows are far apart in memory).
                            const float t0 = below(f);
                            S.cid.clear();
                            S.cval.clear();
                            for (size_t c0 = 0; c0 < NB * BS; c0 += kChunkBlocks * BS) {
                                const size_t c = take(acc + c0, std::min(NB * BS - c0, kChunkBlocks * BS), t0);
                                for (size_t i = 0; i < c; ++i) {
                                    S.cid.push_back(uint32_t(c0 + S.idx[i]));
                                    S.cval.push_back(S.val[i]);
                                }
                            }
                            S.rows.clear();
                            for (size_t a = n_full; a < n; ++a) S.rows.push_back(dense_row(a));
                            const float* const* rows = S.rows.data();
                            const float* w = qt.w.data() + n_full;
                            const size_t nd = n - n_full, nc = S.cid.size();
                            constexpr size_t kAhead = 32;
                            for (size_t i = 0; i < nc; ++i) {  // canonical order: the dense terms last
                                if (i + kAhead < nc)
                                    for (size_t r = 0; r < nd; ++r) __builtin_prefetch(rows[r] + S.cid[i + kAhead]);
                                const size_t d = S.cid[i];
                                float x = S.cval[i];
                                for (size_t r = 0; r < nd; ++r) x += w[r] * rows[r][d];
                                top.consider(x, uint32_t(d));
                            }
                            offered = true;
                        } else {
                            for (size_t c0 = 0; c0 < NB; c0 += kChunkBlocks) {  // no: add them everywhere
                                const size_t c1 = std::min(NB, c0 + kChunkBlocks);
                                for (size_t a = n_full; a < n; ++a) add_long(a, c0, c1);
                            }
                        }
                    }
                    if (!offered) {
                        // Exhaustive: one lower bound of the k-th score over the whole
                        // accumulator first (few candidates to cut back), then the
                        // vectorised filter range by range.
                        // (The maxima taken per range are current unless dense terms were
                        // added everywhere just above.)
                        top.raise_floor(early_max && n_full == n ? floor_of_maxima(fbits, fnb, k)
                                                                 : kth_floor(acc, NB * BS, k, S.vals));
                        for (size_t c0 = 0; c0 < NB * BS; c0 += kChunkBlocks * BS) {
                            const size_t len = std::min(NB * BS - c0, kChunkBlocks * BS);
                            const size_t c = take(acc + c0, len, top.tau);
                            top.offer_taken(S.idx.data(), S.val.data(), c, uint32_t(c0), len);
                        }
                    }
                }
            }
            for (uint32_t d : S.touched) acc[d] = 0.f;
            for (uint32_t d : S.ex) acc[d] = 0.f;
            keep_best(S.cand, k, S.tmp, top.hi, top.sel, top.id_order);

            // bm25l / bm25+: documents without any query term still score `base`;
            // when fewer than k matched, the first unmatched ids fill the rest.
            if (base > 0.f && S.cand.size() < k) {
                std::vector<uint32_t> have;
                for (uint64_t c : S.cand) have.push_back(key_id(c));
                for (uint32_t d : S.ex) have.push_back(d);
                std::sort(have.begin(), have.end());
                size_t hi = 0;
                const size_t need = k - S.cand.size();
                size_t added = 0;
                for (uint32_t d = 0; d < N && added < need; ++d) {
                    while (hi < have.size() && have[hi] < d) ++hi;
                    if (hi < have.size() && have[hi] == d) continue;
                    S.cand.push_back(pack(base, d));
                    ++added;
                }
                std::sort(S.cand.begin(), S.cand.end(), std::greater<uint64_t>());
            }
            float* os = out_scores + qi * k;
            int64_t* oi = out_ids + qi * k;
            for (size_t r = 0; r < k; ++r) {
                if (r < S.cand.size()) {
                    os[r] = key_score(S.cand[r]);
                    oi[r] = int64_t(key_id(S.cand[r]));
                } else {
                    os[r] = kNegInf;
                    oi[r] = -1;
                }
            }
        }
    });
    });
}

void Index::score(const Queries& q, const int64_t* doc_ids, size_t m, int num_threads, float* out) const {
    const size_t N = num_docs();
    if (max_impact.size() != num_terms() || long_id.size() != num_terms()) throw std::logic_error("BM25 bounds are stale");
    const int64_t* off = offsets.data();
    const uint32_t* dd = docs.data();
    with_impacts([&](const auto imp) {
    parallel_for(q.nq, num_threads, 16, [&](size_t qb, size_t qe, int) {
        QueryTerms qt;
        for (size_t qi = qb; qi < qe; ++qi) {
            query_terms(q, qi, qt);
            for (size_t c = 0; c < m; ++c) {
                const int64_t d = doc_ids[qi * m + c];
                if (d < 0 || size_t(d) >= N) {
                    out[qi * m + c] = kNegInf;
                    continue;
                }
                // Same order of additions as search(): bit-identical scores.
                float x = 0.f;
                for (size_t a = 0; a < qt.t.size(); ++a) {
                    const uint32_t* b = dd + off[qt.t[a]];
                    const uint32_t* e = dd + off[qt.t[a] + 1];
                    const uint32_t* p = std::lower_bound(b, e, uint32_t(d));
                    if (p != e && *p == uint32_t(d)) x += qt.w[a] * imp[p - dd];
                }
                out[qi * m + c] = x > 0.f ? qt.base + x : qt.base;
            }
        }
    });
    });
}

}  // namespace bm25
}  // namespace hn
