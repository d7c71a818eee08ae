// BM25 top-k search and pair scoring over the index of bm25.h.
//
// One exact path (Index::Searcher below), one query at a time per thread:
//
// * short terms (few postings) are added in full into a dense per-thread
//   accumulator; when there are only short terms, the documents they touched
//   are all the matches;
// * long terms are added one range of 8,192 documents at a time (the range of
//   the accumulator stays in cache) -- add_long() holds the hot loop;
// * a lower bound of the k-th score from block maxima and one vectorised filter
//   pass pick the candidates (offer_all);
// * on large corpora the dense (very common) terms wait and are added only for
//   the documents that can still reach the top k (MaxScore-style,
//   add_waiting_dense).
//
// Every contribution w * impact is >= 0, so partial scores are lower bounds of
// final scores and an accumulator of 0 means "not matched".  Contributions are
// always added in the canonical term order of query_terms(), so a document's
// score is the same float whatever path computed it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <type_traits>

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
    std::vector<float> vals;        // block maxima (lower bounds of the k-th score)
    std::vector<uint32_t> idx;      // filter output: indices ...
    std::vector<float> val;         // ... and values
    std::vector<uint32_t> cid;      // candidates for the waiting dense terms: ids ...
    std::vector<float> cval;        // ... and partial scores
    std::vector<const float*> rows; // the waiting dense terms' rows
    std::vector<uint64_t> cand, tmp;
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

// One thread's search of one query at a time.  Imp: the impact lookup of
// Index::with_impacts (16- or 32-bit codes).
template <class Imp>
struct Index::Searcher {
    static constexpr size_t BS = kBlock;
    static constexpr size_t kChunk = kRangeBlocks;  // blocks per accumulator range (32 KiB)

    const Index& ix;
    const Imp imp;
    Scratch& S;
    const Kernels& kern = kernels();
    const int64_t* off = ix.offsets.data();
    const uint32_t* dd = ix.docs.data();
    const size_t N = ix.num_docs(), NB = ix.num_blocks(), NR = ix.num_ranges();
    float* acc = nullptr;
    QueryTerms qt;
    Collector top;
    size_t k = 0;

    Searcher(const Index& index, Imp impacts, Scratch& scratch) : ix(index), imp(impacts), S(scratch) {
        if (S.acc.empty()) {
            S.acc.assign(NB * BS, 0.f);
            S.idx.resize(kChunk * BS);  // take() output, one range at most
            S.val.resize(kChunk * BS);
        }
        acc = S.acc.data();
    }

    // The documents of x[0 .. len) at or above tau into S.idx / S.val; clears x.
    size_t take(float* x, size_t len, float tau) { return take_ge(kern, x, len, tau, S.idx.data(), S.val.data()); }
    // Dense term a's row of impacts over all documents.
    const float* dense_row(size_t a) const {
        return ix.dense_imp.data() + size_t(ix.dense_id[qt.t[a]]) * NB * BS;
    }

    // Short terms 0 .. ns: all their postings.  track: remember the documents they
    // touch (when no range scan follows to find and clear them).
    void add_short_terms(size_t ns, bool track) {
        for (size_t a = 0; a < ns; ++a) {
            const float w = qt.w[a];
            const int64_t j0 = off[qt.t[a]], j1 = off[qt.t[a] + 1];
            float* const acc = this->acc;
            const uint32_t* const dd = this->dd;
            const Imp imp = this->imp;
            if (track) {
                for (int64_t j = j0; j < j1; ++j) {
                    const uint32_t d = dd[j];
                    const float x = acc[d];
                    if (x == 0.f) S.touched.push_back(d);
                    acc[d] = x + w * imp[j];
                }
            } else {
                for (int64_t j = j0; j < j1; ++j) acc[dd[j]] += w * imp[j];
            }
        }
    }

