// Checks every kernel table this CPU can run against the scalar table on random
// inputs (all dtypes, odd sizes).  Built and run by tests/test_kernels_native.py,
// natively and, where a cross compiler and qemu are installed, for arm64 (NEON).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
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

// The int8 screen on AMX tiles against the VNNI loop: the same upper bounds, bit for
// bit, for every query count modulo the 32-query tile, odd row counts and the bound
// terms (cosine scaling, rho / del coefficients) switched on.
static int check_amx(std::mt19937& gen) {
    if (!amx_available() || !screen_kernels(ScreenType::Int8)) return 0;
    std::uniform_real_distribution<float> U(-2.f, 2.f);
    int failures = 0;
    for (size_t d : {1, 64, 100, 384, 1000})
        for (size_t nq : {1, 5, 16, 17, 31, 32, 33, 64, 70})
            for (size_t nx : {1, 16, 37, 100}) {
                set_amx(false);
                const ScreenKernels* V = screen_kernels(ScreenType::Int8);
                set_amx(true);
                const ScreenKernels* A = screen_kernels(ScreenType::Int8);
                const size_t dp = (d + V->align - 1) / V->align * V->align, npad = (nx + 15) / 16 * 16;
                const size_t nmax = std::max(nq, nx);
                std::vector<float> Q(nq * d), X(nx * d), x2(nmax), e2(nmax), t2(nmax), qs(nq), xs(npad, 0.0f);
                std::vector<float> xn(npad), rho(npad), del(npad), a(nq), b(nq), e0(nq);
                for (auto* v : {&Q, &X, &xn, &rho, &del, &a, &b, &e0})
                    for (auto& x : *v) x = U(gen);
                std::vector<int32_t> xsum(npad, 0);
                std::vector<uint8_t> qc(nq * dp), xc(nx * dp);
                std::vector<uint32_t> packed(npad * dp / 4);
                V->quantize_rows(Q.data(), d, nq, d, dp, true, qc.data(), qs.data(), nullptr, x2.data(), e2.data(),
                                 t2.data());
                V->quantize_rows(X.data(), d, nx, d, dp, false, xc.data(), xs.data(), xsum.data(), x2.data(),
                                 e2.data(), t2.data());
                V->pack_rows(xc.data(), nx, dp, packed.data());
                for (int bound = 0; bound < 2; ++bound) {
                    const ScreenQueries sq{qc.data(), qs.data(), bound ? a.data() : nullptr,
                                           bound ? b.data() : nullptr, bound ? e0.data() : nullptr};
                    const ScreenRows sr{xs.data(), xsum.data(), bound ? xn.data() : nullptr,
                                        bound ? rho.data() : nullptr, bound ? del.data() : nullptr};
                    std::vector<float> SV(nq * npad + 3, 7.0f), SA(nq * npad + 3, 7.0f);
                    V->dot_tile(sq, nq, packed.data(), nx, dp, sr, SV.data(), npad);
                    A->dot_tile(sq, nq, packed.data(), nx, dp, sr, SA.data(), npad);
                    if (std::memcmp(SV.data(), SA.data(), SV.size() * sizeof(float)) != 0 && failures++ < 10)
                        std::printf("amx != vnni: d=%zu nq=%zu nx=%zu bound=%d\n", d, nq, nx, bound);
                }
            }
    set_amx(true);
    std::printf("amx int8 screen checked against vnni\n");
    return failures;
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
                if (K.dot_pairs) {  // pointer pairs: bit-identical to dot_tile for the same pair
                    std::vector<const float*> qp;
                    std::vector<const void*> xp;
                    std::vector<size_t> at;
                    for (size_t u = 0; u < 2 * nq + 3; ++u) {
                        size_t i = (u * 7) % nq, j = (u * 5 + u / 3) % nx;
                        qp.push_back(Q.data() + i * d);
                        xp.push_back(static_cast<const char*>(X) + j * d * dtype_size(dt));
                        at.push_back(i * nx + j);
                    }
                    std::vector<float> P(qp.size());
                    K.dot_pairs(qp.data(), xp.data(), qp.size(), d, dt, P.data());
                    for (size_t u = 0; u < qp.size(); ++u)
                        if (std::memcmp(&P[u], &S[at[u]], 4) != 0) {
                            if (failures++ < 10) std::printf("%s dot_pairs d=%zu t=%d %g vs %g\n", K.name, d, t, P[u], S[at[u]]);
                        }
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
        if (K.filter_take) {  // filter_ge plus the values, and x cleared
            for (size_t n : {0, 1, 15, 16, 17, 63, 64, 65, 999, 1000}) {
                std::vector<float> x(s.begin(), s.begin() + n), v(n);
                std::vector<uint32_t> i1(n), i2(n);
                const size_t a = K.filter_take(x.data(), n, 0.5f, i1.data(), v.data());
                const size_t b = scalar::table.filter_ge(s.data(), n, 0.5f, i2.data());
                bool ok = a == b && std::memcmp(i1.data(), i2.data(), a * 4) == 0;
                for (size_t r = 0; ok && r < a; ++r) ok = v[r] == s[i2[r]];
                for (size_t r = 0; ok && r < n; ++r) ok = x[r] == 0.f;
                if (!ok && failures++ < 10) std::printf("%s filter_take n=%zu\n", K.name, n);
            }
        }
        if (K.sort_desc_small) {  // distinct keys, descending
            for (size_t n : {1, 3, 8, 9, 31, 32, 100, 192}) {
                std::vector<uint64_t> in(n), out(n);
                for (size_t r = 0; r < n; ++r) in[r] = (uint64_t(gen() % 50) << 32) | (0xFFFFFFFFu - uint32_t(r));
                K.sort_desc_small(in.data(), n, out.data());
                std::vector<uint64_t> ref = in;
                std::sort(ref.begin(), ref.end(), [](uint64_t a, uint64_t b) { return a > b; });
                if (out != ref && failures++ < 10) std::printf("%s sort_desc_small n=%zu\n", K.name, n);
            }
        }
        // block_max: integer maxima of float bits, negatives as 0.
        {
            std::vector<float> x(256);
            for (auto& v : x) v = U(gen) * 5.f;
            x[3] = -std::numeric_limits<float>::infinity();
            for (size_t r = 32; r < 48; ++r) x[r] = -std::numeric_limits<float>::infinity();
            for (size_t bl : {16, 32, 64}) {
                std::vector<uint32_t> o1(256 / bl), o2(256 / bl);
                K.block_max(x.data(), 256 / bl, bl, o1.data());
                scalar::table.block_max(x.data(), 256 / bl, bl, o2.data());
                if (o1 != o2) {
                    if (failures++ < 10) std::printf("%s block_max bl=%zu\n", K.name, bl);
                }
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
        // lower_kth: at least r values at or above it, within (max - min) / 4096 of the r-th largest
        for (size_t n : {1, 5, 16, 17, 100, 1000}) {
            std::vector<float> v(n);
            for (auto& x : v) x = U(gen) * 10.f;
            if (n > 20) v[7] = v[8] = v[9];  // ties
            std::vector<float> sorted(v);
            std::sort(sorted.begin(), sorted.end(), std::greater<float>());
            const float span = sorted.front() - sorted.back();
            for (size_t r : {size_t(1), (n + 1) / 2, n}) {
                const float x = K.lower_kth(v.data(), n, r);
                size_t c = 0;
                for (float y : v) c += y >= x;
                if (c < r || x > sorted[r - 1] || double(sorted[r - 1]) - x > span / 4096.0 * 1.001 + 1e-30) {
                    if (failures++ < 10) std::printf("%s lower_kth n=%zu r=%zu: %g vs %g\n", K.name, n, r, x, sorted[r - 1]);
                }
            }
        }
        // the screen's kernels: scores against the exact products of their codes, the
        // codes against their rounding rules, the bound sums against double sums
        for (ScreenType st : {ScreenType::Bf16, ScreenType::Int8}) {
            const ScreenKernels* B = screen_kernels(st);
            if (!B) continue;
            const bool i8 = st == ScreenType::Int8;
            for (size_t d : {1, 17, 32, 100}) {
                const size_t nq = 7, nx = 37, dp = (d + B->align - 1) / B->align * B->align, eb = B->elem_bytes;
                const size_t npad = (nx + 15) / 16 * 16;
                std::vector<float> Q(nq * d), X(nx * d), x2(nx), e2(nx), t2(nx), qs(nq), xs(npad, 0.0f);
                std::vector<int32_t> xsum(npad, 0);
                for (auto& v : Q) v = U(gen);
                for (auto& v : X) v = U(gen);
                X[3] = 1e-39f;  // a denormal: flushed to 0 (bf16)
                for (size_t p = 0; p < d; ++p) X[5 * d + p] *= 1e-3f;  // a small row, a zero row
                for (size_t p = 0; p < d; ++p) X[6 * d + p] = 0;
                std::vector<uint8_t> qc(nq * dp * eb), xc(nx * dp * eb);
                std::vector<uint32_t> packed(npad * dp * eb / 4);
                B->quantize_rows(Q.data(), d, nq, d, dp, true, qc.data(), qs.data(), nullptr, x2.data(), e2.data(),
                                 t2.data());
                B->quantize_rows(X.data(), d, nx, d, dp, false, xc.data(), xs.data(), xsum.data(), x2.data(),
                                 e2.data(), t2.data());
                B->pack_rows(xc.data(), nx, dp, packed.data());
                std::vector<float> S(nq * npad);
                const ScreenQueries sq{qc.data(), qs.data(), nullptr, nullptr, nullptr};
                const ScreenRows sr{xs.data(), xsum.data(), nullptr, nullptr, nullptr};
                B->dot_tile(sq, nq, packed.data(), nx, dp, sr, S.data(), npad);
                // the value a code stands for (without its scale)
                auto code = [&](const std::vector<uint8_t>& c, size_t row, size_t p, bool query) -> double {
                    if (i8) return double(int(c[row * dp + p]) - (query ? 128 : (c[row * dp + p] > 127 ? 256 : 0)));
                    uint16_t h;
                    std::memcpy(&h, c.data() + (row * dp + p) * 2, 2);
                    uint32_t u = uint32_t(h) << 16;
                    float f;
                    std::memcpy(&f, &u, 4);
                    return f;
                };
                for (size_t i = 0; i < nq; ++i)
                    for (size_t j = 0; j < nx; ++j) {
                        double ref = 0, mag = 0;
                        for (size_t p = 0; p < dp; ++p) {
                            const double pr = code(qc, i, p, true) * code(xc, j, p, false);
                            ref += pr, mag += std::fabs(pr);
                        }
                        if (i8) ref *= double(qs[i]) * double(xs[j]), mag *= double(qs[i]) * double(xs[j]);
                        if (std::fabs(S[i * npad + j] - ref) > 1e-5 * (mag + 1e-30)) {
                            if (failures++ < 10) std::printf("%s dot d=%zu %g vs %g\n", B->name, d, S[i * npad + j], ref);
                        }
                    }
                for (size_t j = 0; j < nx; ++j) {  // codes: half a step of error per element at most
                    double e = 0, sum = 0;
                    for (size_t p = 0; p < dp; ++p) {
                        const double c = code(xc, j, p, false);
                        if (p >= d) {
                            if (c != 0 && failures++ < 10) std::printf("%s padding not zero\n", B->name);
                            continue;
                        }
                        const double v = X[j * d + p], w = i8 ? c * xs[j] : c;
                        const double step = i8 ? 0.5 * xs[j] : std::ldexp(std::fabs(v), -8) + 1.2e-38;
                        if (std::fabs(v - w) > step * (1 + 1e-6) || (i8 && std::fabs(c) > 127)) {
                            if (failures++ < 10) std::printf("%s rounding %g -> %g\n", B->name, v, w);
                        }
                        e += (v - w) * (v - w), sum += c;
                    }
                    if (std::fabs(e2[j] - e) > 1e-4 * e + 1e-30) {
                        if (failures++ < 10) std::printf("%s e2 %g vs %g\n", B->name, e2[j], e);
                    }
                    if (i8 && (double(xsum[j]) != sum || !(xs[j] >= 0x1p-60f))) {
                        if (failures++ < 10) std::printf("int8 sum %d vs %g, scale %g\n", xsum[j], sum, xs[j]);
                    }
                }
            }
            std::printf("%s %s screen kernels checked\n", K.name, B->name);
        }
        std::printf("%s checked\n", K.name);
    }
    set_simd_level(levels[0]);  // the screen runs beside the best fp32 table
    failures += check_amx(gen);
    std::printf(failures ? "FAILED %d\n" : "OK\n", failures);
    return failures ? 1 : 0;
}
