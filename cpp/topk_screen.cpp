// Exact top-k for IP / cosine / L2 with a low-precision screen: the same results as
// the plain search (topk.cpp), bit for bit, for a half (bf16) or a quarter
// (int8) of the fp32 kernel's instructions.
//
// 1. Queries and corpus are rounded to codes (x~ = s * code, simd/kernels.h:
//    ScreenKernels) and every key is first computed approximately, k~ = q~ . c~
//    (times 1/||c|| for cosine): bf16 codes with vdpbf16ps (two exact products
//    per fp32 lane and instruction), or int8 codes with vpdpbusd (four exact
//    products per int32 lane, summed exactly), on AVX-512 BF16 / VNNI CPUs.
// 2. A bound E on |k - k~|, where k is the key the plain fp32 path computes, is
//    derived below, per query and row (E <= Emax, the same with corpus maxima).
//    The kernel writes ub = k~ + E >= k.  Per query, t = the k-th largest ub among
//    the non-excluded rows; at least k rows then have k >= t - 2 Emax, so a row
//    can only be in the top k if its ub >= t - 2 Emax (see SPanel).  The
//    selection keeps those rows (a running lower bound of t, found by bisection
//    when a buffer prunes; a lower t only keeps more rows).
// 3. The survivors are rescored by Kernels::dot_pairs, the fp32 kernel's own
//    arithmetic (same FMA chain and sums as dot_tile: bit-identical keys), and
//    the top k taken with the usual rules (ties by ascending id, padding).
// 4. A query whose buffer stays full after pruning (near-ties, or a bound wide
//    for the data) is settled alone (SPanel::settle): its rows are rescored
//    exactly, its exact top k kept and its threshold raised to the exact k-th key;
//    the other queries and the rest of the search go on.
// 5. Auto mode (not mode 2) measures the rescoring: a panel that passes its budget
//    (rescore_budget: kMaxRescored of its query x row pairs, more for panels of a
//    few queries, pro rata while screening) is dropped and the queries not yet
//    screened run the plain path; the coded copy then remembers that this k does
//    not pay on this data for panels of that size or larger (no_prune_k).
// The search leaves everything to the plain path (same results) when a corpus
// norm is huge or not finite (the plain path's overflow / NaN handling then
// applies unchanged), or, for cosine, a row's fp32 squared norm over- or
// underflowed (its 1/||c|| comes from double then, and the bound's fp32 norms
// would not hold); a panel holding a query with a huge norm runs the plain path.
// The coded copy belongs to the caller's ScreenCache (an index) when one is
// passed: built by the first screened search, reused while the layout matches.
//
// The bound.  u = 2^-24 (fp32 unit roundoff); dq = q - q~, dc = c - c~ (measured
// per row in fp32: exactly for bf16, to one rounding for int8; for bf16 they
// include the values below 2^-126 that are flushed to 0 before vdpbf16ps could
// flush them).
//   q.c - q~.c~ = dq.c + q~.dc            -> |.| <= ||dq|| ||c|| + ||q~|| ||dc||
//   bf16 pass: each term passes through at most hA = dp + 5 fp32 additions (one
//     lane accumulates a score: dp/2 instructions of two additions each), products
//     exact -> |k~ - q~.c~| <= gA ||q~|| ||c~||,  gA = hA u / (1 - hA u)
//   int8 pass: the code products are summed exactly (int32; d <= 16384), then
//     k~ = fl(fl(I) * fl(s_q * s_c)): hA = 3 roundings of the exact q~.c~
//   fp32 kernel: ceil(d/16) FMAs per lane + a 4-level tree -> hB = ceil(d/16) + 5,
//     |k - q.c| <= gB ||q|| ||c||
//   cosine: both keys are multiplied by the same fp32 xn = 1/||c|| (rounded):
//     all terms above scale by xn, plus u |k| + u |k~| for the two roundings
//   underflow (flushed products / partial sums, DAZ): at most (2 dp + 8) 2^-126
//     per key before scaling; covered by 2^-90 (1 + ||q||)(1 + max xn||c|| + max xn).
//     (int8: scales are >= 2^-60, so no product of them underflows.)
// L2: the screen bounds the dot product s exactly as for IP (xn = 1); the key is
//   l2_key(||q||^2, ||c||^2, s) = -max(0, fl(fl(qsq + csq) - 2 s)) with the plain path's fp32
//   squared norms, nondecreasing in s, so the same expression of ub_s is an upper bound ub of
//   the key.  With y = fl(qsq + csq) - 2 ub_s and s >= ub_s - 2 Emax, one rounding of
//   y + 4 Emax gives key >= ub (1 + u) / (1 - u) - 4 Emax (1 + u) >= ub (1 + 4u) - 4 Emax (1 + 2u)
//   (ub <= 0): the threshold T below uses that in place of t - 2 Emax.
// With R_c = max xn||c||, R_d = max xn||dc||, R_t = max xn||c~|| over the corpus
// (xn = 1 for IP; a row's own xn||c||, xn||dc|| in place of R_c, R_d give its E):
//   Emax = ||dq|| R_c + ||q~|| R_d + gA ||q~|| R_t + gB ||q|| R_c
//       + 2u (||q|| R_c + ||q~|| R_t) (1 + gA + gB) + underflow,
// evaluated in double from fp32-accumulated squared norms, each norm inflated
// by (1 + 2^-7 + (d + 64) 2^-22) (covers the fp32 accumulation of the norms),
// and the total by 2^-10 more.  Norms are capped at 2^50 (squared 2^100), so no
// product, sum or rounding overflows.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "simd/kernels.h"
#include "threads.h"
#include "topk_internal.h"

namespace hn {

// Panel sizes with their own rescoring budget (panel_class, rescore_budget below).
constexpr int kPanelClasses = 3;

namespace detail {

// The corpus as codes (built by a search, kept by a ScreenCache or thrown away), with what the
// bound needs.
// Everything per row is indexed by packed row (segments padded to 16 rows; padding rows
// hold zeros).
struct CodedCorpus {
    size_t dp = 0, eb = 0;       // codes per row, bytes per code
    AlignedVec<uint32_t> x;      // packed by ScreenKernels::pack_rows (64-byte aligned: the kernels load whole lines)
    std::vector<float> xs;       // code scale
    std::vector<int32_t> xsum;   // sum of the codes (int8)
    std::vector<float> xn;       // cosine: the plain path's 1/||c|| (0 for a zero row)
    std::vector<float> xsq;      // L2: the plain path's fp32 squared norm
    std::vector<float> rho, del;  // bound coefficients: xn ||c||, xn ||c - c~|| (rounded up)
    std::vector<size_t> pstart;  // first packed row of each segment (multiples of 16), then the total
    std::vector<size_t> start;   // first row of each segment in the plain numbering, then the total

    // lanes (uint32) per packed row; where packed row r starts
    size_t lanes() const { return dp * eb / 4; }
    const uint32_t* packed(size_t r) const { return x.data() + r * lanes(); }
    ScreenRows rows(Metric metric) const {
        return {xs.data(), xsum.data(), metric == Metric::Cosine ? xn.data() : nullptr, rho.data(), del.data()};
    }
    double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
    float rho_max = 0, del_max = 0;
    bool ok = true;
    ScreenType type = ScreenType::Bf16;  // the codes
    // learnt from the data by the searches that used this copy, per panel class (rescore_budget):
    // auto mode does not screen panels of that class for k >= this (a search found the screen
    // rescoring more rows than that class's budget)
    mutable std::atomic<size_t> no_prune_k[kPanelClasses];

    CodedCorpus() {
        for (auto& k : no_prune_k) k.store(std::numeric_limits<size_t>::max());
    }
    std::vector<double> key;            // the layout it was built for (corpus_key)

