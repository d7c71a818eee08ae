// AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; only called
// when the CPU supports them, see dispatch.cpp).  Same structure as the AVX-512
// file with 8 lanes and 16 registers.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace avx2 {
namespace {

#include "simd/wsum.inl"

template <DType T>
inline __m256 load8(const void* X, size_t off) {
    if constexpr (T == DType::F32) {
        return _mm256_loadu_ps(static_cast<const float*>(X) + off);
    } else if constexpr (T == DType::F16) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(X) + off)));
    } else {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(X) + off)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
}

// Tail of a row (fewer than 8 elements left): copied into a zeroed buffer first.
template <DType T>
inline __m256 load8_tail(const void* X, size_t off, size_t n) {
    alignas(32) uint16_t h[16] = {0};
    alignas(32) float f[8] = {0};
    if constexpr (T == DType::F32) {
        std::memcpy(f, static_cast<const float*>(X) + off, n * 4);
        return _mm256_load_ps(f);
    } else {
        std::memcpy(h, static_cast<const uint16_t*>(X) + off, n * 2);
        return load8<T>(h, 0);
    }
}

inline float hsum(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

// THE HOT LOOP: RQ queries x RC corpus rows, 8 lanes along d.  RQ=3, RC=4 keeps
// 12 accumulators + 3 query vectors + 1 corpus vector in the 16 ymm registers.
template <int RQ, int RC, DType T>
inline void block(const float* Q, size_t ldq, const void* X, size_t ldx, size_t d,
                  float* S, size_t lds) {
    __m256 acc[RQ][RC];
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) acc[i][j] = _mm256_setzero_ps();
    size_t p = 0;
    for (; p + 8 <= d; p += 8) {
        __m256 q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = _mm256_loadu_ps(Q + i * ldq + p);
        for (int j = 0; j < RC; ++j) {
            __m256 x = load8<T>(X, j * ldx + p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = _mm256_fmadd_ps(q[i], x, acc[i][j]);
        }
    }
    if (p < d) {
        __m256 q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = load8_tail<DType::F32>(Q + i * ldq, p, d - p);
        for (int j = 0; j < RC; ++j) {
            __m256 x = load8_tail<T>(X, j * ldx + p, d - p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = _mm256_fmadd_ps(q[i], x, acc[i][j]);
        }
    }
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) S[i * lds + j] = hsum(acc[i][j]);
}

constexpr int MQ = 3;
constexpr int MC = 4;

#include "simd/tile_loop.inl"

template <DType T>
void sqnorm_t(const void* X, size_t ldx, size_t nx, size_t d, float* out) {
    const size_t es = (T == DType::F32) ? 4 : 2;
    const char* xb = static_cast<const char*>(X);
    for (size_t j = 0; j < nx; ++j) {
        const void* row = xb + j * ldx * es;
        __m256 acc = _mm256_setzero_ps();
        size_t p = 0;
        for (; p + 8 <= d; p += 8) {
            __m256 x = load8<T>(row, p);
            acc = _mm256_fmadd_ps(x, x, acc);
        }
        if (p < d) {
            __m256 x = load8_tail<T>(row, p, d - p);
            acc = _mm256_fmadd_ps(x, x, acc);
        }
        out[j] = hsum(acc);
    }
}

void sqnorm_rows(const void* X, size_t ldx, size_t nx, size_t d, DType xt, float* out) {
    switch (xt) {
        case DType::F32: sqnorm_t<DType::F32>(X, ldx, nx, d, out); break;
        case DType::F16: sqnorm_t<DType::F16>(X, ldx, nx, d, out); break;
        case DType::BF16: sqnorm_t<DType::BF16>(X, ldx, nx, d, out); break;
    }
}

size_t filter_ge(const float* s, size_t n, float tau, uint32_t* out) {
    const __m256 t = _mm256_set1_ps(tau);
    size_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + i), t, _CMP_GE_OQ));
        while (m) {  // survivors are rare once the threshold has settled
            int b = __builtin_ctz(m);
            out[c++] = (uint32_t)(i + b);
            m &= m - 1;
        }
    }
    for (; i < n; ++i)
        if (s[i] >= tau) out[c++] = (uint32_t)i;
    return c;
}

void to_f32(const void* src, DType t, size_t n, float* dst) {
    size_t i = 0;
    switch (t) {
        case DType::F32:
            for (; i < n; ++i) dst[i] = static_cast<const float*>(src)[i];
            break;
        case DType::F16:
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::F16>(src, i));
            break;
        case DType::BF16:
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::BF16>(src, i));
            break;
    }
    if (i < n && t != DType::F32) {
        alignas(32) float f[8];
        _mm256_store_ps(f, t == DType::F16 ? load8_tail<DType::F16>(src, i, n - i)
                                           : load8_tail<DType::BF16>(src, i, n - i));
        for (size_t l = 0; i + l < n; ++l) dst[i + l] = f[l];
    }
}

void axpy(float* y, const float* x, size_t n, float w) {
    // Separate multiply and add (this file is compiled with -mfma: keep the
    // compiler from fusing them, so results equal the plain loop bit for bit).
    const __m256 vw = _mm256_set1_ps(w);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 p = _mm256_mul_ps(vw, _mm256_loadu_ps(x + i));
        __asm__("" : "+x"(p));  // an opaque barrier between the multiply and the add
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), p));
    }
    for (; i < n; ++i) {
        __m128 p = _mm_mul_ss(_mm_set_ss(w), _mm_set_ss(x[i]));
        __asm__("" : "+x"(p));
        y[i] = _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(y[i]), p));
    }
}

}  // namespace

const Kernels table = {dot_tile, sqnorm_rows, filter_ge, to_f32, axpy, scalar::block_max, "avx2", nullptr, nullptr, nullptr,
                       scalar::lower_kth, wsum_loop};

}  // namespace avx2
}  // namespace hn
#endif
