// AVX-512 VNNI kernels for the screened top-k (compiled with -mavx512vnni on
// top of the AVX-512 flags; only called when the CPU supports them, see
// dispatch.cpp).  Rows become int8 codes with one fp32 scale per row, and
// vpdpbusd sums four code products per int32 lane exactly: per instruction
// twice the products of vdpbf16ps.  The scores are *approximate* (the codes
// round the vectors more coarsely than bf16); topk_screen.cpp bounds their error
// and rescores the survivors with the fp32 kernel.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(HN_NO_AVX512VNNI)
#include <immintrin.h>
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace avx512vnni {
namespace {

constexpr size_t kElemBytes = 1;
constexpr int MQ = 6, MG = 4;  // queries x groups of 16 rows per block

#include "simd/screen_avx512_common.inl"

// fp32 -> int8 codes of each row: s = max|x| / 127 (at least 2^-60, so products
// of two scales stay normal floats), code = round(x / s) clamped to [-127, 127],
// x~ = s * code; with the sum of the codes and the three sums the error bound
// needs (e = x - s * code with one rounding, by a fused multiply-add).  Query rows
// store code + 128 (unsigned: vpdpbusd's first operand); dot_tile takes the 128
// back out through the corpus rows' code sums.
void quantize_rows(const float* X, size_t ldx, size_t nx, size_t d, size_t dp, bool query, void* out_,
                   float* scale, int32_t* sum, float* x2, float* e2, float* t2) {
    uint8_t* out = static_cast<uint8_t*>(out_);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    const __m512i shift = _mm512_set1_epi32(query ? 128 : 0);
    const size_t full = d / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (d - full)) - 1u);
    // Two sets of accumulators (even and odd chunks of 16): each sum's chain of dependent
    // adds is half as long (measured 1.3x faster on 384-dim rows, one thread, in cache or
    // not).  Any order of the sums is fine: the bound inflates them for d terms in any order.
    struct Sums {
        __m512 ax, ae, at;
        __m512i acs;
    };
    for (size_t j = 0; j < nx; ++j) {
        const float* x = X + j * ldx;
        uint8_t* o = out + j * dp;
        __m512 am0 = _mm512_setzero_ps(), am1 = _mm512_setzero_ps();
        size_t p = 0;
        for (; p + 32 <= full; p += 32) {
            am0 = _mm512_max_ps(am0, _mm512_abs_ps(_mm512_loadu_ps(x + p)));
            am1 = _mm512_max_ps(am1, _mm512_abs_ps(_mm512_loadu_ps(x + p + 16)));
        }
        if (p < full) am0 = _mm512_max_ps(am0, _mm512_abs_ps(_mm512_loadu_ps(x + p)));
        if (tail) am1 = _mm512_max_ps(am1, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, x + full)));
        float s = _mm512_reduce_max_ps(_mm512_max_ps(am0, am1)) / 127.0f;
        if (!(s >= 0x1p-60f)) s = 0x1p-60f;  // a zero or tiny row (or NaN: x2 tells the caller)
        const __m512 sv = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s);
        Sums a[2];
        for (Sums& z : a) z.ax = z.ae = z.at = _mm512_setzero_ps(), z.acs = _mm512_setzero_si512();
        // one chunk of 16: codes (nearest; any code is fine, e is measured), their sum, and
        // x = s code + e with e by one fused multiply-add
        auto chunk = [&](Sums& z, const __m512 v) -> __m128i {
            __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            c = _mm512_max_epi32(lo, _mm512_min_epi32(hi, c));
            const __m512 cf = _mm512_cvtepi32_ps(c);
            const __m512 w = _mm512_mul_ps(sv, cf);
            const __m512 e = _mm512_fnmadd_ps(sv, cf, v);
            z.ax = _mm512_fmadd_ps(v, v, z.ax);
            z.ae = _mm512_fmadd_ps(e, e, z.ae);
            z.at = _mm512_fmadd_ps(w, w, z.at);
            z.acs = _mm512_add_epi32(z.acs, c);
            return _mm512_cvtepi32_epi8(_mm512_add_epi32(c, shift));
        };
        for (p = 0; p + 32 <= full; p += 32) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o + p), chunk(a[0], _mm512_loadu_ps(x + p)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o + p + 16), chunk(a[1], _mm512_loadu_ps(x + p + 16)));
        }
        if (p < full) _mm_storeu_si128(reinterpret_cast<__m128i*>(o + p), chunk(a[0], _mm512_loadu_ps(x + p)));
        if (tail) _mm_mask_storeu_epi8(o + full, tail, chunk(a[1], _mm512_maskz_loadu_ps(tail, x + full)));
        if (dp > d) std::memset(o + d, query ? 128 : 0, dp - d);
        scale[j] = s;
        if (sum) sum[j] = _mm512_reduce_add_epi32(_mm512_add_epi32(a[0].acs, a[1].acs));
        x2[j] = _mm512_reduce_add_ps(_mm512_add_ps(a[0].ax, a[1].ax));
        e2[j] = _mm512_reduce_add_ps(_mm512_add_ps(a[0].ae, a[1].ae));
        t2[j] = _mm512_reduce_add_ps(_mm512_add_ps(a[0].at, a[1].at));
    }
}

// acc + the four u8 x s8 products of each lane of a and b.  Inline assembly:
// GCC's allocation around the intrinsic copies (and spills) every accumulator
// on each step (measured 1.3x slower than the bf16 loop instead of 2x faster).
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

// THE HOT LOOP of the int8 screen.  RQ queries x RG groups of 16 packed corpus
// rows, as in the bf16 kernel, but a lane holds four codes: per lane, RG vector
// loads, RQ broadcasts, RQ*RG vpdpbusd (four exact u8 x s8 products added to an
// int32 lane).  The accumulators start at -128 * (the row's code sum), which
// cancels the +128 of the query codes, so they end at the exact integer
// sum of code products I; the score is float(I) * (s_q * s_x): three roundings.
template <int RQ, int RG>
void block(const uint32_t* Q, size_t lanes, const ScreenQueries& q, const uint32_t* X, const ScreenRows& r, float* S,
           size_t lds) {
    __m512i acc[RQ][RG];
    for (int g = 0; g < RG; ++g) {
        const __m512i init =
            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(r.sum + 16 * g), 7));
        for (int i = 0; i < RQ; ++i) acc[i][g] = init;
    }
    const size_t gstride = 16 * lanes;
    for (size_t p = 0; p < lanes; ++p) {
        __m512i x[RG];
        for (int g = 0; g < RG; ++g) x[g] = _mm512_loadu_si512(X + g * gstride + p * 16);
        for (int i = 0; i < RQ; ++i) {
            const __m512i qb = _mm512_set1_epi32((int)Q[i * lanes + p]);
            for (int g = 0; g < RG; ++g) acc[i][g] = dpbusd(acc[i][g], qb, x[g]);
        }
    }
    for (int g = 0; g < RG; ++g) {
        const __m512 xsv = _mm512_loadu_ps(r.scale + 16 * g);
        for (int i = 0; i < RQ; ++i) {
            const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(q.scale[i]), xsv);
            store_ub(S + i * lds + g * 16, _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][g]), sc), q, i, r, g);
        }
    }
}

}  // namespace

const ScreenKernels table = {ScreenType::Int8, "int8", 64, kElemBytes, quantize_rows, pack_rows, dot_tile};

}  // namespace avx512vnni
}  // namespace hn
#endif
