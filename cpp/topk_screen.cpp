// Exact top-k for IP / cosine with a bf16 screen: the same results as the
// plain search (topk.cpp), bit for bit, for about half the fp32 flops.
//
// 1. Queries and corpus are rounded to bf16 (x~ = bf16(x)) and every key is
//    first computed approximately, k~ = q~ . c~ (times 1/||c|| for cosine), with
//    vdpbf16ps: two exact bf16 products per fp32 lane and instruction, about
//    twice the fp32 FMA rate.
// 2. A bound E (per query, valid for every corpus row) on |k - k~|, where k is
//    the key the plain fp32 path computes, is derived below.  Per query, t = the
//    k-th largest k~ among the non-excluded rows; at least k rows then have
//    k >= t - E, so a row can only be in the top k if k~ >= t - 2E.  The
//    selection keeps those rows (a running lower bound of t, found by bisection
//    when a buffer fills; a lower t only keeps more rows).
// 3. The survivors are rescored by Kernels::dot_pairs, the fp32 kernel's own
//    arithmetic (same FMA chain and sums as dot_tile: bit-identical keys), and
//    the top k taken with the usual rules (ties by ascending id, padding).
// The search gives up and lets the plain path run (same results, slower) when a
// query keeps too many survivors (near-ties), or a norm is huge or not finite
// (the plain path's overflow / NaN handling then applies unchanged).
//
// The bound.  u = 2^-24 (fp32 unit roundoff); dq = q - q~, dc = c - c~ (exact
// in fp32, measured per row: a rounding error, plus the values below 2^-126
// that are flushed to 0 before vdpbf16ps could flush them).
//   q.c - q~.c~ = dq.c + q~.dc            -> |.| <= ||dq|| ||c|| + ||q~|| ||dc||
//   bf16 pass: each term passes through at most hA = dp + 5 fp32 additions (one
//     lane accumulates a score: dp/2 instructions of two additions each), products
//     exact -> |k~ - q~.c~| <= gA ||q~|| ||c~||,  gA = hA u / (1 - hA u)
//   fp32 kernel: ceil(d/16) FMAs per lane + a 4-level tree -> hB = ceil(d/16) + 5,
//     |k - q.c| <= gB ||q|| ||c||
//   cosine: both keys are multiplied by the same fp32 xn = 1/||c|| (rounded):
//     all terms above scale by xn, plus u |k| + u |k~| for the two roundings
//   underflow (flushed products / partial sums, DAZ): at most (2 dp + 8) 2^-126
//     per key before scaling; covered by 2^-90 (1 + ||q||)(1 + max xn||c|| + max xn).
// With R_c = max xn||c||, R_d = max xn||dc||, R_t = max xn||c~|| over the corpus
// (xn = 1 for IP):
//   E = ||dq|| R_c + ||q~|| R_d + gA ||q~|| R_t + gB ||q|| R_c
//       + 2u (||q|| R_c + ||q~|| R_t) (1 + gA + gB) + underflow,
// evaluated in double from fp32-accumulated squared norms, each norm inflated
// by (1 + 2^-7 + (d + 64) 2^-22) (covers the fp32 accumulation of the norms),
// and the total by 2^-10 more.  Norms are capped at 2^50 (squared 2^100), so no
// product, sum or bf16 rounding overflows.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "simd/kernels.h"
#include "threads.h"
#include "topk_internal.h"

