// AVX-512 BF16 kernels for the screened top-k (compiled with -mavx512bf16 on
// top of the AVX-512 flags; only called when the CPU supports them, see
// dispatch.cpp).  They produce *approximate* scores: topk_screen.cpp bounds
// their error and rescores the survivors with the fp32 kernel.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(HN_NO_AVX512BF16)
#include <immintrin.h>
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace avx512bf16 {
namespace {

// fp32 -> bf16 of one row, with the three sums the error bound needs.
void to_bf16_rows(const float* X, size_t ldx, size_t nx, size_t d, uint16_t* out, size_t ldo,
                  float* x2, float* e2, float* t2) {
    const __m512 tiny = _mm512_set1_ps(1.17549435e-38f);  // 2^-126, the smallest normal float
    for (size_t j = 0; j < nx; ++j) {
        const float* x = X + j * ldx;
        uint16_t* o = out + j * ldo;
        __m512 ax = _mm512_setzero_ps(), ae = _mm512_setzero_ps(), at = _mm512_setzero_ps();
        for (size_t p = 0; p < d; p += 16) {
            const __mmask16 m = d - p >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (d - p)) - 1u);
            const __m512 v = _mm512_maskz_loadu_ps(m, x + p);
            // |v| < 2^-126 -> 0: vdpbf16ps would treat a denormal as 0 anyway; doing it
            // here keeps the rounding error below exact (it is measured in e2)
            const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(v), tiny, _CMP_LT_OQ);
            const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_mov_ps((__mmask16)~small, v));
            __m256i bi;
            std::memcpy(&bi, &b, sizeof(bi));
            const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bi), 16));
            const __m512 e = _mm512_sub_ps(v, w);  // exact: v and its rounding share the exponent range
            ax = _mm512_fmadd_ps(v, v, ax);
            ae = _mm512_fmadd_ps(e, e, ae);
            at = _mm512_fmadd_ps(w, w, at);
            _mm256_mask_storeu_epi16(o + p, m, bi);
        }
        if (ldo > d) std::memset(o + d, 0, (ldo - d) * sizeof(uint16_t));
        x2[j] = _mm512_reduce_add_ps(ax);
        e2[j] = _mm512_reduce_add_ps(ae);
        t2[j] = _mm512_reduce_add_ps(at);
    }
}

// Transposes a 16 x 16 matrix of 32-bit lanes held in r[0..15] (rows) in place.
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

// Packs bf16 rows (row-major, stride ldx, dp a multiple of 32) into groups of 16
// rows: group G holds, for each pair of elements (2p, 2p+1), the 16 rows' pairs
// as one 64-byte vector (uint32 lanes).  A last partial group is zero-padded.
// 16 rows x 16 pairs at a time through a register transpose.
void pack_rows(const uint16_t* X, size_t ldx, size_t nx, size_t dp, uint32_t* out) {
    const size_t pairs = dp / 2;
    for (size_t g0 = 0; g0 < nx; g0 += 16) {
        uint32_t* o = out + (g0 / 16) * 16 * pairs;
        const size_t rows = nx - g0 < 16 ? nx - g0 : 16;
        for (size_t p = 0; p < pairs; p += 16) {
            __m512i r[16];
            for (size_t i = 0; i < 16; ++i)
                r[i] = i < rows ? _mm512_loadu_si512(X + (g0 + i) * ldx + 2 * p) : _mm512_setzero_si512();
            transpose16(r);  // r[j] = pair p + j of the 16 rows
            for (int j = 0; j < 16; ++j) _mm512_storeu_si512(o + (p + j) * 16, r[j]);
        }
    }
}

