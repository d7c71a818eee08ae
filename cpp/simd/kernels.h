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
};

namespace scalar {
extern const Kernels table;
// The plain loops, also used by tables without a faster version (baseline flags).
void axpy(float* y, const float* x, size_t n, float w);
void block_max(const float* x, size_t nb, size_t bl, uint32_t* out);
}  // namespace scalar
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 { extern const Kernels table; }
namespace avx512 { extern const Kernels table; }
#endif
#if defined(__aarch64__)
namespace neon { extern const Kernels table; }
#endif

// bf16 screening kernels (exact top-k with a bf16 pre-pass, see topk_screen.cpp).
// Vectors are bf16 rows (uint16 bit patterns) zero-padded to a multiple of 32
// elements.  Only an AVX-512 BF16 build exists; bf16_kernels() is null elsewhere.
struct Bf16Kernels {
    // Rounds rows of fp32 X (nx x d, stride ldx) to bf16 (round to nearest even;
    // values below 2^-126 in magnitude become 0, so the dot instruction never sees
    // a denormal) into out (stride ldo >= d rounded up to 32, padding zeroed), and
    // writes per row x2 = sum x^2, e2 = sum (x - bf16(x))^2, t2 = sum bf16(x)^2,
    // all accumulated in fp32.
    void (*to_bf16_rows)(const float* X, size_t ldx, size_t nx, size_t d, uint16_t* out, size_t ldo,
                         float* x2, float* e2, float* t2);
    // Packs bf16 rows (stride ldx) into groups of 16 rows, pair-interleaved: group
    // G is 16 * dp / 2 uint32 at out + G * 8 * dp, lane r of pair p = row 16G + r's
    // elements 2p, 2p + 1.  A last partial group is zero-padded.
    void (*pack_rows)(const uint16_t* X, size_t ldx, size_t nx, size_t dp, uint32_t* out);
    // S[i * lds + j] = sum_p Q[i * ldq + p] * X_j[p] over p < dp, for i < nq and
    // j < ceil(nx / 16) * 16, X packed by pack_rows: bf16 products accumulated in
    // fp32 by vdpbf16ps, one chain of dp/2 instructions (dp additions) per score.
    void (*dot_tile_bf16)(const uint16_t* Q, size_t ldq, size_t nq, const uint32_t* X, size_t nx, size_t dp,
                          float* S, size_t lds);
    // A value x such that at least r of v[0 .. n) are >= x (n >= r >= 1, v finite),
    // at most (max - min) / 4096 below the r-th largest: the screen's thresholds.
    float (*lower_kth)(const float* v, size_t n, size_t r);
};
#if defined(__x86_64__) || defined(_M_X64)
namespace avx512bf16 { extern const Bf16Kernels table; }
#endif

// The bf16 kernels when the CPU runs them and the fp32 table in use is AVX-512
// (their screen is then rescored by that table); null otherwise.
const Bf16Kernels* bf16_kernels();

// The table chosen for this process (HARDNEG_SIMD or the best the CPU runs).
const Kernels& kernels();
// Forces a level ("scalar", "avx2", "avx512", "neon"); throws std::invalid_argument
// when the name is unknown or the CPU cannot run it.
void set_simd_level(const char* name);
// Levels this CPU can run, best first.
const char* const* available_simd_levels(size_t* count);

}  // namespace hn
