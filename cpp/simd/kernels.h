// Declarations of the per-ISA kernels.  Each ISA file (dot_scalar.cpp,
// dot_avx2.cpp, dot_avx512.cpp, dot_neon.cpp) defines the same plain functions in
// its own namespace; dispatch.cpp picks one table at run time.
//
// Rule (see build-and-dispatch notes): ISA files include only intrinsics
// headers, <cstddef>/<cstdint>, <cstring> and this header; their helpers are static or live in an
// anonymous namespace, so nothing compiled with wide flags leaks into baseline code.
#pragma once
#include <cstddef>
#include <cstdint>
#include "common.h"

namespace hn {

struct Kernels {
    // Dense score tile.  For i < nq, j < nx:
    //   S[i * lds + j] = sum_p Q[i * ldq + p] * X[j * ldx + p]     (p < d)
    // Q is fp32; X is fp32, fp16 or bf16 (xt) and is widened to fp32 on load.
    // ldq / ldx are row strides in elements.  Every (i, j) score is computed
    // with the same sequence of operations whatever its position in the tile,
    // so identical rows get bit-identical scores (ties are exact).
    void (*dot_tile)(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx,
                     size_t nx, size_t d, DType xt, float* S, size_t lds);
    // out[j] = sum_p X[j * ldx + p]^2 for j < nx (same widening as dot_tile).
    void (*sqnorm_rows)(const void* X, size_t ldx, size_t nx, size_t d, DType xt, float* out);
    // Writes the indices i < n with s[i] >= tau (in increasing order) to out
    // and returns how many there were.  out must hold n entries.
    size_t (*filter_ge)(const float* s, size_t n, float tau, uint32_t* out);
    // dst[i] = float(src[i]) for i < n.
    void (*to_f32)(const void* src, DType t, size_t n, float* dst);
    // y[i] = y[i] + w * x[i] for i < n, rounded as those two separate operations
    // (no fused multiply-add: bit-identical to the plain loop).
    void (*axpy)(float* y, const float* x, size_t n, float w);
    // out[b] = max(0, max over r < bl of the int32 bits of x[b * bl + r]) for b < nb:
    // block maxima of floats >= 0 (negative ones, e.g. -inf, count as 0).  bl is a
    // multiple of 16.
    void (*block_max)(const float* x, size_t nb, size_t bl, uint32_t* out);
    const char* name;
    // out[j] = the dot_tile score of query q[j] (fp32) with the row at rows[j] (type
    // xt), j < n, bit-identical to what dot_tile computes for that pair.  Pairs
    // anywhere (the survivors of a screen); null in tables that do not need it.
    void (*dot_pairs)(const float* const* q, const void* const* rows, size_t n, size_t d, DType xt,
                      float* out) = nullptr;
    // Sorts n distinct keys descending into out (out[r] = the key with r keys above
    // it), in O(n^2) vector compares: for a few hundred keys at most.  Null in
    // tables without one (callers then use a radix sort).
    void (*sort_desc_small)(const uint64_t* in, size_t n, uint64_t* out) = nullptr;
    // filter_ge that also hands back the values (val[r] = x[idx[r]]) and clears
    // x[0 .. n) to 0 in the same pass; idx and val must hold n entries.  Null in
    // tables without one (callers then filter, copy and clear separately).
    size_t (*filter_take)(float* x, size_t n, float tau, uint32_t* idx, float* val) = nullptr;
    // A value x such that at least r of v[0 .. n) are >= x (n >= r >= 1, v finite),
    // at most (max - min) / 4096 below the r-th largest: bisection on [min, max]
    // with a counting pass per step.  Thresholds that must not exceed a k-th
    // largest (the screen's, BM25's floor) without selecting it exactly.
    float (*lower_kth)(const float* v, size_t n, size_t r) = nullptr;
    // Weighted sums of rows (the dense loss step's gradient matmuls, loss_dense.h):
    //   Out[i * ldo + p] (+)= sum_{t < k} A[i * ar + t * ac] * Y[t * ldy + p]   for i < m, p < d,
    // overwriting Out, or adding to it when `add`.  A with strides (ar, ac) = (lda, 1) is a
    // row-major matrix, (1, lda) its transpose.  fp32, each Out element one chain of
    // multiply-adds over t in order.  Every table has one (the plain loop of simd/wsum.inl where there is
    // nothing faster).
    void (*wsum)(const float* A, size_t ar, size_t ac, size_t m, size_t k, const float* Y, size_t ldy, size_t d,
                 float* Out, size_t ldo, bool add) = nullptr;
};

// Row passes of the dense loss path (cpp/loss_dense.cpp, one row of a score block
// at a time; simd/rows.inl, compiled per ISA in rows_<isa>.cpp).
template <class T>
struct RowOps {
    // s[c] = sim > thr ? -inf : scale * sim, sim = s[c] or s[c] * v[c] (v not null);
    // returns 0 when every scale * sim is finite, NaN otherwise.
    T (*logits)(T* s, const T* v, size_t n, T scale, T thr);
    // max of s[0 .. n) (no NaN in s; -inf for n = 0).
    T (*max)(const T* s, size_t n);
    // e_c = exp(s[c] - shift) for arguments <= 0 or -inf; s[c] = e_c, or e_c * v[c]
    // (v not null); returns the sum of the e_c.
    T (*exp_sum)(T* s, const T* v, size_t n, T shift);
    // s[c] *= f (a subnormal product written as 0).
    void (*mul)(T* s, size_t n, T f);
    const char* name;
};

namespace scalar {
extern const Kernels table;
extern const RowOps<float> rows_f32;
extern const RowOps<double> rows_f64;
// The plain loops, also used by tables without a faster version (baseline flags).
void axpy(float* y, const float* x, size_t n, float w);
void block_max(const float* x, size_t nb, size_t bl, uint32_t* out);
float lower_kth(const float* v, size_t n, size_t r);
}  // namespace scalar
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
extern const Kernels table;
extern const RowOps<float> rows_f32;
}  // namespace avx2
namespace avx512 {
extern const Kernels table;
extern const RowOps<float> rows_f32;
}  // namespace avx512
#endif
#if defined(__aarch64__)
namespace neon { extern const Kernels table; }
#endif

