// exp for the softmax passes of the loss kernels (losses.cpp, simd/rows.inl).
// `static`: every file that includes it gets its own copy, compiled with that file's
// flags; an inline function shared between a baseline file and an AVX-512 file could
// be resolved to the AVX-512 copy everywhere (see simd/kernels.h).
#pragma once
#include <cstdint>
#include <cstring>

namespace hn {

// exp(x) for x <= 0 (Cephes polynomial, ~1 ulp), exactly 0 below -87 (and for -inf).
// Branch-free so that the loops calling it vectorise.
static inline float exp_nonpos(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    const float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float p2;
    std::memcpy(&p2, &bits, 4);
    return x < -87.0f ? 0.0f : y * p2;
}

}  // namespace hn
