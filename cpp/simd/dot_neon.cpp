// NEON (ASIMD) kernels: every AArch64 CPU has them, so no flags are needed.
// fp16/bf16 rows are widened with integer shifts / the scalar converter.
#if defined(__aarch64__)
#include <arm_neon.h>
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace neon {
namespace {

#include "simd/wsum.inl"

inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    u = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <DType T>
inline float32x4_t load4(const void* X, size_t off) {
    if constexpr (T == DType::F32) {
        return vld1q_f32(static_cast<const float*>(X) + off);
    } else if constexpr (T == DType::BF16) {
        uint32x4_t w = vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(X) + off), 16);
        return vreinterpretq_f32_u32(w);
    } else {
        const uint16_t* h = static_cast<const uint16_t*>(X) + off;
        float f[4] = {h2f(h[0]), h2f(h[1]), h2f(h[2]), h2f(h[3])};
        return vld1q_f32(f);
    }
}

template <DType T>
inline float32x4_t load4_tail(const void* X, size_t off, size_t n) {
    uint16_t h[4] = {0, 0, 0, 0};
    float f[4] = {0, 0, 0, 0};
    if constexpr (T == DType::F32) {
        std::memcpy(f, static_cast<const float*>(X) + off, n * 4);
        return vld1q_f32(f);
    } else {
        std::memcpy(h, static_cast<const uint16_t*>(X) + off, n * 2);
        return load4<T>(h, 0);
    }
}

// THE HOT LOOP: RQ x RC register block, 4 lanes along d.
template <int RQ, int RC, DType T>
inline void block(const float* Q, size_t ldq, const void* X, size_t ldx, size_t d, float* S, size_t lds) {
    float32x4_t acc[RQ][RC];
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) acc[i][j] = vdupq_n_f32(0.f);
    size_t p = 0;
    for (; p + 4 <= d; p += 4) {
        float32x4_t q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = vld1q_f32(Q + i * ldq + p);
        for (int j = 0; j < RC; ++j) {
            float32x4_t x = load4<T>(X, j * ldx + p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = vfmaq_f32(acc[i][j], q[i], x);
        }
    }
    if (p < d) {
        float32x4_t q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = load4_tail<DType::F32>(Q + i * ldq, p, d - p);
        for (int j = 0; j < RC; ++j) {
            float32x4_t x = load4_tail<T>(X, j * ldx + p, d - p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = vfmaq_f32(acc[i][j], q[i], x);
        }
    }
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) S[i * lds + j] = vaddvq_f32(acc[i][j]);
}

template <int RQ, DType T>
inline void row_sweep(const float* Q, size_t ldq, const void* X, size_t ldx, size_t nx, size_t d, float* S, size_t lds) {
    const size_t es = (T == DType::F32) ? 4 : 2;
    const char* xb = static_cast<const char*>(X);
    size_t j = 0;
    for (; j + 4 <= nx; j += 4) block<RQ, 4, T>(Q, ldq, xb + j * ldx * es, ldx, d, S + j, lds);
    for (; j < nx; ++j) block<RQ, 1, T>(Q, ldq, xb + j * ldx * es, ldx, d, S + j, lds);
}

template <DType T>
void dot_tile_t(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx, size_t nx, size_t d, float* S, size_t lds) {
    size_t i = 0;
    for (; i + 4 <= nq; i += 4) row_sweep<4, T>(Q + i * ldq, ldq, X, ldx, nx, d, S + i * lds, lds);
    for (; i < nq; ++i) row_sweep<1, T>(Q + i * ldq, ldq, X, ldx, nx, d, S + i * lds, lds);
}

void dot_tile(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx, size_t nx, size_t d, DType xt, float* S, size_t lds) {
    switch (xt) {
        case DType::F32: dot_tile_t<DType::F32>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
        case DType::F16: dot_tile_t<DType::F16>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
        case DType::BF16: dot_tile_t<DType::BF16>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
    }
}

void sqnorm_rows(const void* X, size_t ldx, size_t nx, size_t d, DType xt, float* out) {
    for (size_t j = 0; j < nx; ++j) {
        const char* row = static_cast<const char*>(X) + j * ldx * dtype_size(xt);
        float s;
        switch (xt) {
            case DType::F32: block<1, 1, DType::F32>((const float*)row, 0, row, 0, d, &s, 0); break;
            default: {
                // widen the row once, then square it
                float buf[256];
                float acc = 0.f;
                for (size_t p0 = 0; p0 < d; p0 += 256) {
                    size_t n = d - p0 < 256 ? d - p0 : 256;
                    for (size_t l = 0; l < n; ++l) {
                        uint16_t h = ((const uint16_t*)row)[p0 + l];
                        if (xt == DType::F16) buf[l] = h2f(h);
                        else { uint32_t u = (uint32_t)h << 16; std::memcpy(&buf[l], &u, 4); }
                    }
                    float part;
                    block<1, 1, DType::F32>(buf, 0, buf, 0, n, &part, 0);
                    acc += part;
                }
                s = acc;
            }
        }
        out[j] = s;
    }
}

size_t filter_ge(const float* s, size_t n, float tau, uint32_t* out) {
    size_t c = 0;
    for (size_t i = 0; i < n; ++i)
        if (s[i] >= tau) out[c++] = (uint32_t)i;
    return c;
}

void to_f32(const void* src, DType t, size_t n, float* dst) {
    for (size_t i = 0; i < n; ++i) {
        if (t == DType::F32) dst[i] = static_cast<const float*>(src)[i];
        else {
            uint16_t h = static_cast<const uint16_t*>(src)[i];
            if (t == DType::F16) dst[i] = h2f(h);
            else { uint32_t u = (uint32_t)h << 16; std::memcpy(&dst[i], &u, 4); }
        }
    }
}

}  // namespace

const Kernels table = {dot_tile, sqnorm_rows, filter_ge, to_f32, scalar::axpy, scalar::block_max, "neon", nullptr, nullptr,
                       nullptr, scalar::lower_kth, wsum_loop};

}  // namespace neon
}  // namespace hn
#endif