// THE HOT LOOP of the screen.  RQ queries x RG groups of 16 packed corpus rows:
// the 16 lanes of an accumulator are 16 corpus rows, so no horizontal sums.  Per
// pair of elements: RG vector loads, RQ broadcasts of the queries' pair, RQ*RG
// vdpbf16ps (two exact bf16 products added per lane).  6 x 4: 24 + 4 + 1 zmm.
template <int RQ, int RG>
inline void block(const uint16_t* Q, size_t ldq, const uint32_t* X, size_t dp, float* S, size_t lds) {
    __m512 acc[RQ][RG];
    for (int i = 0; i < RQ; ++i)
        for (int g = 0; g < RG; ++g) acc[i][g] = _mm512_setzero_ps();
    const size_t pairs = dp / 2, gstride = 16 * pairs;
    for (size_t p = 0; p < pairs; ++p) {
        __m512bh x[RG];
        for (int g = 0; g < RG; ++g) x[g] = (__m512bh)_mm512_loadu_si512(X + g * gstride + p * 16);
        for (int i = 0; i < RQ; ++i) {
            int32_t qp;
            std::memcpy(&qp, Q + i * ldq + 2 * p, 4);
            const __m512bh qb = (__m512bh)_mm512_set1_epi32(qp);
            for (int g = 0; g < RG; ++g) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], qb, x[g]);
        }
    }
    for (int i = 0; i < RQ; ++i)
        for (int g = 0; g < RG; ++g) _mm512_storeu_ps(S + i * lds + g * 16, acc[i][g]);
}

constexpr int MQ = 6, MG = 4;
using BlockFn = void (*)(const uint16_t*, size_t, const uint32_t*, size_t, float*, size_t);

BlockFn block_fn(size_t rq, size_t rg) {
    static const BlockFn table[MQ + 1][MG + 1] = {
        {nullptr},
        {nullptr, &block<1, 1>, &block<1, 2>, &block<1, 3>, &block<1, 4>},
        {nullptr, &block<2, 1>, &block<2, 2>, &block<2, 3>, &block<2, 4>},
        {nullptr, &block<3, 1>, &block<3, 2>, &block<3, 3>, &block<3, 4>},
        {nullptr, &block<4, 1>, &block<4, 2>, &block<4, 3>, &block<4, 4>},
        {nullptr, &block<5, 1>, &block<5, 2>, &block<5, 3>, &block<5, 4>},
        {nullptr, &block<6, 1>, &block<6, 2>, &block<6, 3>, &block<6, 4>}};
    return table[rq][rg];
}

// Each group of MQ queries sweeps the packed corpus tile; scores for all
// ceil(nx / 16) * 16 rows (padding rows score 0) are written.
void dot_tile_bf16(const uint16_t* Q, size_t ldq, size_t nq, const uint32_t* X, size_t nx, size_t dp, float* S,
                   size_t lds) {
    const size_t groups = (nx + 15) / 16, gstride = 8 * dp;
    for (size_t i = 0; i < nq; i += MQ) {
        const size_t rq = nq - i < (size_t)MQ ? nq - i : (size_t)MQ;
        for (size_t g = 0; g < groups; g += MG) {
            const size_t rg = groups - g < (size_t)MG ? groups - g : (size_t)MG;
            block_fn(rq, rg)(Q + i * ldq, ldq, X + g * gstride, dp, S + i * lds + g * 16, lds);
        }
    }
}

// A value x with at least r of v[0 .. n) >= x (n >= r >= 1), close below the
// r-th largest: bisection on [min, max], 12 counting passes of 16 lanes.
float lower_kth(const float* v, size_t n, size_t r) {
    __m512 lo16 = _mm512_set1_ps(v[0]), hi16 = lo16;
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 x = _mm512_loadu_ps(v + j);
        lo16 = _mm512_min_ps(lo16, x);
        hi16 = _mm512_max_ps(hi16, x);
    }
    float lo = _mm512_reduce_min_ps(lo16), hi = _mm512_reduce_max_ps(hi16);
    for (size_t t = j; t < n; ++t) {
        lo = v[t] < lo ? v[t] : lo;
        hi = v[t] > hi ? v[t] : hi;
    }
    auto count_ge = [&](float th) {
        const __m512 t16 = _mm512_set1_ps(th);
        size_t c = 0, i = 0;
        for (; i + 16 <= n; i += 16)
            c += (size_t)__builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + i), t16, _CMP_GE_OQ));
        for (; i < n; ++i) c += v[i] >= th;
        return c;
    };
    if (count_ge(hi) >= r) return hi;
    for (int it = 0; it < 12; ++it) {  // invariant: at least r values >= lo
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;
        if (count_ge(mid) >= r) lo = mid;
        else hi = mid;
    }
    return lo;
}

}  // namespace

const Bf16Kernels table = {to_bf16_rows, pack_rows, dot_tile_bf16, lower_kth};

}  // namespace avx512bf16
}  // namespace hn
#endif
