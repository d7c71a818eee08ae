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

constexpr size_t kElemBytes = 2;
constexpr int MQ = 6, MG = 4;  // queries x groups of 16 rows per block

#include "simd/screen_avx512_common.inl"

// fp32 -> bf16 codes of each row (scale 1), with the three sums the error bound needs.
void quantize_rows(const float* X, size_t ldx, size_t nx, size_t d, size_t dp, bool /*query*/, void* out_,
                   float* scale, int32_t* /*sum*/, float* x2, float* e2, float* t2) {
    const __m512 tiny = _mm512_set1_ps(1.17549435e-38f);  // 2^-126, the smallest normal float
    uint16_t* out = static_cast<uint16_t*>(out_);
    for (size_t j = 0; j < nx; ++j) {
        const float* x = X + j * ldx;
        uint16_t* o = out + j * dp;
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
        if (dp > d) std::memset(o + d, 0, (dp - d) * sizeof(uint16_t));
        if (scale) scale[j] = 1.0f;
        x2[j] = _mm512_reduce_add_ps(ax);
        e2[j] = _mm512_reduce_add_ps(ae);
        t2[j] = _mm512_reduce_add_ps(at);
    }
}

// THE HOT LOOP of the bf16 screen.  RQ queries x RG groups of 16 packed corpus
// rows: the 16 lanes of an accumulator are 16 corpus rows, so no horizontal sums.
// Per lane (pair of elements): RG vector loads, RQ broadcasts of the queries'
// pair, RQ*RG vdpbf16ps (two exact bf16 products added per fp32 lane).  6 x 4:
// 24 + 4 + 1 zmm.
template <int RQ, int RG>
void block(const uint32_t* Q, size_t lanes, const ScreenQueries& q, const uint32_t* X, const ScreenRows& r, float* S,
           size_t lds) {
    __m512 acc[RQ][RG];
    for (int i = 0; i < RQ; ++i)
        for (int g = 0; g < RG; ++g) acc[i][g] = _mm512_setzero_ps();
    const size_t gstride = 16 * lanes;
    for (size_t p = 0; p < lanes; ++p) {
        __m512bh x[RG];
        for (int g = 0; g < RG; ++g) x[g] = (__m512bh)_mm512_loadu_si512(X + g * gstride + p * 16);
        for (int i = 0; i < RQ; ++i) {
            const __m512bh qb = (__m512bh)_mm512_set1_epi32((int)Q[i * lanes + p]);
            for (int g = 0; g < RG; ++g) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], qb, x[g]);
        }
    }
    for (int i = 0; i < RQ; ++i)
        for (int g = 0; g < RG; ++g) store_ub(S + i * lds + g * 16, acc[i][g], q, i, r, g);
}

}  // namespace

const ScreenKernels table = {ScreenType::Bf16, "bf16", 32, kElemBytes, quantize_rows, pack_rows, dot_tile};

}  // namespace avx512bf16
}  // namespace hn
#endif
