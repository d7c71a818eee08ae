// Portable kernels: plain C++ the compiler may auto-vectorise for the baseline
// ISA.  This is also the reference the SIMD kernels are tested against.
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace scalar {
namespace {

#include "simd/wsum.inl"

#include "simd/bisect_kth.inl"

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE half -> float, exact for every input (subnormals, inf, nan included).
inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return bits_to_float(sign);
        // subnormal: value = man * 2^-24
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
    return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline float load(const void* X, size_t i, DType t) {
    switch (t) {
        case DType::F32: return static_cast<const float*>(X)[i];
        case DType::F16: return half_to_float(static_cast<const uint16_t*>(X)[i]);
        default: return bits_to_float((uint32_t)static_cast<const uint16_t*>(X)[i] << 16);
    }
}

// 16 partial sums per pair, combined pairwise at the end: the same operation
// order for every (i, j), and close to what the SIMD kernels do numerically.
constexpr size_t W = 16;
constexpr size_t ROWS = 64;

inline float reduce(const float* a) {
    float t[8];
    for (size_t l = 0; l < 8; ++l) t[l] = a[l] + a[l + 8];
    for (size_t l = 0; l < 4; ++l) t[l] += t[l + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

void dot_tile(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx, size_t nx,
              size_t d, DType xt, float* S, size_t lds) {
    // Widen a few corpus rows at a time into a scratch buffer, then run plain loops.
    float xs[W * 64];
    for (size_t j = 0; j < nx; ++j) {
        for (size_t i = 0; i < nq; ++i) {
            float acc[W] = {0};
            const float* q = Q + i * ldq;
            size_t p = 0;
            for (; p + W <= d; p += W) {
                for (size_t l = 0; l < W; ++l) xs[l] = load(X, j * ldx + p + l, xt);
                for (size_t l = 0; l < W; ++l) acc[l] += q[p + l] * xs[l];
            }
            for (size_t l = 0; p + l < d; ++l) acc[l] += q[p + l] * load(X, j * ldx + p + l, xt);
            S[i * lds + j] = reduce(acc);
        }
    }
    (void)ROWS;
}

void sqnorm_rows(const void* X, size_t ldx, size_t nx, size_t d, DType xt, float* out) {
    for (size_t j = 0; j < nx; ++j) {
        float acc[W] = {0};
        size_t p = 0;
        for (; p + W <= d; p += W)
            for (size_t l = 0; l < W; ++l) {
                float v = load(X, j * ldx + p + l, xt);
                acc[l] += v * v;
            }
        for (size_t l = 0; p + l < d; ++l) {
            float v = load(X, j * ldx + p + l, xt);
            acc[l] += v * v;
        }
        out[j] = reduce(acc);
    }
}

size_t filter_ge(const float* s, size_t n, float tau, uint32_t* out) {
    size_t c = 0;
    for (size_t i = 0; i < n; ++i)
        if (s[i] >= tau) out[c++] = (uint32_t)i;
    return c;
}

void to_f32(const void* src, DType t, size_t n, float* dst) {
    for (size_t i = 0; i < n; ++i) dst[i] = load(src, i, t);
}

}  // namespace

// Plain loops shared with the tables that have nothing faster (declared in kernels.h).
void axpy(float* y, const float* x, size_t n, float w) {
    for (size_t i = 0; i < n; ++i) {
        volatile float p = w * x[i];  // no fused multiply-add (bit-identical to the BM25 loops)
        y[i] = y[i] + p;
    }
}

void block_max(const float* x, size_t nb, size_t bl, uint32_t* out) {
    const int32_t* xi = reinterpret_cast<const int32_t*>(x);
    for (size_t b = 0; b < nb; ++b) {
        int32_t m = 0;
        for (size_t r = 0; r < bl; ++r) m = xi[b * bl + r] > m ? xi[b * bl + r] : m;
        out[b] = uint32_t(m);
    }
}

float lower_kth(const float* v, size_t n, size_t r) {
    float lo = v[0], hi = v[0];
    for (size_t i = 1; i < n; ++i) {
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
    }
    return bisect_kth(lo, hi, r, [&](float th) {
        size_t c = 0;
        for (size_t i = 0; i < n; ++i) c += v[i] >= th;
        return c;
    });
}

const Kernels table = {dot_tile, sqnorm_rows, filter_ge, to_f32, axpy, block_max, "scalar", nullptr, nullptr, nullptr,
                       lower_kth, wsum_loop};

}  // namespace scalar
}  // namespace hn