// Screening kernels for the exact top-k (topk_screen.cpp): a low-precision pass
// whose error is bounded, then fp32 rescoring of the survivors.  A row x of d
// floats becomes dp codes (d rounded up to `align`, zero padded) and a scale s,
// standing for x~ = s * code:
//   bf16 (AVX-512 BF16): code = bf16(x), s = 1; vdpbf16ps adds two exact bf16
//        products per fp32 lane, one rounding per pair of elements.
//   int8 (AVX-512 VNNI): code = round(x / s) in [-127, 127], s = max|x| / 127;
//        vpdpbusd sums the code products exactly in int32 (d <= 16384), then
//        float(I) * (s_q * s_x): three roundings per score.
enum class ScreenType { Bf16 = 1, Int8 = 2 };
// What dot_tile reads besides the codes, per packed corpus row / per query (see
// topk_screen.cpp for the bound): it writes ub = k~ * xn + (a rho + b del + e0),
// an upper bound of the row's exact key.  Null xn: no scaling; null rho: ub = k~ * xn.
struct ScreenRows {
    const float* scale;  // code scale (int8; may be null for bf16)
    const int32_t* sum;  // code sum (int8; may be null for bf16)
    const float* xn;     // cosine: 1 / ||x|| (else null)
    const float* rho;    // bound coefficient of a: xn ||x||
    const float* del;    // bound coefficient of b: xn ||x - x~||
    ScreenRows at(size_t j) const {
        auto off = [j](const auto* p) { return p ? p + j : p; };
        return {off(scale), off(sum), off(xn), off(rho), off(del)};
    }
};
struct ScreenQueries {
    const void* codes;   // nq rows of dp codes, contiguous
    const float* scale;  // code scale (int8; may be null for bf16)
    const float* a;      // bound coefficients, per query
    const float* b;
    const float* e0;
    ScreenQueries at(size_t i, size_t row_bytes) const {
        auto off = [i](const float* p) { return p ? p + i : p; };
        return {static_cast<const char*>(codes) + i * row_bytes, off(scale), off(a), off(b), off(e0)};
    }
};
struct ScreenKernels {
    ScreenType type;
    const char* name;
    size_t align;       // dp = d rounded up to a multiple of this
    size_t elem_bytes;  // bytes per code
    // Codes of the rows of fp32 X (nx x d, stride ldx) at out (row j at j * dp codes,
    // padding zeroed), scale[j], sum[j] = the sum of row j's codes (int8 only; may
    // be null), and, accumulated in fp32, x2 = sum x^2, e2 = sum (x - x~)^2, t2 =
    // sum x~^2.  query: the rows are the dot's first operand (int8 stores code + 128).
    void (*quantize_rows)(const float* X, size_t ldx, size_t nx, size_t d, size_t dp, bool query, void* out,
                          float* scale, int32_t* sum, float* x2, float* e2, float* t2);
    // Packs nx corpus code rows (contiguous, dp codes each) into groups of 16 rows:
    // group G (at out + G * 4 * dp * elem_bytes uint32) holds, for each 32-bit lane
    // p of a row, the 16 rows' lane p as one 64-byte vector.  Last group zero-padded.
    void (*pack_rows)(const void* X, size_t nx, size_t dp, uint32_t* out);
    // S[i * lds + j] = ub of query i and corpus row j (ScreenRows) for i < nq, j <
    // ceil(nx / 16) * 16, from the screened score k~ = x~_i . y~_j: X the packed
    // corpus, R its rows' data (ceil(nx / 16) * 16 entries each, zero for padding).
    void (*dot_tile)(const ScreenQueries& Q, size_t nq, const uint32_t* X, size_t nx, size_t dp,
                     const ScreenRows& R, float* S, size_t lds);
    // dot_tile runs on AMX tiles (a cheaper pass: auto mode allows more rescoring)
    bool amx = false;
};
#if defined(__x86_64__) || defined(_M_X64)
namespace avx512bf16 { extern const ScreenKernels table; }
namespace avx512vnni { extern const ScreenKernels table; }
// The int8 dot_tile on AMX tiles (screen_amx.cpp): same codes, same values.
namespace amx {
void dot_tile_int8(const ScreenQueries& Q, size_t nq, const uint32_t* X, size_t nx, size_t dp, const ScreenRows& R,
                   float* S, size_t lds);
}
#endif