namespace hn {
namespace {

using detail::Cand;

constexpr double kU = 1.0 / 16777216.0;                      // 2^-24
constexpr double kMaxSqnorm = 1.2676506002282294e30;          // 2^100
constexpr size_t kMaxBf16Bytes = size_t(256) << 20;           // bf16 copy of the corpus, at most
// Auto mode.  The bf16 copy is made on every call (a pass over the corpus); it pays for itself
// with enough queries on a corpus that stays in cache.  Measured (2 threads, d = 384, k = 100):
// 5k rows: 0.6x at 16 queries, 1.2x at 48, 1.5x at 96; 10k-40k rows: 0.8-0.9x at 64 queries,
// 1.4x at 256; 100k rows (77 MB copy): 0.3x at 64, 0.8x at 256.
constexpr size_t kAutoBf16Bytes = size_t(32) << 20;
constexpr size_t kMinQueries = 96;
constexpr size_t kMaxPanel = 256;                             // queries per panel

int initial_mode() {
    const char* env = std::getenv("HARDNEG_SCREEN");
    if (env && env[0] >= '0' && env[0] <= '2' && env[1] == '\0') return env[0] - '0';
    return 1;
}
std::atomic<int>& mode_ref() {
    static std::atomic<int> m{initial_mode()};
    return m;
}
std::atomic<uint64_t> g_screened{0}, g_fallbacks{0};

// Largest float <= v.
float round_down(double v) {
    float f = (float)v;
    if ((double)f > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
}

// Rows g0 .. g1 of the bf16 corpus; they come from segment `seg`, rows r0 ...
struct SBlock {
    size_t seg, g0, g1, r0;
};

// The corpus rounded to bf16 (built once per search, or reused: Reuse), with what the bound needs.
struct Bf16Corpus {
    size_t dp = 0;
    std::vector<uint32_t> x;     // packed by Bf16Kernels::pack_rows, segments padded to 16 rows
    std::vector<size_t> pstart;  // first packed row of each segment (multiples of 16)
    std::vector<float> xn;       // cosine: the plain path's 1/||c|| per row (0 for a zero row)
    std::vector<size_t> start;   // first bf16 row of each segment, then the total
    double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
    bool ok = true;
};

void build_corpus(const Kernels& K, const Bf16Kernels& B, const std::vector<Segment>& segs, size_t d, Metric metric,
                  const std::vector<SBlock>& blocks, int nt, Bf16Corpus& C) {
    const size_t total = C.start.back();
    C.x.resize(C.pstart.back() * C.dp / 2);
    if (metric == Metric::Cosine) C.xn.resize(total);
    struct Acc {
        double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
        bool ok = true;
    };
    std::vector<Acc> acc(nt);
    parallel_for(blocks.size(), nt, 1, [&](size_t b0, size_t b1, int tid) {
        std::vector<float> x2, e2, t2, sq, tmp(d);
        std::vector<uint16_t> rm;
        Acc& a = acc[tid];
        for (size_t b = b0; b < b1; ++b) {
            const SBlock& bl = blocks[b];
            const Segment& sg = segs[bl.seg];
            const size_t n = bl.g1 - bl.g0, es = dtype_size(sg.dtype);
            const char* X = static_cast<const char*>(sg.data) + bl.r0 * sg.ld * es;
            x2.resize(n), e2.resize(n), t2.resize(n), sq.resize(n);
            rm.resize(n * C.dp);
            uint16_t* out = rm.data();
            if (sg.dtype == DType::F32) {
                B.to_bf16_rows(reinterpret_cast<const float*>(X), sg.ld, n, d, out, C.dp, x2.data(), e2.data(),
                               t2.data());
            } else {
                for (size_t j = 0; j < n; ++j) {
                    K.to_f32(X + j * sg.ld * es, sg.dtype, d, tmp.data());
                    B.to_bf16_rows(tmp.data(), d, 1, d, out + j * C.dp, C.dp, &x2[j], &e2[j], &t2[j]);
                }
            }
            B.pack_rows(rm.data(), C.dp, n, C.dp, C.x.data() + (C.pstart[bl.seg] + bl.r0) * C.dp / 2);
            if (metric == Metric::Cosine) {  // exactly the plain path's scale factors
                if (sg.sqnorms) std::copy(sg.sqnorms + bl.r0, sg.sqnorms + bl.r0 + n, sq.begin());
                else K.sqnorm_rows(X, sg.ld, n, d, sg.dtype, sq.data());
                for (size_t j = 0; j < n; ++j) C.xn[bl.g0 + j] = sq[j] > 0 ? 1.0f / std::sqrt(sq[j]) : 0.0f;
            }
            for (size_t j = 0; j < n; ++j) {
                if (!(x2[j] <= kMaxSqnorm && e2[j] <= kMaxSqnorm && t2[j] <= 4 * kMaxSqnorm)) a.ok = false;
                const double xn = metric == Metric::Cosine ? (double)C.xn[bl.g0 + j] : 1.0;
                a.r_c = std::max(a.r_c, xn * std::sqrt((double)x2[j]));
                a.r_d = std::max(a.r_d, xn * std::sqrt((double)e2[j]));
                a.r_t = std::max(a.r_t, xn * std::sqrt((double)t2[j]));
                a.r_xn = std::max(a.r_xn, xn);
            }
        }
    });
    for (const Acc& a : acc) {
        C.ok = C.ok && a.ok;
        C.r_c = std::max(C.r_c, a.r_c);
        C.r_d = std::max(C.r_d, a.r_d);
        C.r_t = std::max(C.r_t, a.r_t);
        C.r_xn = std::max(C.r_xn, a.r_xn);
    }
    const double infl = 1.0 + std::ldexp(1.0, -7) + double(d + 64) * std::ldexp(1.0, -22);
    C.r_c *= infl, C.r_d *= infl, C.r_t *= infl;
    C.ok = C.ok && std::isfinite(C.r_c) && std::isfinite(C.r_d) && std::isfinite(C.r_t) && std::isfinite(C.r_xn);
}

struct SPanel;

// Scratch a calling thread keeps between searches: large buffers allocated per
// call would fault in fresh pages every time (measurable on small searches).
constexpr size_t kKeepBytes = size_t(64) << 20;
struct Reuse {
    std::vector<uint32_t> x;
    std::vector<float> xn;
    std::vector<std::unique_ptr<SPanel>> panels;
    // the bf16 corpus in x / xn is reusable by a call with this (non-zero) token and key
    uint64_t token = 0;
    std::vector<double> key;
    double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
    void trim();
};

// What the bf16 copy depends on: every segment's layout and the metric.
std::vector<double> corpus_key(const std::vector<Segment>& segs, size_t d, Metric metric) {
    std::vector<double> k{double(d), double(int(metric))};
    for (const Segment& s : segs)
        for (double v : {double(reinterpret_cast<uintptr_t>(s.data)), double(int(s.dtype)), double(s.rows),
                         double(s.ld), double(reinterpret_cast<uintptr_t>(s.sqnorms)), double(s.id_offset)})
            k.push_back(v);
    return k;
}

// Everything one screened search shares read-only.
struct Screen {
    const Kernels& K;
    const Bf16Kernels& B;
    const void* Q;
    DType qt;
    size_t ldq, d, k, cap, nb;
    Metric metric;
    const std::vector<Segment>& segs;
    const Exclusions& excl;
    const std::vector<int64_t>& ex_sorted;
    const std::vector<SBlock>& blocks;
    const Bf16Corpus& C;
    std::atomic<bool>& failed;
};

// Per-thread scratch for a panel of queries.  Each query's buffer holds the
// screened keys and their bf16 row indices (not ids) side by side.
struct SPanel {
    std::vector<float> q, tile, err, thr, keys, out;
    std::vector<const float*> qptrs;
    std::vector<const void*> ptrs;
    std::vector<uint64_t> pairs, sorted;  // (bf16 row << 32) | (query * cap + slot) of every survivor
    std::vector<uint32_t> counts;
    std::vector<uint16_t> qb;
    std::vector<uint32_t> surv, rows;
    std::vector<Cand> merged;
    std::vector<size_t> n;
    size_t q0 = 0, P = 0;

    size_t bytes() const {
        return (q.capacity() + tile.capacity() + keys.capacity() + out.capacity()) * 4 + qb.capacity() * 2 +
               (surv.capacity() + rows.capacity()) * 4 + pairs.capacity() * 16 + counts.capacity() * 4 +
               (qptrs.capacity() + ptrs.capacity()) * 8;
    }

    // Sizes the buffers (kept from the previous search when large enough: no fresh
    // pages to fault in on every call).
    void setup(const Screen& S, size_t panel) {
        q.resize(panel * S.d), tile.resize(panel * S.nb), err.resize(panel), thr.resize(panel);
        keys.resize(panel * S.cap), qb.resize(panel * S.C.dp), surv.resize(S.nb), rows.resize(panel * S.cap);
        n.resize(panel);
    }

    // Queries q0 .. q0+P-1: fp32 as the plain path loads them, bf16, bound E.
    // False when a norm is too large or not finite.
    bool load(const Screen& S, size_t q0_, size_t P_) {
        q0 = q0_, P = P_;
        const double u = kU, d = double(S.d);
        const double hA = double(S.C.dp) + 5, hB = std::ceil(d / 16) + 5;
        const double gA = hA * u / (1 - hA * u), gB = hB * u / (1 - hB * u);
        const double infl = 1.0 + std::ldexp(1.0, -7) + (d + 64) * std::ldexp(1.0, -22);
        const Bf16Corpus& C = S.C;
        for (size_t i = 0; i < P; ++i) {
            float* qi = q.data() + i * S.d;
            float qn = 0, x2, e2, t2;
            detail::load_query(S.K, S.Q, S.qt, S.ldq, S.d, S.metric, q0 + i, qi, &qn);
            S.B.to_bf16_rows(qi, S.d, 1, S.d, qb.data() + i * C.dp, C.dp, &x2, &e2, &t2);
            if (!(x2 <= kMaxSqnorm && e2 <= kMaxSqnorm && t2 <= 4 * kMaxSqnorm)) return false;
            const double nq = std::sqrt((double)x2) * infl, dq = std::sqrt((double)e2) * infl,
                         tq = std::sqrt((double)t2) * infl;
            double e = dq * C.r_c + tq * C.r_d + gA * tq * C.r_t + gB * nq * C.r_c +
                       2 * u * (nq * C.r_c + tq * C.r_t) * (1 + gA + gB) +
                       std::ldexp(1.0, -90) * (1 + nq) * (1 + C.r_c + C.r_xn);
            err[i] = (float)(e * (1 + std::ldexp(1.0, -10)));
            if (!std::isfinite(err[i])) return false;
            thr[i] = -std::numeric_limits<float>::infinity();
            n[i] = 0;
        }
        return true;
    }

    // Keeps only the entries of query i's buffer with k~ >= t - 2E, t <= its k-th
    // best k~.  Returns the new count.
    size_t prune(const Screen& S, size_t i, size_t m) {
        float* kb = keys.data() + i * S.cap;
        uint32_t* rb = rows.data() + i * S.cap;
        thr[i] = std::max(thr[i], round_down((double)S.B.lower_kth(kb, m, S.k) - 2.0 * (double)err[i]));
        size_t w = 0;
        const float t = thr[i];
        for (size_t u = 0; u < m; ++u) {  // branch-free: about half the entries go
            const float key = kb[u];
            const uint32_t r = rb[u];
            kb[w] = key;
            rb[w] = r;
            w += key >= t;
        }
        return w;
    }

    // THE SCREENING LOOP: bf16 scores of one corpus block against the panel; per
    // query, rows at or above the running threshold enter the buffer.
    bool process(const Screen& S, const SBlock& bl, bool first) {
        const size_t nbk = bl.g1 - bl.g0;
        const Segment& sg = S.segs[bl.seg];
        float* T = tile.data();
        S.B.dot_tile_bf16(qb.data(), S.C.dp, P, S.C.x.data() + (S.C.pstart[bl.seg] + bl.r0) * S.C.dp / 2, nbk, S.C.dp,
                          T, S.nb);
        const int64_t base = sg.id_offset + (int64_t)bl.r0;
        for (size_t i = 0; i < P; ++i) {
            float* s = T + i * S.nb;
            if (S.metric == Metric::Cosine) {
                const float* xn = S.C.xn.data() + bl.g0;
                for (size_t j = 0; j < nbk; ++j) s[j] *= xn[j];
            }
            const int64_t* eb = nullptr;
            const int64_t* ee = nullptr;
            if (S.excl.indptr) {
                eb = S.ex_sorted.data() + S.excl.indptr[q0 + i];
                ee = S.ex_sorted.data() + S.excl.indptr[q0 + i + 1];
            }
            if (first && nbk >= S.k + size_t(ee - eb)) {
                // A starting threshold from the first block: at least k + m of its keys
                // reach t0 (m = the query's exclusions), so at least k non-excluded rows do.
                const float t0 = S.B.lower_kth(s, nbk, S.k + size_t(ee - eb));
                thr[i] = round_down((double)t0 - 2.0 * (double)err[i]);
            }
            const size_t c = S.K.filter_ge(s, nbk, thr[i], surv.data());
            float* kb = keys.data() + i * S.cap;
            uint32_t* rb = rows.data() + i * S.cap;
            for (size_t u = 0; u < c; ++u) {
                const float key = s[surv[u]];
                if (key < thr[i]) continue;  // the threshold rose inside this row
                if (eb != ee && std::binary_search(eb, ee, base + (int64_t)surv[u])) continue;
                if (n[i] == S.cap) {
                    n[i] = prune(S, i, n[i]);
                    if (n[i] > S.k + (S.cap - S.k) / 2) return false;  // near-ties: give up
                    if (key < thr[i]) continue;
                }
                kb[n[i]] = key;
                rb[n[i]++] = uint32_t(bl.g0 + surv[u]);
            }
        }
        return true;
    }

    // Sorts `pairs` by row: a counting sort over the rows when they are few compared
    // with the pairs (one pass), std::sort otherwise.
    void sort_pairs(const Screen& S) {
        const size_t total = S.C.start.back();
        if (total > 8 * pairs.size() + 4096) {
            std::sort(pairs.begin(), pairs.end());
            return;
        }
        counts.assign(total + 1, 0);
        for (uint64_t pr : pairs) ++counts[size_t(pr >> 32) + 1];
        for (size_t g = 0; g < total; ++g) counts[g + 1] += counts[g];
        sorted.resize(pairs.size());
        for (uint64_t pr : pairs) sorted[counts[size_t(pr >> 32)]++] = pr;
        pairs.swap(sorted);
    }

    // Rescores the panel's survivors with the fp32 kernel and writes the results.
    // The (query, row) pairs go in corpus order, so each survivor row is read once
    // for all the panel's queries that kept it, in a near-sequential pass over the
    // corpus, rather than at random per query; dot_pairs runs four pairs side by side.
    void finish(const Screen& S, float* scores, int64_t* ids) {
        pairs.clear();
        for (size_t i = 0; i < P; ++i) {
            if (n[i] > S.k) n[i] = prune(S, i, n[i]);
            const uint32_t* rb = rows.data() + i * S.cap;
            for (size_t u = 0; u < n[i]; ++u) pairs.push_back((uint64_t(rb[u]) << 32) | uint64_t(i * S.cap + u));
        }
        sort_pairs(S);
        const size_t np = pairs.size();
        qptrs.resize(np);
        ptrs.resize(np);
        out.resize(np);
        for (size_t a = 0, seg = 0; a < np; ++seg) {  // one dot_pairs call per segment (one element type)
            const Segment& sg = S.segs[seg];
            const char* base = static_cast<const char*>(sg.data);
            const size_t rb = sg.ld * dtype_size(sg.dtype);
            size_t b = a;
            for (; b < np && size_t(pairs[b] >> 32) < S.C.start[seg + 1]; ++b) {
                qptrs[b] = q.data() + (uint32_t(pairs[b]) / S.cap) * S.d;
                ptrs[b] = base + (size_t(pairs[b] >> 32) - S.C.start[seg]) * rb;
            }
            if (b > a) S.K.dot_pairs(qptrs.data() + a, ptrs.data() + a, b - a, S.d, sg.dtype, out.data() + a);
            a = b;
        }
        for (size_t t = 0; t < np; ++t) {  // the exact key replaces the screened one
            const size_t g = size_t(pairs[t] >> 32);
            keys[uint32_t(pairs[t])] = S.metric == Metric::Cosine ? out[t] * S.C.xn[g] : out[t];
        }
        for (size_t i = 0; i < P; ++i) {
            const float* kb = keys.data() + i * S.cap;
            const uint32_t* rb = rows.data() + i * S.cap;
            merged.clear();
            for (size_t u = 0; u < n[i]; ++u) {
                const size_t g = rb[u];
                const size_t sgi = size_t(std::upper_bound(S.C.start.begin(), S.C.start.end(), g) - S.C.start.begin()) - 1;
                merged.push_back(detail::make_cand(kb[u], S.segs[sgi].id_offset + int64_t(g - S.C.start[sgi])));
            }
            detail::write_row(merged, S.k, S.metric, scores + (q0 + i) * S.k, ids + (q0 + i) * S.k);
        }
    }
};

void Reuse::trim() {
    size_t bytes = x.capacity() * 4 + xn.capacity() * 4;
    for (const auto& p : panels)
        if (p) bytes += p->bytes();
    if (bytes > kKeepBytes) *this = Reuse();
}

}  // namespace

void set_screen_mode(int mode) {
    if (mode < 0 || mode > 2) throw std::invalid_argument("screen mode must be 0 (off), 1 (auto) or 2 (always)");
    mode_ref().store(mode);
}
int screen_mode() { return mode_ref().load(); }
void screen_counts(uint64_t* screened, uint64_t* fallbacks) {
    *screened = g_screened.load();
    *fallbacks = g_fallbacks.load();
}

namespace detail {

bool topk_search_screened(const void* Q, DType qt, size_t nq, size_t ldq, size_t d,
                          const std::vector<Segment>& segments, Metric metric, size_t k, const Exclusions& excl,
                          const std::vector<int64_t>& ex_sorted, float* scores, int64_t* ids, int num_threads,
                          uint64_t reuse_token) {
    const int mode = screen_mode();
    const Bf16Kernels* B = bf16_kernels();
    if (mode == 0 || metric == Metric::L2 || !B || !kernels().dot_pairs) return false;
    // Buffers kept by the calling thread between searches (up to kKeepBytes).
    thread_local Reuse keep;
    Bf16Corpus C;
    C.x.swap(keep.x);
    C.xn.swap(keep.xn);
    struct GiveBack {  // hands the buffers back on every exit
        Reuse& r;
        Bf16Corpus& c;
        ~GiveBack() {
            c.x.swap(r.x);
            c.xn.swap(r.xn);
            r.trim();
        }
    } give_back{keep, C};
    C.dp = (d + 31) / 32 * 32;
    C.start.push_back(0);
    C.pstart.push_back(0);
    for (const Segment& s : segments) {
        C.start.push_back(C.start.back() + s.rows);
        C.pstart.push_back(C.pstart.back() + (s.rows + 15) / 16 * 16);
    }
    const size_t total = C.start.back();
    const double copy_bytes = double(C.pstart.back()) * double(C.dp) * 2;
    if (total == 0 || copy_bytes > double(mode == 1 ? kAutoBf16Bytes : kMaxBf16Bytes)) return false;
    int nt = std::max(1, num_threads);
    if (double(nq) * double(total) * double(d) < 4e6) nt = 1;
    if (mode == 1 && (nq < kMinQueries || total < 4 * k + 256 || double(nq) * double(total) * double(d) < 2e7))
        return false;

    // panels: equal sizes, a multiple of the thread count; blocks: the score tile stays near 256 KiB
    size_t npanels = (nq + kMaxPanel - 1) / kMaxPanel;
    npanels = std::min(nq, (npanels + nt - 1) / nt * nt);
    const size_t panel = (nq + npanels - 1) / npanels;
    npanels = (nq + panel - 1) / panel;
    const size_t nb = std::max<size_t>(64, std::min<size_t>(1024, (size_t(64) << 10) / panel)) / 64 * 64;
    std::vector<SBlock> blocks;
    for (size_t s = 0; s < segments.size(); ++s)
        for (size_t r = 0; r < segments[s].rows; r += nb)
            blocks.push_back(SBlock{s, C.start[s] + r, C.start[s] + std::min(segments[s].rows, r + nb), r});

    g_screened.fetch_add(1);
    const Kernels& K = kernels();
    std::vector<double> key = corpus_key(segments, d, metric);
    if (reuse_token != 0 && keep.token == reuse_token && keep.key == key && C.x.size() >= C.pstart.back() * C.dp / 2 &&
        (metric != Metric::Cosine || C.xn.size() >= total)) {
        C.r_c = keep.r_c, C.r_d = keep.r_d, C.r_t = keep.r_t, C.r_xn = keep.r_xn;  // the copy made last call
    } else {
        keep.token = 0;
        build_corpus(K, *B, segments, d, metric, blocks, nt, C);
        if (!C.ok) {
            g_fallbacks.fetch_add(1);
            return false;
        }
        keep.token = reuse_token;
        keep.key.swap(key);
        keep.r_c = C.r_c, keep.r_d = C.r_d, keep.r_t = C.r_t, keep.r_xn = C.r_xn;
    }
    // buffer per query; a buffer that cannot fill (k near the corpus size) never prunes early
    const size_t cap = std::min(4 * k + 256, total + 1);
    if (double(panel) * double(cap) >= 4294967296.0) return false;  // slots must fit 32 bits
    std::atomic<bool> failed{false};
    Screen S{K, *B, Q, qt, ldq, d, k, cap, nb, metric, segments, excl, ex_sorted, blocks, C, failed};
    std::vector<std::unique_ptr<SPanel>>& state = keep.panels;
    if (state.size() < size_t(nt)) state.resize(nt);
    for (int t = 0; t < nt; ++t) {
        if (!state[t]) state[t].reset(new SPanel);
        state[t]->setup(S, panel);
    }
    parallel_for(npanels, nt, 1, [&](size_t p0, size_t p1, int tid) {
        SPanel& pn = *state[tid];
        for (size_t p = p0; p < p1 && !failed.load(std::memory_order_relaxed); ++p) {
            if (!pn.load(S, p * panel, std::min(panel, nq - p * panel))) {
                failed.store(true);
                return;
            }
            for (size_t b = 0; b < blocks.size(); ++b)
                if (failed.load(std::memory_order_relaxed) || !pn.process(S, blocks[b], b == 0)) {
                    failed.store(true);
                    return;
                }
            pn.finish(S, scores, ids);
        }
    });
    if (failed.load()) {
        g_fallbacks.fetch_add(1);
        return false;
    }
    return true;
}

}  // namespace detail
}  // namespace hn
