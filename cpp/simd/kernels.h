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
    const char* name;
};

namespace scalar { extern const Kernels table; }
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 { extern const Kernels table; }
namespace avx512 { extern const Kernels table; }
#endif
#if defined(__aarch64__)
namespace neon { extern const Kernels table; }
#endif

// The table chosen for this process (HARDNEG_SIMD or the best the CPU runs).
const Kernels& kernels();
// Forces a level ("scalar", "avx2", "avx512", "neon"); throws std::invalid_argument
// when the name is unknown or the CPU cannot run it.
void set_simd_level(const char* name);
// Levels this CPU can run, best first.
const char* const* available_simd_levels(size_t* count);

}  // namespace hn
