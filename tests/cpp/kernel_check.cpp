// Checks every kernel table this CPU can run against the scalar table on random
// inputs (all dtypes, odd sizes).  Built and run by tests/test_kernels_native.py,
// natively and, where a cross compiler and qemu are installed, for arm64 (NEON).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "simd/kernels.h"

using namespace hn;

static uint16_t to_half(float f) {  // round-to-nearest-even float -> IEEE half (normal range)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int exp = int((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    if (exp <= 0) return (uint16_t)sign;
    uint32_t h = sign | (uint32_t(exp) << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) ++h;
    return (uint16_t)h;
}

int main() {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> U(-2.f, 2.f);
    int failures = 0;
    size_t nlev = 0;
    const char* const* levels = available_simd_levels(&nlev);
    for (size_t L = 0; L < nlev; ++L) {
        set_simd_level(levels[L]);
        const Kernels& K = kernels();
        for (size_t d : {1, 3, 7, 8, 15, 16, 17, 33, 64, 100}) {
            for (int t = 0; t < 3; ++t) {
                DType dt = DType(t);
                size_t nq = 13, nx = 11;
                std::vector<float> Q(nq * d), Xf(nx * d);
                std::vector<uint16_t> Xh(nx * d);
                for (auto& v : Q) v = U(gen);
                for (size_t i = 0; i < nx * d; ++i) {
                    float v = U(gen);
                    if (dt == DType::F16) { Xh[i] = to_half(v); }
                    else if (dt == DType::BF16) { uint32_t u; std::memcpy(&u, &v, 4); Xh[i] = uint16_t(u >> 16); }
                    Xf[i] = v;
                }
                const void* X = dt == DType::F32 ? (const void*)Xf.data() : (const void*)Xh.data();
                std::vector<float> S(nq * nx), R(nq * nx), n1(nx), n2(nx);
                K.dot_tile(Q.data(), d, nq, X, d, nx, d, dt, S.data(), nx);
                scalar::table.dot_tile(Q.data(), d, nq, X, d, nx, d, dt, R.data(), nx);
                K.sqnorm_rows(X, d, nx, d, dt, n1.data());
                scalar::table.sqnorm_rows(X, d, nx, d, dt, n2.data());
                for (size_t i = 0; i < nq * nx; ++i)
                    if (std::fabs(S[i] - R[i]) > 1e-4f * (1 + std::fabs(R[i]))) {
                        if (failures++ < 10) std::printf("%s dot d=%zu t=%d i=%zu %g vs %g\n", K.name, d, t, i, S[i], R[i]);
                    }
                for (size_t i = 0; i < nx; ++i)
                    if (std::fabs(n1[i] - n2[i]) > 1e-4f * (1 + n2[i])) {
                        if (failures++ < 10) std::printf("%s norm d=%zu t=%d %g vs %g\n", K.name, d, t, n1[i], n2[i]);
                    }
                std::vector<float> c1(nx * d), c2(nx * d);
                K.to_f32(X, dt, nx * d, c1.data());
                scalar::table.to_f32(X, dt, nx * d, c2.data());
                if (std::memcmp(c1.data(), c2.data(), c1.size() * 4) != 0) {
                    if (failures++ < 10) std::printf("%s to_f32 t=%d differs\n", K.name, t);
                }
            }
        }
        std::vector<float> s(1000);
        for (auto& v : s) v = U(gen);
        std::vector<uint32_t> o1(1000), o2(1000);
        for (size_t n : {0, 1, 15, 16, 17, 999, 1000}) {
            size_t a = K.filter_ge(s.data(), n, 0.5f, o1.data());
            size_t b = scalar::table.filter_ge(s.data(), n, 0.5f, o2.data());
            if (a != b || std::memcmp(o1.data(), o2.data(), a * 4) != 0) {
                if (failures++ < 10) std::printf("%s filter_ge n=%zu\n", K.name, n);
            }
        }
        // axpy: y + w * x with separate roundings, bit-identical on every table.
        for (size_t n : {0, 1, 15, 16, 17, 999, 1000}) {
            std::vector<float> y1(s.begin(), s.begin() + n), y2 = y1, x(n);
            for (auto& v : x) v = U(gen) * 3.7f;
            K.axpy(y1.data(), x.data(), n, 1.3f);
            scalar::table.axpy(y2.data(), x.data(), n, 1.3f);
            if (std::memcmp(y1.data(), y2.data(), n * 4) != 0) {
                if (failures++ < 10) std::printf("%s axpy n=%zu\n", K.name, n);
            }
        }
        std::printf("%s checked\n", K.name);
    }
    std::printf(failures ? "FAILED %d\n" : "OK\n", failures);
    return failures ? 1 : 0;
}