// The screening kernels of `type` when this build has them, the CPU runs them and
// the fp32 table in use is AVX-512 (the survivors are rescored by that table);
// null otherwise.
// int8 runs on AMX tiles where the CPU has AMX-INT8 and the OS grants this process the
// tile state (Linux), unless HARDNEG_AMX=0 or set_amx(false).
const ScreenKernels* screen_kernels(ScreenType type);
// Whether the int8 screen may run on AMX / runs on it now.
bool amx_available();
bool amx_enabled();
void set_amx(bool on);
// Whether the CPU is an AMD one (CPUID vendor "AuthenticAMD"): its AVX-512 (Zen 4) runs
// 512-bit operations in two halves, and the screen's cost model has its own fit there.
bool cpu_is_amd();

// The table chosen for this process (HARDNEG_SIMD or the best the CPU runs).
const Kernels& kernels();
// The loss row passes of the same level (x86-64: avx512 / avx2 / scalar; arm64: the
// baseline build, which is NEON); double: always the baseline loops.
const RowOps<float>& row_ops_f32();
// Forces a level ("scalar", "avx2", "avx512", "neon"); throws std::invalid_argument
// when the name is unknown or the CPU cannot run it.
void set_simd_level(const char* name);
// Levels this CPU can run, best first.
const char* const* available_simd_levels(size_t* count);

}  // namespace hn