    // Long term a: all its postings in the document blocks [c0, c1) (c0 a multiple
    // of kChunk, c1 the next one or NB).
    void add_long(size_t a, size_t c0, size_t c1) {
        const float w = qt.w[a];
        if (ix.dense_id[qt.t[a]] >= 0) {  // a very common term: one vector pass over the range
            kern.axpy(acc + c0 * BS, dense_row(a) + c0 * BS, (c1 - c0) * BS, w);
            return;
        }
        const uint32_t* st = ix.blk_start.data() + size_t(ix.long_id[qt.t[a]]) * (NR + 1);
        const uint32_t j0 = st[c0 / kChunk], j1 = st[c1 == NB ? NR : c1 / kChunk];
        const int64_t o = off[qt.t[a]];
        float* const x = acc;           // locals: nothing reloaded through `this` per posting
        const uint32_t* const d = dd;
        const Imp im = imp;
        // THE hot loop of BM25 search: a scatter-add of one term's postings into the
        // accumulator range (in cache).  Most of a query's time is spent here.
        for (uint32_t j = j0; j < j1; ++j) x[d[o + j]] += w * im[o + j];
    }

    // Long terms [ns, n_full), range by range.  With fbits, each range's block
    // maxima (blocks of fbl values) are taken as soon as its terms are in, while it
    // is still in cache.
    void add_long_terms(size_t ns, size_t n_full, uint32_t* fbits, size_t fbl, size_t fnb) {
        for (size_t c0 = 0; c0 < NB; c0 += kChunk) {
            const size_t c1 = std::min(NB, c0 + kChunk);
            for (size_t a = ns; a < n_full; ++a) add_long(a, c0, c1);
            if (fbits) {
                const size_t b0 = c0 * BS / fbl, b1 = std::min(fnb, c1 * BS / fbl);
                if (b1 > b0) kern.block_max(acc + b0 * fbl, b1 - b0, fbl, fbits + b0);
            }
        }
    }