    size_t bytes() const {
        return (x.capacity() + xs.capacity() + xsum.capacity() + xn.capacity() + xsq.capacity() + rho.capacity() +
                del.capacity()) * 4 +
               (pstart.capacity() + start.capacity() + key.capacity()) * 8;
    }
};

}  // namespace detail

namespace {

using detail::Cand;
using detail::CodedCorpus;

constexpr double kU = 1.0 / 16777216.0;                      // 2^-24
constexpr double kMaxSqnorm = 1.2676506002282294e30;          // 2^100
constexpr size_t kMaxCodeBytes = size_t(1) << 30;             // coded copy of the corpus, at most
constexpr size_t kMaxInt8Dim = 16384;                          // int32 sums of int8 products stay exact
// Auto mode.  A coded copy not kept from an earlier call (ScreenCache) is made by the call (a pass
// over the corpus); it pays for itself
// with enough queries on a corpus that stays in cache.  Measured with bf16 (2 threads, d = 384,
// k = 100): 5k rows: 0.6x at 16 queries, 1.2x at 48, 1.5x at 96; 10k-40k rows: 0.8-0.9x at 64
// queries, 1.4x at 256; 100k rows (77 MB copy): 0.3x at 64, 0.8x at 256.
constexpr size_t kAutoCodeBytes = size_t(32) << 20;
constexpr size_t kMinQueries = 96;
// Above kAutoCodeBytes (up to kMaxCodeBytes) auto mode screens only with int8 codes: a copy
// kept by an index (ScreenCache) is reused as soon as it exists; a new one kept by the index is
// built by a search of at least kMinQueriesLarge queries; a one-shot search's temporary is
// decided by the estimate, as below the line (estimate_rescored: measured, 128 queries, k = 100,
// forced screen against the plain path, the temporary's build included: 50,000 x 768 rows
// 0.68-0.99x, 200,000 x 384 and x 768 rows 0.59-0.89x, isotropic and SciFact-tiled; at 64
// queries 1.10-1.25x, where kMinQueries keeps the plain path).
// Measured (int8, clustered unit rows 200,000 x 384, a 77 MB copy, k = 100, 2 threads, one-shot
// hn.topk with its temporary copy / plain): AMX tiles 0.66x at 256 queries, 0.40x at 512,
// 0.24x at 2,000; the VNNI loop 0.84x, 0.48x, 0.37x.  Earlier, before AMX (SciFact MiniLM rows
// tiled to 150,000 x 384, 256 queries, VNNI): 1.25x for the search that builds an index's copy,
// 0.62x for every later one.
constexpr size_t kMinQueriesLarge = 256;
// An index (ScreenCache) builds its copy at its kRepeatSearches-th search whatever the number
// of queries: searched that often, it is in repeated use, and with the copy a search of a few
// queries reads a quarter of the fp32 bytes (measured, 200,000 x 384 clustered rows, 2 threads,
// AMX: 1 query 3.5 ms against 12.6 on the plain path, 16 queries 7.5 against 37.5).
constexpr size_t kRepeatSearches = 3;
// Queries per panel (the unit of work a thread takes).  Each panel streams the whole coded
// copy once, so on a corpus beyond the caches the panel size sets the memory traffic.
// Measured (a copy kept by an index, int8 on AMX, 2 threads, interleaved calls), 128 against 64
// queries: 1,000,000 x 384 clustered rows, 2,000 queries, k = 110: 0.81x the time (256: 0.82x);
// 50,000 x 384 isotropic, k = 100: 0.95x at 512 queries, 0.87x at 4,096; 200,000 x 768
// SciFact-tiled, 2,000 queries: 0.93x; 200,000 x 384 at 512 and 20,000 x 768 at 1,024 queries:
// 1.01-1.02x.  (Before AMX, on 40,000 random rows in cache, 64 was better than 256.)
constexpr size_t kMaxPanel = 128;
// Auto mode stops screening a search whose panel rescored (fp32 dot products, settle()
// included) more than this fraction of its query x row pairs.
// Measured since the plain path copies misaligned blocks (int8 with the copy kept by an index,
// 20,000 rows, d = 384 and 768, 512 queries, k = 100, ip and l2, 2 threads; the fraction
// ranged from 0.013 on SciFact-tiled rows to 0.081 on isotropic Gaussian rows at d = 768):
// screened / plain time is about 0.27 + 12 x that fraction on AMX tiles (0.42 at 0.013,
// 0.97 at 0.060, 1.22 at 0.081) and 0.3 + 14 x on the VNNI loop (0.46, 0.98, 1.55): both
// break even between 0.05 and 0.06.  (Before the aligned copy the plain path at d = 768 was
// about 1.3x slower and AMX's break-even sat near 0.1.)
constexpr double kMaxRescored = 0.05;
constexpr double kMaxRescoredAmx = 0.05;
// Panels of a few queries are bound by memory, not arithmetic: the plain path streams 4d bytes
// per row for them and the screen d (int8), so the screen pays with more rescoring there.
// Measured (index copy kept, 200,000 x 768 rows, k = 1,000, 2 threads, AMX): screened / plain
// time 0.65 / 0.85 at fractions 0.057 / 0.10 for panels of 1 query, 0.60 / 0.82 for 2 (break-even
// near 0.13); 1.00 / 1.45 for 8 (break-even near 0.06), 1.11 / 1.83 for 32.  The budget per
// panel class (the class also indexes CodedCorpus::no_prune_k): up to 2 queries 0.12, up to 4
// 0.08, the rest kMaxRescored.
int panel_class(size_t P) { return P <= 2 ? 0 : P <= 4 ? 1 : 2; }  // < kPanelClasses
double rescore_budget(size_t P, bool amx) {
    static const double small[2] = {0.12, 0.08};
    const int c = panel_class(P);
    return c < 2 ? small[c] : amx ? kMaxRescoredAmx : kMaxRescored;
}
// The same measurement as a model for the estimate (estimate_rescored) of a search that has no
// copy yet: screened / plain time = base + slope x fraction, and building the copy costs about
// what the plain path takes for `build` queries (measured 33 at d = 384, 43 at d = 768,
// 20,000 rows, int8 on AMX).  A search with a temporary copy screens only when it wins the
// build back.
struct ScreenCost {
    double base, slope;  // screened / plain time = base + slope x fraction
    double build;        // building the copy: the plain time of this many queries
};
constexpr ScreenCost kCostVnni{0.3, 14, 32}, kCostAmx{0.27, 12, 32};
// The screen without AMX on AMD Zen 4, whose AVX-512 runs 512-bit operations in two halves
// (the screen and the plain path's fp32 alike): the rescoring costs less against the plain
// path there.  Fitted with int8 codes on the VNNI loop (least squares, one-shot hn.topk with
// its temporary copy against the plain path, 2 threads, k = 100, the estimate as the
// fraction; bf16 codes, for large k, use the same model, as on Intel): screened / plain = 0.31 + 9.5 x
// fraction + 24 / queries over 32 shapes (isotropic and SciFact-tiled, N 20,000 / 50,000,
// d 384 / 768, 96 to 512 queries; largest error 0.14).  With the Intel constants auto kept the
// plain path at 20,000 x 768 isotropic rows and 128 queries (estimate 0.043), where the
// screen ran in 0.80x its time.
constexpr ScreenCost kCostAmd{0.31, 9.5, 24};
const ScreenCost& screen_cost(bool amx) { return amx ? kCostAmx : cpu_is_amd() ? kCostAmd : kCostVnni; }

int initial_mode() {
    const char* env = std::getenv("HARDNEG_SCREEN");
    if (env && env[0] >= '0' && env[0] <= '2' && env[1] == '\0') return env[0] - '0';
    return 1;
}
std::atomic<int>& mode_ref() {
    static std::atomic<int> m{initial_mode()};
    return m;
}
std::atomic<uint64_t> g_screened{0}, g_fallbacks{0}, g_extended{0};
// screen_last(): one search's report, published whole when it returns
std::mutex g_last_mu;
ScreenReport g_last;

// Which codes: 0 = auto (pick_kernels), else a ScreenType.
int initial_type() {
    const char* env = std::getenv("HARDNEG_SCREEN_TYPE");
    if (env && std::strcmp(env, "bf16") == 0) return int(ScreenType::Bf16);
    if (env && std::strcmp(env, "int8") == 0) return int(ScreenType::Int8);
    return 0;
}
std::atomic<int>& type_ref() {
    static std::atomic<int> t{initial_type()};
    return t;
}

// Time of one screening pass of B (best of 5): 32 queries x 2,048 rows, d = 384, codes
// of fixed pseudo-random data.
double pass_seconds(const ScreenKernels& B) {
    const size_t d = 384, dp = (d + B.align - 1) / B.align * B.align, nq = 32, nx = 2048;
    std::vector<float> xq(nq * d), xc(nx * d), qs(nq), cs(nx), x2(nx), e2(nx), t2(nx), T(nq * nx);
    uint32_t h = 12345;
    for (float* v : {xq.data(), xc.data()})
        for (size_t j = 0; j < (v == xq.data() ? xq.size() : xc.size()); ++j) {
            h = h * 1664525u + 1013904223u;
            v[j] = float(int(h >> 9) - (1 << 22)) / float(1 << 22);
        }
    std::vector<uint8_t> cq(nq * dp * B.elem_bytes), cc(nx * dp * B.elem_bytes);
    std::vector<uint32_t> packed(nx * dp * B.elem_bytes / 4);
    std::vector<int32_t> csum(nx);
    B.quantize_rows(xq.data(), d, nq, d, dp, true, cq.data(), qs.data(), nullptr, x2.data(), e2.data(), t2.data());
    B.quantize_rows(xc.data(), d, nx, d, dp, false, cc.data(), cs.data(), csum.data(), x2.data(), e2.data(),
                    t2.data());
    B.pack_rows(cc.data(), nx, dp, packed.data());
    const ScreenQueries Qc{cq.data(), qs.data(), nullptr, nullptr, nullptr};
    const ScreenRows R{cs.data(), csum.data(), nullptr, nullptr, nullptr};
    double best = HUGE_VAL;
    for (int r = 0; r < 5; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        B.dot_tile(Qc, nq, packed.data(), nx, dp, R, T.data(), nx);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

// Whether bf16 codes screen fast enough on this CPU to be worth their tighter bound: their
// pass has twice int8's instructions (measured 1.6x its time on AMD EPYC), but some CPUs
// run vdpbf16ps at the fp32 FMA rate or below (an Intel Xeon here: bf16 screened 1.4x the
// plain time on SciFact at k = 100, int8 0.6x).  Measured once per process.
bool bf16_pays(const ScreenKernels* i8, const ScreenKernels* b16) {
    static const bool pays = !i8 || !b16 || pass_seconds(*b16) < 2.5 * pass_seconds(*i8);
    return pays;
}

// The kernels a search of dimension d for the top k of n rows uses (null: no screen).
// Auto: int8 halves the screening pass, but its bound is about 5x bf16's, so about
// k more rows per query are rescored in fp32; it pays when the pass dominates.
// Measured (SciFact, 5,183 x 384, 809 queries, 1-2 threads): int8 / bf16 time 0.64 at
// k = 1, 0.82 at k = 10, 0.86 at k = 20, 0.96 at k = 42, 1.07 at k = 64, 1.25 at k = 105.
// The pass grows with n and the extra rescoring with k: int8 when 128 k <= n, or
// whenever bf16's pass is not fast on this CPU (bf16_pays).
const ScreenKernels* pick_kernels(size_t d, size_t k, size_t n) {
    const int t = type_ref().load();
    const ScreenKernels* i8 = d <= kMaxInt8Dim ? screen_kernels(ScreenType::Int8) : nullptr;
    const ScreenKernels* b16 = screen_kernels(ScreenType::Bf16);
    if (t == int(ScreenType::Int8)) return i8;
    if (t == int(ScreenType::Bf16)) return b16;
    if (i8 && (!b16 || 128 * k <= n || !bf16_pays(i8, b16))) return i8;
    return b16;
}

// Largest float <= v.
float round_down(double v) {
    float f = (float)v;
    if ((double)f > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
}

// Rows g0 .. g1 of the coded corpus; they come from segment `seg`, rows r0 ...
struct SBlock {
    size_t seg, g0, g1, r0;
};

// Largest float >= v (v >= 0).
float round_up(double v) {
    float f = (float)v;
    if ((double)f < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    return f;
}

// Codes the corpus into C (its dp, eb, start and pstart set).  With a base (a copy of the
// same corpus before index.add appended segments: its segments are C's first ones, unmoved),
// the base's rows are copied and only the segments after them are coded: every per-row value
// depends on its row alone and the corpus maxima are maxima, so the result equals coding the
// whole corpus.
void build_corpus(const Kernels& K, const ScreenKernels& B, const std::vector<Segment>& segs, size_t d,
                  Metric metric, const std::vector<SBlock>& blocks, int nt, CodedCorpus& C,
                  const CodedCorpus* base = nullptr) {
    const size_t np = C.pstart.back();
    const size_t first = base ? base->start.size() - 1 : 0;  // the first segment to code
    const size_t kept = base ? base->pstart.back() : 0;      // packed rows copied from the base
    auto fill = [&](auto& v, const auto& from) {  // np per-row values: the base's, then zeros
        v.assign(np, 0);
        if (base) std::copy(from.begin(), from.begin() + kept, v.begin());
    };
    if (base) {  // one pass over the kept codes (no zeroing first)
        C.x.clear();
        C.x.reserve(np * C.lanes());
        C.x.insert(C.x.end(), base->x.begin(), base->x.begin() + kept * C.lanes());
    }
    C.x.resize(np * C.lanes());
    fill(C.xs, base ? base->xs : C.xs);
    fill(C.xsum, base ? base->xsum : C.xsum);
    fill(C.rho, base ? base->rho : C.rho);
    fill(C.del, base ? base->del : C.del);
    if (metric == Metric::Cosine) fill(C.xn, base ? base->xn : C.xn);
    if (metric == Metric::L2) fill(C.xsq, base ? base->xsq : C.xsq);
    if (base) {
        C.r_c = base->r_c, C.r_d = base->r_d, C.r_t = base->r_t, C.r_xn = base->r_xn;  // (base is ok: kept)
        for (size_t c = 0; c < kPanelClasses; ++c) C.no_prune_k[c].store(base->no_prune_k[c].load());
    }
    std::vector<size_t> todo;  // the blocks to code
    for (size_t b = 0; b < blocks.size(); ++b)
        if (blocks[b].seg >= first) todo.push_back(b);
    const double infl = 1.0 + std::ldexp(1.0, -7) + double(d + 64) * std::ldexp(1.0, -22);
    struct Acc {
        double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
        bool ok = true;
    };
    std::vector<Acc> acc(nt);
    parallel_for(todo.size(), nt, 1, [&](size_t b0, size_t b1, int tid) {
        std::vector<float> x2, e2, t2, sq, tmp(d);
        std::vector<uint8_t> rm;
        Acc& a = acc[tid];
        for (size_t b = b0; b < b1; ++b) {
            const SBlock& bl = blocks[todo[b]];
            const Segment& sg = segs[bl.seg];
            const size_t n = bl.g1 - bl.g0, es = dtype_size(sg.dtype);
            const char* X = static_cast<const char*>(sg.data) + bl.r0 * sg.ld * es;
            x2.resize(n), e2.resize(n), t2.resize(n), sq.resize(n);
            rm.resize(n * C.dp * C.eb);
            const size_t pr = C.pstart[bl.seg] + bl.r0;  // first packed row
            float* xs = C.xs.data() + pr;
            int32_t* xsum = C.xsum.data() + pr;
            if (sg.dtype == DType::F32) {
                B.quantize_rows(reinterpret_cast<const float*>(X), sg.ld, n, d, C.dp, false, rm.data(), xs, xsum,
                                x2.data(), e2.data(), t2.data());
            } else {
                for (size_t j = 0; j < n; ++j) {
                    K.to_f32(X + j * sg.ld * es, sg.dtype, d, tmp.data());
                    B.quantize_rows(tmp.data(), d, 1, d, C.dp, false, rm.data() + j * C.dp * C.eb, xs + j, xsum + j,
                                    &x2[j], &e2[j], &t2[j]);
                }
            }
            B.pack_rows(rm.data(), n, C.dp, C.x.data() + pr * C.lanes());
            if (metric != Metric::IP) {  // exactly the plain path's squared norms and scale factors
                if (sg.sqnorms) std::copy(sg.sqnorms + bl.r0, sg.sqnorms + bl.r0 + n, sq.begin());
                else K.sqnorm_rows(X, sg.ld, n, d, sg.dtype, sq.data());
            }
            if (metric == Metric::L2)
                for (size_t j = 0; j < n; ++j) {
                    C.xsq[pr + j] = sq[j];
                    if (!(sq[j] <= float(kMaxSqnorm))) a.ok = false;  // huge or not finite: the plain path
                }
            if (metric == Metric::Cosine) {
                for (size_t j = 0; j < n; ++j) {
                    const char* xj = X + j * sg.ld * es;
                    C.xn[pr + j] = detail::inv_norm(K, sq[j], xj, sg.dtype, d);
                    // a row whose squares over/underflow in fp32: the bound below (from fp32
                    // squared norms) does not hold for it; the plain path handles it exactly
                    if (!detail::safe_sqnorm(sq[j]) && C.xn[pr + j] != 0.0f) a.ok = false;
                }
            }
            for (size_t j = 0; j < n; ++j) {
                if (!(x2[j] <= kMaxSqnorm && e2[j] <= kMaxSqnorm && t2[j] <= 4 * kMaxSqnorm)) a.ok = false;
                const double xn = metric == Metric::Cosine ? (double)C.xn[pr + j] : 1.0;
                const double rc = xn * std::sqrt((double)x2[j]) * infl, rd = xn * std::sqrt((double)e2[j]) * infl;
                C.rho[pr + j] = round_up(rc);
                C.del[pr + j] = round_up(rd);
                a.r_c = std::max(a.r_c, rc);
                a.r_d = std::max(a.r_d, rd);
                a.r_t = std::max(a.r_t, xn * std::sqrt((double)t2[j]) * infl);
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
    C.ok = C.ok && std::isfinite(C.r_c) && std::isfinite(C.r_d) && std::isfinite(C.r_t) && std::isfinite(C.r_xn);
    C.rho_max = round_up(C.r_c), C.del_max = round_up(C.r_d);  // the maxima of rho and del
}

// The bound's coefficients for one query (the formula above): E = a rho + b del + e0 for a
// row with rho = xn ||c||, del = xn ||c - c~||, from the query's fp32-accumulated squared
// norms x2 = ||q||^2, e2 = ||q - q~||^2, t2 = ||q~||^2 and the corpus maxima R_c, R_d, R_t and
// max xn.  Not yet rounded up (the caller adds its slack).
struct QueryBound {
    double a, b, e0;
};
QueryBound query_bound(const ScreenKernels& B, size_t d_, size_t dp, float x2, float e2, float t2, double r_c,
                       double r_d, double r_t, double r_xn) {
    const double u = kU, d = double(d_);
    const double hA = B.type == ScreenType::Int8 ? 3.0 : double(dp) + 5, hB = std::ceil(d / 16) + 5;
    const double gA = hA * u / (1 - hA * u), gB = hB * u / (1 - hB * u);
    const double infl = 1.0 + std::ldexp(1.0, -7) + (d + 64) * std::ldexp(1.0, -22);
    const double nq = std::sqrt((double)x2) * infl, dq = std::sqrt((double)e2) * infl, tq = std::sqrt((double)t2) * infl;
    // E = a rho + b del + e0: rho, del the row's; the small terms with corpus maxima
    const double a = dq + gB * nq + 2 * u * nq * (1 + gA + gB);
    const double b = tq;
    const double mag = 2 * (tq * r_t + nq * r_c + tq * r_d);  // >= |k~|, |ub| (ub's rounding: 4 u mag)
    const double e0 = gA * tq * r_t + 2 * u * tq * r_t * (1 + gA + gB) +
                      std::ldexp(1.0, -90) * (1 + nq) * (1 + r_c + r_xn) + 4 * u * mag;
    return {a, b, e0};
}

// Auto mode's guess, before a coded copy is built, of the fraction of query x row pairs the
// screen would rescore (the quantity kMaxRescored caps), from a sample: up to 8 queries spread
// over the batch and m rows spread over the corpus, with m large enough that the k-th best
// key of the corpus is about the (k m / N)-th of the sample.  Each sampled row is coded as the
// copy would code it (its rho, del and the sample's maxima stand in for the corpus's); a row is
// counted when its key reaches t - 1.5 Emax (L2: t - 3 Emax), t the query's estimated k-th key.
// The screen admits rows down to t - 2 Emax (floor_of), but settle() soon raises a query's
// threshold to an exact key, and then only rows whose bound reaches it are rescored.  Measured
// against the screen's own count (screen_last(): settles and the final rescoring; int8 on AMX,
// 20,000-50,000 rows, d = 384 and 768, ip and l2, isotropic and SciFact-tiled rows, 128 and 512
// queries, k = 100): 0.56-1.82x of it, median 0.78.  (Counted
// at 2 Emax, as before settle() rescored part by part, it read 1.0-2.2x the count, isotropic
// rows at d = 768 the most, and auto skipped searches the screen won: 20,000 x 768 isotropic,
// 512 queries, screen forced at 0.74x the plain time.)  Negative when the sample cannot tell
// (a top k too rare for it, a huge norm): the search then screens and measures.  Costs a read of
// m rows, their codings and an 8 x m tile of the fp32 kernel, split over the threads, in one pass.
constexpr size_t kEstimateRows = 8192;
double estimate_rescored(const Kernels& K, const ScreenKernels& B, const void* Q, DType qt, size_t ldq, size_t nq,
                         size_t d, const std::vector<Segment>& segs, size_t total, Metric metric, size_t k, int nt) {
    const size_t ldg = (d + 15) / 16 * 16;
    const size_t m = std::min(total, std::min<size_t>(kEstimateRows, std::max<size_t>(1024, (6 * total + k - 1) / k)));
    const double rank = double(k) * double(m) / double(total);  // the k-th best of the corpus, in the sample
    if (rank < 4 || k == 0) return -1;
    const size_t dp = (d + B.align - 1) / B.align * B.align;
    // the probe queries (their codes' sums give their Emax below, once the sample's maxima are known)
    const size_t np = std::min<size_t>(nq, 8);
    detail::AlignedVec<float> q(np * ldg, 0.0f);
    std::vector<float> qn(np), qx2(np), qe2(np), qt2(np);
    std::vector<uint8_t> qcode(dp * B.elem_bytes);
    for (size_t i = 0; i < np; ++i) {
        float scale;
        detail::load_query(K, Q, qt, ldq, d, metric, i * nq / np, q.data() + i * ldg, &qn[i]);
        B.quantize_rows(q.data() + i * ldg, d, 1, d, dp, true, qcode.data(), &scale, nullptr, &qx2[i], &qe2[i],
                        &qt2[i]);
        if (!(qx2[i] <= kMaxSqnorm && qe2[i] <= kMaxSqnorm && qt2[i] <= 4 * kMaxSqnorm && qn[i] <= float(kMaxSqnorm)))
            return -1;
    }
    // One pass over the sample, chunk by chunk: each sampled row (every (total / m)-th) is
    // converted to fp32 into a small buffer of the thread's, coded as the copy would code it
    // (what the bound needs of it), and its exact dot products with the probes come from the
    // plain path's kernel while it is in cache.  The rows come from memory once: the sample's
    // cost is mostly that read (measured: 0.9 ms in all for 3,000 rows of 384 floats, 0.5 of it
    // the read, 2 threads; gathered first and tiled after, 1.5-1.8 ms).
    constexpr size_t kChunk = 64;
    std::vector<float> T(np * m), rowsq(m), rowxn(m, 1.0f);
    std::vector<double> rmax(4 * size_t(std::max(1, nt)), 0.0);  // per thread: R_c, R_d, R_t, max xn
    std::atomic<bool> bad{false};
    const double infl = 1.0 + std::ldexp(1.0, -7) + double(d + 64) * std::ldexp(1.0, -22);
    std::vector<detail::AlignedVec<float>> gbuf(size_t(std::max(1, nt)));  // per thread: kChunk rows
    std::vector<std::vector<uint8_t>> cbuf(gbuf.size());                     // per thread: one row's codes
    parallel_for(m, nt, kChunk, [&](size_t j0, size_t j1, int tid) {
        detail::AlignedVec<float>& g = gbuf[size_t(tid)];
        std::vector<uint8_t>& code = cbuf[size_t(tid)];
        if (g.empty()) {  // first chunk of this thread
            g.resize(kChunk * ldg);
            code.resize(dp * B.elem_bytes);
        }
        double* R = rmax.data() + 4 * size_t(tid);
        for (size_t c0 = j0; c0 < j1; c0 += kChunk) {
            const size_t c1 = std::min(j1, c0 + kChunk);
            size_t seg = 0, before = 0;  // the sampled row's segment, the rows before it (rows grow with j)
            for (size_t j = c0; j < c1; ++j) {
                const size_t row = size_t(double(j) * double(total) / double(m));  // in the whole corpus
                while (row >= before + segs[seg].rows) before += segs[seg++].rows;
                const size_t r = row - before;
                const Segment& sg = segs[seg];
                float* gj = g.data() + (j - c0) * ldg;
                K.to_f32(static_cast<const char*>(sg.data) + r * sg.ld * dtype_size(sg.dtype), sg.dtype, d, gj);
                float scale, x2, e2, t2;
                B.quantize_rows(gj, d, 1, d, dp, false, code.data(), &scale, nullptr, &x2, &e2, &t2);
                if (!(x2 <= kMaxSqnorm && e2 <= kMaxSqnorm && t2 <= 4 * kMaxSqnorm)) bad = true;
                rowsq[j] = x2;
                const double xn = metric == Metric::Cosine ? (x2 > 0 ? 1.0 / std::sqrt((double)x2) : 0.0) : 1.0;
                rowxn[j] = float(xn);
                R[0] = std::max(R[0], xn * std::sqrt((double)x2) * infl);
                R[1] = std::max(R[1], xn * std::sqrt((double)e2) * infl);
                R[2] = std::max(R[2], xn * std::sqrt((double)t2) * infl);
                R[3] = std::max(R[3], xn);
            }
            K.dot_tile(q.data(), ldg, np, g.data(), ldg, c1 - c0, d, DType::F32, T.data() + c0, m);
        }
    });
    if (bad) return -1;
    double r_c = 0, r_d = 0, r_t = 0, r_xn = 0;
    for (size_t t = 0; t < rmax.size(); t += 4)
        r_c = std::max(r_c, rmax[t]), r_d = std::max(r_d, rmax[t + 1]), r_t = std::max(r_t, rmax[t + 2]),
        r_xn = std::max(r_xn, rmax[t + 3]);
    // per probe: its Emax with the sample's maxima, its estimated k-th key t, and the rows that reach
    // t - 1.5 Emax (L2: t - 3 Emax)
    size_t counted = 0;
    std::vector<double> keys(m), sorted;
    const size_t kth = std::min(m - 1, size_t(rank) - 1);
    for (size_t i = 0; i < np; ++i) {
        const QueryBound qb = query_bound(B, d, dp, qx2[i], qe2[i], qt2[i], r_c, r_d, r_t, r_xn);
        const double emax = qb.a * r_c + qb.b * r_d + qb.e0;
        for (size_t j = 0; j < m; ++j) {
            const double s = T[i * m + j];
            keys[j] = metric == Metric::IP       ? s
                      : metric == Metric::Cosine ? s * rowxn[j]
                                                 : -std::max(0.0, (double)qn[i] + rowsq[j] - 2.0 * s);
        }
        double t;
        if (kth < 64) {  // the (kth + 1) largest in a min-heap: one compare per key for most
            sorted.assign(keys.begin(), keys.begin() + kth + 1);
            std::make_heap(sorted.begin(), sorted.end(), std::greater<double>());
            for (size_t j = kth + 1; j < m; ++j)
                if (keys[j] > sorted.front()) {
                    std::pop_heap(sorted.begin(), sorted.end(), std::greater<double>());
                    sorted.back() = keys[j];
                    std::push_heap(sorted.begin(), sorted.end(), std::greater<double>());
                }
            t = sorted.front();
        } else {
            sorted = keys;
            std::nth_element(sorted.begin(), sorted.begin() + kth, sorted.end(), std::greater<double>());
            t = sorted[kth];
        }
        const double cut = t - (metric == Metric::L2 ? 3.0 : 1.5) * emax;
        for (double v : keys) counted += v >= cut;
    }
    return double(counted) / (double(np) * double(m));
}

struct SPanel;

// Scratch a calling thread keeps between searches: large buffers allocated per
// call would fault in fresh pages every time (measurable on small searches).  Only
// capacity is kept (the panels, and the buffers of a temporary coded copy), never
// contents a later search reads: a coded copy is reused only through a ScreenCache.
constexpr size_t kKeepBytes = size_t(64) << 20;
struct Scratch {
    detail::AlignedVec<uint32_t> x;
    std::vector<float> xs, xn, xsq, rho, del;
    std::vector<int32_t> xsum;
    std::vector<std::unique_ptr<SPanel>> panels;
    void trim();
};

// What the coded copy depends on: every segment's layout, the metric and the codes (a
// ScreenCache checks it before handing its copy to a search).
std::vector<double> corpus_key(const std::vector<Segment>& segs, size_t d, Metric metric, ScreenType type) {
    std::vector<double> k{double(d), double(int(metric)), double(int(type))};
    for (const Segment& s : segs)
        for (double v : {double(reinterpret_cast<uintptr_t>(s.data)), double(int(s.dtype)), double(s.rows),
                         double(s.ld), double(reinterpret_cast<uintptr_t>(s.sqnorms)), double(s.id_offset)})
            k.push_back(v);
    return k;
}

// Auto's estimate for one-shot searches, remembered per corpus: hn.topk called in a loop over
// batches of queries against one corpus (the miner's and most users' pattern) samples the
// corpus once, not per call (the estimate is 0.5-1 ms, 4-7% of a 128-query search of 20,000
// to 50,000 rows).  An entry holds the corpus_key (addresses, types, sizes, metric, codes), k,
// and a fingerprint of the leading bytes of a few rows, so that an array allocated where a
// freed one was gets its own estimate.  The decision (screen, or not) is still made per call
// from the remembered fraction and the call's own number of queries.  A stale entry (rows
// rewritten in place) can only cost time: results are exact whichever path runs.
struct EstimateMemo {
    std::vector<double> key;
    uint64_t print;
    size_t k;
    double f;
    bool is(const std::vector<double>& key_, uint64_t print_, size_t k_) const {
        return k == k_ && print == print_ && key == key_;
    }
};
constexpr size_t kMemoEntries = 8;
std::mutex g_memo_mu;
std::vector<EstimateMemo> g_memo;  // most recent last

uint64_t corpus_print(const std::vector<Segment>& segs, size_t d) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over up to 64 bytes of rows 0, n/2 and n-1 of each segment
    for (const Segment& s : segs) {
        if (s.rows == 0) continue;
        const size_t es = dtype_size(s.dtype), nb = std::min<size_t>(d * es, 64);
        for (size_t r : {size_t(0), s.rows / 2, s.rows - 1}) {
            const unsigned char* p = static_cast<const unsigned char*>(s.data) + r * s.ld * es;
            for (size_t b = 0; b < nb; ++b) h = (h ^ p[b]) * 1099511628211ull;
        }
    }
    return h;
}

bool memo_find(const std::vector<double>& key, uint64_t print, size_t k, double* f) {
    std::lock_guard<std::mutex> lock(g_memo_mu);
    for (const EstimateMemo& e : g_memo)
        if (e.is(key, print, k)) {
            *f = e.f;
            return true;
        }
    return false;
}

void memo_put(std::vector<double> key, uint64_t print, size_t k, double f) {
    std::lock_guard<std::mutex> lock(g_memo_mu);
    // one entry per corpus and k (two threads may estimate the same one at once)
    g_memo.erase(std::remove_if(g_memo.begin(), g_memo.end(),
                                [&](const EstimateMemo& e) { return e.is(key, print, k); }),
                 g_memo.end());
    if (g_memo.size() >= kMemoEntries) g_memo.erase(g_memo.begin());
    g_memo.push_back(EstimateMemo{std::move(key), print, k, f});
}

// Whether `kept` is the key of a copy of this corpus before index.add appended segments:
// the same dimension, metric and codes, and its segments are this corpus's first ones.
bool key_extends(const std::vector<double>& kept, const std::vector<double>& key) {
    return kept.size() >= 3 && kept.size() < key.size() && std::equal(kept.begin(), kept.end(), key.begin());
}

// Everything one screened search shares read-only.
struct Screen {
    const Kernels& K;
    const ScreenKernels& B;
    const void* Q;
    DType qt;
    size_t ldq, d, k, cap, nb;
    Metric metric;
    const std::vector<Segment>& segs;
    const Exclusions& excl;
    const std::vector<int64_t>& ex_sorted;
    const std::vector<SBlock>& blocks;
    const CodedCorpus& C;
    float* scores;  // the results (nq x k)
    int64_t* ids;
};

// Per-thread scratch for a panel of queries.  Each query's buffer holds, side by
// side, the kept rows' upper bounds ub and packed row indices.
//
// Per query and row the screen has k~ and the bound E = a rho + b del + e0 on
// |k - k~| (the formula above with the row's own xn ||c|| and xn ||c - c~|| in
// place of the corpus maxima R_c, R_d; everything rounded up), at most Emax (the
// same with the maxima).  The kernel writes ub = k~ + E >= k, and k >= ub - 2 Emax.
// With t the k-th largest ub of the non-excluded rows, at least k rows have
// k >= t - 2 Emax = T, so only rows with ub >= T can be in the top k; t only grows
// as rows come in, so a running value of T filters safely.  (Per-row bounds
// on the candidate side: about 10% fewer survivors than Emax on both sides.)
struct SPanel {
    std::vector<float> q, tile, thr, ubs, out;
    std::vector<float> qs, qa, qb, qe;  // per query: code scale, bound coefficients
    std::vector<float> qsq;             // per query, L2: the plain path's fp32 squared norm
    std::vector<double> emax;           // per query: Emax
    std::vector<const float*> qptrs;
    std::vector<const void*> ptrs;
    std::vector<uint64_t> pairs, sorted;  // (packed row << 32) | (query * cap + slot) of every survivor
    std::vector<uint32_t> counts;
    detail::AlignedVec<uint8_t> codes;  // the panel's query codes (64-byte aligned)
    std::vector<uint32_t> surv, rows;
    std::vector<Cand> merged, sel;
    std::vector<size_t> n;   // per query: entries in its buffer
    std::vector<size_t> ex;  // per query: the first ex[i] of them hold exact keys (settle())
    std::vector<size_t> kept;  // per query: entries left by its last prune
    size_t q0 = 0, P = 0;
    size_t dots = 0;  // the current panel's exact rescores (settle() and finish())
    // auto mode's budget for settle(): dots <= rate x (rows screened so far) + slack;
    // `over` once a settle would pass it (the panel is then dropped, unfinished)
    double rate = HUGE_VAL, slack = 0, seen = 0;
    bool over = false;

    size_t bytes() const {
        return (q.capacity() + tile.capacity() + ubs.capacity() + out.capacity() + 6 * qs.capacity()) * 4 +
               codes.capacity() + (surv.capacity() + rows.capacity()) * 4 +
               pairs.capacity() * 16 + counts.capacity() * 4 + (qptrs.capacity() + ptrs.capacity()) * 8;
    }

    // Sizes the buffers (kept from the previous search when large enough: no fresh
    // pages to fault in on every call).
    void setup(const Screen& S, size_t panel) {
        q.resize(panel * S.d), tile.resize(panel * S.nb), thr.resize(panel);
        qs.resize(panel), qa.resize(panel), qb.resize(panel), qe.resize(panel), emax.resize(panel), qsq.resize(panel);
        ubs.resize(panel * S.cap), rows.resize(panel * S.cap);
        codes.resize(panel * S.C.dp * S.C.eb), surv.resize(S.nb);
        n.resize(panel), ex.resize(panel), kept.resize(panel);
    }

    // Queries q0 .. q0+P-1: fp32 as the plain path loads them, codes, bound
    // coefficients.  False when a norm is too large or not finite.
    bool load(const Screen& S, size_t q0_, size_t P_) {
        q0 = q0_, P = P_;
        const double slack = 1 + std::ldexp(1.0, -10);  // the total, and the float arithmetic of E and ub
        const CodedCorpus& C = S.C;
        for (size_t i = 0; i < P; ++i) {
            float* qi = q.data() + i * S.d;
            float qn = 0, x2, e2, t2;
            detail::load_query(S.K, S.Q, S.qt, S.ldq, S.d, S.metric, q0 + i, qi, &qn);
            qsq[i] = qn;
            if (S.metric == Metric::L2 && !(qn <= float(kMaxSqnorm))) return false;
            S.B.quantize_rows(qi, S.d, 1, S.d, C.dp, true, codes.data() + i * C.dp * C.eb, &qs[i], nullptr, &x2, &e2,
                              &t2);
            if (!(x2 <= kMaxSqnorm && e2 <= kMaxSqnorm && t2 <= 4 * kMaxSqnorm)) return false;
            const QueryBound qb_ = query_bound(S.B, S.d, C.dp, x2, e2, t2, C.r_c, C.r_d, C.r_t, C.r_xn);
            const double a = qb_.a, b = qb_.b, e0 = qb_.e0;
            qa[i] = round_up(a * slack), qb[i] = round_up(b * slack), qe[i] = round_up(e0 * slack);
            if (!std::isfinite(qa[i]) || !std::isfinite(qb[i]) || !std::isfinite(qe[i])) return false;
            // >= every row's E as the kernel computes it (float roundings: within the slack)
            emax[i] = (double(qa[i]) * C.rho_max + double(qb[i]) * C.del_max + double(qe[i])) * slack;
            thr[i] = -std::numeric_limits<float>::infinity();
            n[i] = ex[i] = kept[i] = 0;
        }
        return true;
    }

    // T for query i from t, a value that at least k of its rows' ub reach (see above):
    // at least k rows have a key >= T.
    float floor_of(const Screen& S, size_t i, float t) const {
        if (S.metric != Metric::L2) return round_down((double)t - 2.0 * emax[i]);
        const double u = kU;
        return round_down((double)t * (1 + 4 * u) - 4.0 * emax[i] * (1 + 2 * u) - std::ldexp(1.0, -100));
    }

    // Raises query i's threshold to T from the k-th largest ub in its buffer and
    // keeps only the entries with ub >= T.  Returns the new count.  Once settle() has
    // set the threshold from exact keys (k exact entries in front) there is nothing to
    // do: T would rarely be above it, and every entry already reaches it (settle() kept
    // only those, and later rows entered only at or above it).
    size_t prune(const Screen& S, size_t i, size_t m) {
        if (ex[i] >= S.k) return m;
        float* ub = ubs.data() + i * S.cap;
        uint32_t* rb = rows.data() + i * S.cap;
        thr[i] = std::max(thr[i], floor_of(S, i, S.K.lower_kth(ub, m, S.k)));
        return kept[i] = keep_ge(ub, rb, 0, 0, m, thr[i]);  // (no exact entries yet: ex[i] is 0)
    }

    // Moves the entries u0 <= u < u1 of a buffer with ub[u] >= t to w, w + 1, ... (w <= u0);
    // returns the next free slot.
    static size_t keep_ge(float* ub, uint32_t* rb, size_t w, size_t u0, size_t u1, float t) {
        for (size_t u = u0; u < u1; ++u) {  // branch-free: most entries go
            const float key = ub[u];
            const uint32_t r = rb[u];
            ub[w] = key;
            rb[w] = r;
            w += key >= t;
        }
        return w;
    }

    // THE SCREENING LOOP: upper bounds of one corpus block against the panel; per
    // query, rows at or above the running threshold enter the buffer.
    void process(const Screen& S, const SBlock& bl, bool first) {
        const size_t nbk = bl.g1 - bl.g0;
        const Segment& sg = S.segs[bl.seg];
        float* T = tile.data();
        const size_t pr = S.C.pstart[bl.seg] + bl.r0;
        const ScreenQueries sq{codes.data(), qs.data(), qa.data(), qb.data(), qe.data()};
        S.B.dot_tile(sq, P, S.C.packed(pr), nbk, S.C.dp, S.C.rows(S.metric).at(pr), T, S.nb);
        const int64_t base = sg.id_offset + (int64_t)bl.r0;
        seen += double(P) * double(nbk);
        for (size_t i = 0; i < P; ++i) {
            float* s = T + i * S.nb;
            if (S.metric == Metric::L2) {  // the dot's upper bound -> the key's (l2_key is monotone)
                const float a = qsq[i], *xsq = S.C.xsq.data() + pr;
                for (size_t j = 0; j < nbk; ++j) s[j] = detail::l2_key(a, xsq[j], s[j]);
            }
            const int64_t* eb = nullptr;
            const int64_t* ee = nullptr;
            if (S.excl.indptr) {
                eb = S.ex_sorted.data() + S.excl.indptr[q0 + i];
                ee = S.ex_sorted.data() + S.excl.indptr[q0 + i + 1];
            }
            if (first && nbk >= S.k + size_t(ee - eb)) {
                // A starting threshold from the first block: at least k + m of its rows
                // have ub >= t0 (m = the query's exclusions), so at least k non-excluded ones do.
                thr[i] = floor_of(S, i, S.K.lower_kth(s, nbk, S.k + size_t(ee - eb)));
            }
            const size_t c = S.K.filter_ge(s, nbk, thr[i], surv.data());
            float* ub = ubs.data() + i * S.cap;
            uint32_t* rb = rows.data() + i * S.cap;
            for (size_t u = 0; u < c; ++u) {
                const float key = s[surv[u]];
                if (key < thr[i]) continue;  // the threshold rose inside this row
                if (eb != ee && std::binary_search(eb, ee, base + (int64_t)surv[u])) continue;
                if (n[i] == S.cap) {
                    n[i] = prune(S, i, n[i]);
                    // still nearly full: the rows lie within the bound of the k-th (near-ties,
                    // or a bound wide for this data); settle this query's top k exactly
                    if (n[i] > S.k + (S.cap - S.k) / 2) {
                        if (double(dots + n[i] - ex[i]) > rate * seen + slack) {
                            over = true;  // the screen does not prune here: stop
                            return;
                        }
                        n[i] = settle(S, i, n[i]);
                    }
                    if (key < thr[i]) continue;
                }
                ub[n[i]] = key;
                rb[n[i]++] = uint32_t(pr + surv[u]);
            }
            // raise the threshold early: the first block's is low (its k-th of a few
            // hundred rows), and every row admitted below the final one costs a copy.
            // Again once the buffer has doubled since: where many rows lie within the
            // bound of the k-th, a prune leaves most of them and would repeat every block.
            if (n[i] >= std::max(3 * S.k, 2 * kept[i])) n[i] = prune(S, i, n[i]);
        }
    }

    // The id of packed row r, and its segment.
    size_t segment_of(const Screen& S, size_t r) const {
        const std::vector<size_t>& ps = S.C.pstart;
        return size_t(std::upper_bound(ps.begin(), ps.end(), r) - ps.begin()) - 1;
    }
    int64_t id_of(const Screen& S, size_t r) const {
        const size_t sg = segment_of(S, r);
        return S.segs[sg].id_offset + int64_t(r - S.C.pstart[sg]);
    }

    // The exact key of query i and packed row r from their fp32 dot product (the plain path's rule).
    float key_of(const Screen& S, size_t i, size_t r, float dot) const {
        if (S.metric == Metric::Cosine) return dot * S.C.xn[r];
        if (S.metric == Metric::L2) return detail::l2_key(qsq[i], S.C.xsq[r], dot);
        return dot;
    }

    // keys[u] = the exact key (the fp32 kernel's arithmetic) of the panel's query i and packed
    // row rb[u], u < m.  One dot_pairs call per run of rows from one segment.
    void rescore(const Screen& S, size_t i, const uint32_t* rb, size_t m, float* keys) {
        qptrs.assign(m, q.data() + i * S.d);
        ptrs.resize(m);
        out.resize(m);
        const std::vector<size_t>& ps = S.C.pstart;
        for (size_t a = 0; a < m;) {
            const size_t seg = segment_of(S, rb[a]);
            const Segment& sg = S.segs[seg];
            const char* base = static_cast<const char*>(sg.data);
            const size_t bytes = sg.ld * dtype_size(sg.dtype);
            size_t b = a;
            for (; b < m && rb[b] >= ps[seg] && rb[b] < ps[seg + 1]; ++b) ptrs[b] = base + (rb[b] - ps[seg]) * bytes;
            S.K.dot_pairs(qptrs.data() + a, ptrs.data() + a, b - a, S.d, sg.dtype, out.data() + a);
            a = b;
        }
        for (size_t u = 0; u < m; ++u) keys[u] = key_of(S, i, rb[u], out[u]);
        dots += m;
    }

    // Query i's buffer (m entries, the first ex[i] exact) stayed more than half full after
    // a prune: part of it is rescored exactly, enough for a threshold from exact keys.
    //  - The R = k inexact entries with the largest ub (or a few more: lower_kth's cut;
    //    all of them when they are few) are rescored and join the exact prefix.  ub >= key,
    //    so these are the ones most likely to hold the best keys.
    //  - With t the k-th best (key, id) of the exact entries, at least k rows have key >= t:
    //    the threshold rises to t's key; the exact entries below t go (k better ones exist),
    //    and so do the inexact ones with ub < t (their key < t; one with key == t and a
    //    smaller id has ub >= t and stays).  The exact top k stay in front.
    //  - Again while the buffer stays more than half full: every row's fp32 dot product
    //    is paid at most once per query.
    // At worst (every row ties) that is the plain path's work again, never a restart of
    // the search; in the usual case it is R rows per settle, where rescoring the whole
    // buffer cost about cap (int8 at k = 1,000 on 200,000 x 768 isotropic rows, 16
    // queries: 20,000 dot products per query, settles and final rescoring, -> 6,600).
    // Returns the new count.
    size_t settle(const Screen& S, size_t i, size_t m) {
        float* ub = ubs.data() + i * S.cap;
        uint32_t* rb = rows.data() + i * S.cap;
        const size_t R = S.k;
        for (;;) {
            size_t e = ex[i];
            if (m - e > R + R / 2) {  // the largest inexact ub move to just after the exact prefix
                const float c = S.K.lower_kth(ub + e, m - e, R);  // >= R of them reach c
                size_t w = e;
                for (size_t u = e; u < m; ++u) {
                    if (ub[u] >= c) {
                        std::swap(ub[u], ub[w]);
                        std::swap(rb[u], rb[w]);
                        ++w;
                    }
                }
                rescore(S, i, rb + e, w - e, ub + e);
                e = w;
            } else {
                rescore(S, i, rb + e, m - e, ub + e);
                e = m;
            }
            merged.resize(e);
            for (size_t u = 0; u < e; ++u) merged[u] = detail::make_cand(ub[u], id_of(S, rb[u]));
            sel.assign(merged.begin(), merged.end());
            std::nth_element(sel.begin(), sel.begin() + (S.k - 1), sel.end(), std::greater<Cand>());
            const Cand kth = sel[S.k - 1];
            thr[i] = std::max(thr[i], detail::cand_key(kth));
            const float t = thr[i];
            size_t w = 0;
            for (size_t u = 0; u < e; ++u) {  // the exact top k
                if (merged[u] < kth) continue;
                ub[w] = ub[u];
                rb[w++] = rb[u];
            }
            ex[i] = w;
            m = keep_ge(ub, rb, w, e, m, t);  // the inexact rows that can still reach it
            if (m <= S.k + (S.cap - S.k) / 2 || ex[i] == m) return m;
        }
    }

    // Sorts `pairs` by row: a counting sort over the rows when they are few compared
    // with the pairs (one pass), std::sort otherwise.
    void sort_pairs(const Screen& S) {
        const size_t total = S.C.pstart.back();
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
            for (size_t u = ex[i]; u < n[i]; ++u) pairs.push_back((uint64_t(rb[u]) << 32) | uint64_t(i * S.cap + u));
        }
        sort_pairs(S);
        const size_t np = pairs.size();
        dots += np;
        qptrs.resize(np);
        ptrs.resize(np);
        out.resize(np);
        const std::vector<size_t>& ps = S.C.pstart;
        for (size_t a = 0, seg = 0; a < np; ++seg) {  // one dot_pairs call per segment (one element type)
            const Segment& sg = S.segs[seg];
            const char* base = static_cast<const char*>(sg.data);
            const size_t rb = sg.ld * dtype_size(sg.dtype);
            size_t b = a;
            for (; b < np && size_t(pairs[b] >> 32) < ps[seg + 1]; ++b) {
                qptrs[b] = q.data() + (uint32_t(pairs[b]) / S.cap) * S.d;
                ptrs[b] = base + (size_t(pairs[b] >> 32) - ps[seg]) * rb;
            }
            if (b > a) S.K.dot_pairs(qptrs.data() + a, ptrs.data() + a, b - a, S.d, sg.dtype, out.data() + a);
            a = b;
        }
        for (size_t t = 0; t < np; ++t) {  // the exact key replaces the upper bound
            const size_t r = size_t(pairs[t] >> 32);
            ubs[uint32_t(pairs[t])] = key_of(S, uint32_t(pairs[t]) / S.cap, r, out[t]);
        }
        for (size_t i = 0; i < P; ++i) {
            const float* kb = ubs.data() + i * S.cap;
            const uint32_t* rb = rows.data() + i * S.cap;
            merged.clear();
            for (size_t u = 0; u < n[i]; ++u) {
                const size_t r = rb[u];
                const size_t sgi = size_t(std::upper_bound(ps.begin(), ps.end(), r) - ps.begin()) - 1;
                merged.push_back(detail::make_cand(kb[u], S.segs[sgi].id_offset + int64_t(r - ps[sgi])));
            }
            detail::write_row(merged, S.k, S.metric, scores + (q0 + i) * S.k, ids + (q0 + i) * S.k);
        }
    }
};

void Scratch::trim() {
    size_t bytes = (x.capacity() + xs.capacity() + xn.capacity() + xsq.capacity() + xsum.capacity() + rho.capacity() +
                    del.capacity()) * 4;
    for (const auto& p : panels)
        if (p) bytes += p->bytes();
    if (bytes > kKeepBytes) *this = Scratch();
}

// Screens the queries panel by panel (threads take whole panels) and writes their
// results; the queries it leaves to the plain path go to `rest` as ranges.  Returns the
// fraction of the screened query x row pairs that were rescored (screen_last()).
double screen_panels(const Screen& S, size_t nq, size_t panel, size_t npanels, int nt, int mode, size_t total,
                   std::vector<std::unique_ptr<SPanel>>& state, std::vector<size_t>* rest) {
    if (state.size() < size_t(nt)) state.resize(nt);
    for (int t = 0; t < nt; ++t) {
        if (!state[t]) state[t].reset(new SPanel);
        state[t]->setup(S, panel);
    }
    // Auto mode stops screening (the panels not started yet run the plain path) once a
    // panel rescored more than its budget (rescore_budget) of its query x row pairs: the
    // screen does not prune on this data, and the copy remembers it for later searches.
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> dots{0}, pairs{0};  // for screen_last()
    std::vector<char> done(npanels, 0);
    parallel_for(npanels, nt, 1, [&](size_t p0, size_t p1, int tid) {
        SPanel& pn = *state[tid];
        for (size_t p = p0; p < p1; ++p) {
            const size_t P = std::min(panel, nq - p * panel);
            if (stop.load(std::memory_order_relaxed)) return;
            if (!pn.load(S, p * panel, P)) continue;  // a huge query norm: the plain path
            // auto: the panel is dropped (its queries run the plain path) as soon as its
            // rescoring passes the budget (pro rata of the rows screened, plus one full buffer
            // per query and one more), so a search on data the screen cannot prune loses
            // little.  The per-query buffer is the start-up: before its threshold settles, a
            // query may rescore a full buffer once (settle) however well the screen prunes
            // later.  (With two buffers per panel, panels of a few queries were dropped in
            // their first 5,000 rows: 200,000 x 768 isotropic rows, 16 queries, k = 100, where
            // the whole search rescores 2% and runs in 0.55x the plain path's time.)
            pn.dots = 0, pn.seen = 0, pn.over = false;
            pn.rate = mode != 1 ? HUGE_VAL : rescore_budget(P, S.B.amx);
            pn.slack = double(S.cap) * double(P + 1);
            size_t b = 0;
            for (; b < S.blocks.size() && !pn.over; ++b) pn.process(S, S.blocks[b], b == 0);
            if (!pn.over) {
                pn.finish(S, S.scores, S.ids);
                done[p] = 1;
            }
            dots.fetch_add(pn.dots, std::memory_order_relaxed);
            pairs.fetch_add(uint64_t(P) * (b ? S.blocks[b - 1].g1 : 0), std::memory_order_relaxed);
            if (pn.over || (mode == 1 && double(pn.dots) > pn.rate * double(P) * double(total))) {
                stop.store(true);
                // this class's budget and every larger panel's (a smaller budget) do not pay at k
                for (int c = panel_class(P); c < kPanelClasses; ++c) {
                    size_t seen = S.C.no_prune_k[c].load();
                    while (S.k < seen && !S.C.no_prune_k[c].compare_exchange_weak(seen, S.k)) {
                    }
                }
            }
        }
    });
    for (size_t p = 0; p < npanels; ++p) {  // the queries left to the plain path, as ranges
        if (done[p]) continue;
        const size_t a = p * panel, b = std::min(nq, a + panel);
        if (!rest->empty() && rest->back() == a) rest->back() = b;
        else rest->push_back(a), rest->push_back(b);
    }
    return pairs.load() ? double(dots.load()) / double(pairs.load()) : -1.0;
}

}  // namespace

ScreenCache::ScreenCache() = default;
ScreenCache::~ScreenCache() = default;
size_t ScreenCache::nbytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return codes_ ? codes_->bytes() : 0;
}
void ScreenCache::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    codes_.reset();
}
std::shared_ptr<const detail::CodedCorpus> ScreenCache::get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return codes_;
}
void ScreenCache::put(std::shared_ptr<const detail::CodedCorpus> codes) {
    std::lock_guard<std::mutex> lock(mu_);
    codes_ = std::move(codes);
}

void set_screen_mode(int mode) {
    if (mode < 0 || mode > 2) throw std::invalid_argument("screen mode must be 0 (off), 1 (auto) or 2 (always)");
    mode_ref().store(mode);
}
int screen_mode() { return mode_ref().load(); }
void set_screen_type(int type) {
    if (type < 0 || type > 2) throw std::invalid_argument("screen type must be 0 (auto), 1 (bf16) or 2 (int8)");
    type_ref().store(type);
}
int screen_type() { return type_ref().load(); }
const char* screen_choice(size_t d, size_t k, size_t n) {
    const ScreenKernels* B = pick_kernels(d, k, n);
    return B ? B->name : nullptr;
}
ScreenReport screen_last() {
    std::lock_guard<std::mutex> lock(g_last_mu);
    return g_last;
}
void screen_counts(uint64_t* screened, uint64_t* fallbacks, uint64_t* extended) {
    *screened = g_screened.load();
    *fallbacks = g_fallbacks.load();
    if (extended) *extended = g_extended.load();
}

namespace detail {

bool topk_search_screened(const void* Q, DType qt, size_t nq, size_t ldq, size_t d,
                          const std::vector<Segment>& segments, Metric metric, size_t k, const Exclusions& excl,
                          const std::vector<int64_t>& ex_sorted, float* scores, int64_t* ids, int num_threads,
                          ScreenCache* cache, std::vector<size_t>* rest) {
    rest->clear();
    const int mode = screen_mode();
    size_t total = 0;
    for (const Segment& s : segments) total += s.rows;
    // Buffers kept by the calling thread between searches (up to kKeepBytes).
    thread_local Scratch keep;
    // the copy the caller's cache kept (its own reference: another thread may replace it meanwhile)
    const std::shared_ptr<const CodedCorpus> kept = cache ? cache->get() : nullptr;
    const ScreenKernels* B = pick_kernels(d, k, total);
    if (B && kept && type_ref().load() == 0 && kept->type != B->type) {
        // auto, and the cache holds a copy with the other codes: reusing it costs less than a
        // new copy (the miner's second, deeper search)
        if (const ScreenKernels* K2 = screen_kernels(kept->type))
            if (K2->type != ScreenType::Int8 || d <= kMaxInt8Dim) B = K2;
    }
    if (mode == 0 || !B || !kernels().dot_pairs) return false;
    // what this search did, published for screen_last() on every way out
    struct Publish {
        ScreenReport r;
        ~Publish() {
            std::lock_guard<std::mutex> lock(g_last_mu);
            g_last = r;
        }
    } report;
    // an index searched again and again (serving, the miner's batches, training refreshes) keeps a
    // copy whatever the batch size: from its kRepeatSearches-th search on
    const bool repeated = cache && cache->note_search() >= kRepeatSearches;
    // a kept copy of exactly this layout, metric and codes costs nothing: then even a few
    // queries are cheaper screened
    const std::vector<double> key = corpus_key(segments, d, metric, B->type);
    const bool reuse = kept && kept->key == key;
    // an index that grew by add(): its kept copy covers the first segments, and only the new
    // rows need codes; like a kept copy, that costs little (a copy of the codes, no coding)
    // (a cache keeps only copies that were built whole: ok)
    const bool extend = !reuse && cache && kept && key_extends(kept->key, key);
    const bool has_copy = reuse || extend;  // the copy costs (almost) nothing
    // the copy this search builds: the cache's next one, or a temporary in this thread's buffers
    std::shared_ptr<CodedCorpus> fresh;
    CodedCorpus temp;
    struct GiveBack {  // hands the temporary's buffers back on every exit
        Scratch& r;
        CodedCorpus& c;
        bool lent = false;
        void swap() {
            c.x.swap(r.x), c.xs.swap(r.xs), c.xsum.swap(r.xsum), c.xn.swap(r.xn), c.xsq.swap(r.xsq);
            c.rho.swap(r.rho), c.del.swap(r.del);
            lent = !lent;
        }
        ~GiveBack() {
            if (lent) swap();
            r.trim();
        }
    } give_back{keep, temp};
    CodedCorpus* C = &temp;
    if (!reuse && cache) {
        fresh = std::make_shared<CodedCorpus>();
        C = fresh.get();
    } else if (!reuse) {
        give_back.swap();
    }
    C->dp = (d + B->align - 1) / B->align * B->align;
    C->eb = B->elem_bytes;
    C->start.push_back(0);
    C->pstart.push_back(0);
    for (const Segment& s : segments) {
        C->start.push_back(C->start.back() + s.rows);
        C->pstart.push_back(C->pstart.back() + (s.rows + 15) / 16 * 16);
    }
    const double copy_bytes = double(C->pstart.back()) * double(C->dp * C->eb);
    if (total == 0 || copy_bytes > double(kMaxCodeBytes)) return false;
    if (mode == 1 && copy_bytes > double(kAutoCodeBytes) &&
        !(B->type == ScreenType::Int8 && (has_copy || repeated || nq >= kMinQueriesLarge || !cache)))
        return false;
    int nt = std::max(1, num_threads);
    if (double(nq) * double(total) * double(d) < 4e6) nt = 1;
    if (mode == 1 && (total < 4 * k + 256 ||
                      (!has_copy && !repeated &&
                       (nq < kMinQueries || double(nq) * double(total) * double(d) < 2e7))))
        return false;

    // panels: equal sizes, a multiple of the thread count; blocks: the score tile stays near 256 KiB
    size_t npanels = (nq + kMaxPanel - 1) / kMaxPanel;
    npanels = std::min(nq, (npanels + nt - 1) / nt * nt);
    const size_t panel = (nq + npanels - 1) / npanels;
    npanels = (nq + panel - 1) / panel;
    // auto: an earlier search of this copy found that the screen does not pay at this k for
    // panels of this size
    if (mode == 1 && has_copy && k >= kept->no_prune_k[panel_class(panel)].load()) return false;
    const size_t nb = std::max<size_t>(64, std::min<size_t>(1024, (size_t(64) << 10) / panel)) / 64 * 64;
    std::vector<SBlock> blocks;
    for (size_t s = 0; s < segments.size(); ++s)
        for (size_t r = 0; r < segments[s].rows; r += nb)
            blocks.push_back(SBlock{s, C->start[s] + r, C->start[s] + std::min(segments[s].rows, r + nb), r});

    const Kernels& K = kernels();
    // auto, about to build a temporary copy (a one-shot search: no index keeps it): skip the screen
    // when a sample says it would not prune, or would not win back the pass that builds the copy.
    // An index's copy is built once for all its later searches: there the search screens, measures
    // and the copy remembers a k that does not pay (no_prune_k), which the estimate cannot beat
    // (measured: at k = 1,000 on 200,000 clustered rows it skipped a screen that ran in 0.55x
    // the plain time).
    if (mode == 1 && !cache) {
        const uint64_t print = corpus_print(segments, d);
        double f;
        report.r.estimate_reused = memo_find(key, print, k, &f);
        if (!report.r.estimate_reused) {
            const auto t0 = std::chrono::steady_clock::now();
            f = estimate_rescored(K, *B, Q, qt, ldq, nq, d, segments, total, metric, k, nt);
            report.r.estimate_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            memo_put(key, print, k, f);
        }
        report.r.estimate = f;
        if (f > rescore_budget(panel, B->amx)) return false;
        const ScreenCost& c = screen_cost(B->amx);
        if (f >= 0 && (c.base + c.slope * f) * double(nq) + c.build > double(nq)) return false;
    }
    g_screened.fetch_add(1);
    if (!reuse) {
        build_corpus(K, *B, segments, d, metric, blocks, nt, *C, extend ? kept.get() : nullptr);
        if (extend) g_extended.fetch_add(1);
        if (!C->ok) {
            g_fallbacks.fetch_add(1);
            return false;
        }
        C->type = B->type;
        C->key = key;
        if (fresh) cache->put(fresh);
    }
    const CodedCorpus& CC = reuse ? *kept : *C;
    // buffer per query; a buffer that cannot fill (k near the corpus size) never prunes early.
    // int8's error bound is about 5x bf16's: twice the room for the rows it keeps
    const size_t wide = B->type == ScreenType::Int8 ? 2 : 1;
    const size_t cap = std::min(wide * (4 * k + 256), total + 1);
    if (double(panel) * double(cap) >= 4294967296.0) return false;  // slots must fit 32 bits
    Screen S{K, *B, Q, qt, ldq, d, k, cap, nb, metric, segments, excl, ex_sorted, blocks, CC, scores, ids};
    report.r.rescored = screen_panels(S, nq, panel, npanels, nt, mode, total, keep.panels, rest);
    report.r.screened = 1;
    if (!rest->empty()) g_fallbacks.fetch_add(1);
    return true;
}

}  // namespace detail
}  // namespace hn