    // Waiting dense terms [n_full, n): they add at most U to any score.  With F a
    // lower bound of the k-th best score so far, a document below F - U (with
    // margins for float rounding) cannot reach the top k: only the others get the
    // dense terms, read from their rows with a long prefetch distance.  Returns
    // false (nothing offered, the dense terms added everywhere) when F - U <= 0.
    bool add_waiting_dense(size_t n_full, size_t n, float f) {
        double U = 0;
        for (size_t a = n_full; a < n; ++a) U += double(qt.ub[a]);
        const double lim = double(f) * (1 - 1e-5) - U * (1 + 1e-5);
        float t0 = float(lim);  // documents with x < t0 cannot reach f
        if (double(t0) > lim) t0 = std::nextafter(t0, 0.f);
        if (!(t0 > 0.f)) {
            for (size_t c0 = 0; c0 < NB; c0 += kChunk) {
                const size_t c1 = std::min(NB, c0 + kChunk);
                for (size_t a = n_full; a < n; ++a) add_long(a, c0, c1);
            }
            return false;
        }
        top.raise_floor(f);
        // Candidates of every range first (partial score >= t0), then the dense terms
        // for them in one pass: a long list lets the row reads be fetched well ahead
        // (the rows are far apart in memory).
        S.cid.clear();
        S.cval.clear();
        for (size_t c0 = 0; c0 < NB * BS; c0 += kChunk * BS) {
            const size_t c = take(acc + c0, std::min(NB * BS - c0, kChunk * BS), t0);
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
        return true;
    }

    // Every document of the accumulator at or above the collector's floor is
    // offered (the vectorised filter, range by range; clears the accumulator).
    void offer_all(float floor) {
        top.raise_floor(floor);
        for (size_t c0 = 0; c0 < NB * BS; c0 += kChunk * BS) {
            const size_t len = std::min(NB * BS - c0, kChunk * BS);
            const size_t c = take(acc + c0, len, top.tau);
            top.offer_taken(S.idx.data(), S.val.data(), c, uint32_t(c0), len);
        }
    }

    // Query terms with long ones: ranges, then the floor and the filter.
    void search_ranges(size_t ns, size_t n) {
        add_short_terms(ns, false);
        // The very common terms at the end of the canonical order (the dense ones,
        // lowest IDF) wait, when the corpus is large next to k: a vector pass costs
        // ~N/16, the documents near the k-th score number a few k, each a cache miss.
        size_t n_full = n;
        if (N >= 256 * k)
            while (n_full > ns && ix.dense_id[qt.t[n_full - 1]] >= 0) --n_full;
        const size_t fbl = floor_block(NB * BS, k), fnb = fbl ? NB * BS / fbl : 0;
        const bool early_max = NB > kChunk && fbl >= 16;  // several ranges: maxima per range
        if (early_max) S.vals.resize(fnb);
        uint32_t* fbits = early_max ? reinterpret_cast<uint32_t*>(S.vals.data()) : nullptr;
        add_long_terms(ns, n_full, fbits, fbl, fnb);
        if (n_full < n) {
            const float f = early_max ? floor_of_maxima(fbits, fnb, k) : kth_floor(acc, NB * BS, k, S.vals);
            if (add_waiting_dense(n_full, n, f)) return;
        }
        // One lower bound of the k-th score over the whole accumulator first (few
        // candidates to cut back); the maxima taken per range are current unless
        // dense terms were added everywhere just above.
        offer_all(early_max && n_full == n ? floor_of_maxima(fbits, fnb, k) : kth_floor(acc, NB * BS, k, S.vals));
    }

    // bm25l / bm25+: documents without any query term still score `base`; when
    // fewer than k matched, the first unmatched ids fill the rest.
    void fill_with_base(float base) {
        if (!(base > 0.f) || S.cand.size() >= k) return;
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

    // Query qi: its best min(k_out, N) hits into out_scores / out_ids (k_out
    // columns), the rest padded with -inf / -1.
    void run(const Queries& q, size_t qi, size_t k_out, const int64_t* excl_indptr, const int64_t* excl_indices,
             float* os, int64_t* oi) {
        k = std::min(k_out, N);  // buffers never grow with a k beyond the corpus
        ix.query_terms(q, qi, qt);
        S.ex.clear();
        if (excl_indptr)
            for (int64_t j = excl_indptr[qi]; j < excl_indptr[qi + 1]; ++j) S.ex.push_back(uint32_t(excl_indices[j]));
        for (uint32_t d : S.ex) acc[d] = kNegInf;  // never > 0: never a candidate
        const size_t n = qt.t.size(), ns = qt.n_short;
        const float base = qt.base;
        top.reset(S.cand, k, base);
        S.touched.clear();
        if (n == ns) {
            // Only short terms: the documents they touched are all the matches.
            add_short_terms(ns, true);
            for (uint32_t d : S.touched) {
                const float x = acc[d];
                if (x > 0.f && base + x >= top.theta) top.push(base + x, d);
            }
        } else {
            search_ranges(ns, n);
        }
        for (uint32_t d : S.touched) acc[d] = 0.f;
        for (uint32_t d : S.ex) acc[d] = 0.f;
        keep_best(S.cand, k, S.tmp, top.hi, top.sel, top.id_order);
        fill_with_base(base);
        for (size_t r = 0; r < k_out; ++r) {
            if (r < S.cand.size()) {
                os[r] = key_score(S.cand[r]);
                oi[r] = int64_t(key_id(S.cand[r]));
            } else {
                os[r] = kNegInf;
                oi[r] = -1;
            }
        }
    }
};

void Index::search(const Queries& q, size_t k, const int64_t* excl_indptr, const int64_t* excl_indices,
                   int num_threads, float* out_scores, int64_t* out_ids) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    if (num_docs() == 0) throw std::invalid_argument("the index is empty");
    if (max_impact.size() != num_terms() || long_id.size() != num_terms() || dense_id.size() != num_terms())
        throw std::logic_error("BM25 bounds are stale");
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), q.nq));
    std::vector<Scratch> scratch(nt);
    with_impacts([&](const auto imp) {
        using Imp = std::decay_t<decltype(imp)>;
        parallel_for(q.nq, int(nt), 4, [&](size_t qb, size_t qe, int tid) {
            Searcher<Imp> s(*this, imp, scratch[tid]);
            for (size_t qi = qb; qi < qe; ++qi)
                s.run(q, qi, k, excl_indptr, excl_indices, out_scores + qi * k, out_ids + qi * k);
        });
    });
}

void Index::score(const Queries& q, const int64_t* doc_ids, size_t m, int num_threads, float* out) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
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
