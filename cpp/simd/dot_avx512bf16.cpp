// AVX-512 BF16 kernels for the screened top-k (compiled with -mavx512bf16 on
// top of the AVX-512 flags; only called when the CPU supports them, see
// dispatch.cpp).  They produce *approximate* scores: topk_screen.cpp bounds
// their error and rescores the survivors with the fp32 kernel.
#if defined(__x86_64__) || defined(_M_X64)
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

// Four horizontal sums at once, [sum(w), sum(x), sum(y), sum(z)]: a 4-level
// addition tree per sum (the depth the error bound assumes), in about a third of
// the instructions of four separate reductions.
inline __m128 hsum4(__m512 w, __m512 x, __m512 y, __m512 z) {
    __m512 awx = _mm512_add_ps(_mm512_shuffle_f32x4(w, x, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(w, x, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 ayz = _mm512_add_ps(_mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(awx, ayz, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(awx, ayz, _MM_SHUFFLE(3, 1, 3, 1)));
    b = _mm512_add_ps(b, _mm512_permute_ps(b, _MM_SHUFFLE(1, 0, 3, 2)));
    b = _mm512_add_ps(b, _mm512_permute_ps(b, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12), b));
}

// THE HOT LOOP of the screen.  A register block of RQ queries x RC corpus rows,
// 32 bf16 elements per step; each vdpbf16ps adds two exact bf16 products per
// fp32 lane.  Same 6 x 4 shape as the fp32 kernel (24 + 6 + 1 zmm registers).
template <int RQ, int RC>
inline void block(const uint16_t* Q, size_t ldq, const uint16_t* X, size_t ldx, size_t dp, float* S, size_t lds) {
    __m512 acc[RQ][RC];
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) acc[i][j] = _mm512_setzero_ps();
    for (size_t p = 0; p < dp; p += 32) {
        __m512bh q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = (__m512bh)_mm512_loadu_si512(Q + i * ldq + p);
        for (int j = 0; j < RC; ++j) {
            const __m512bh x = (__m512bh)_mm512_loadu_si512(X + j * ldx + p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], q[i], x);
        }
    }
    for (int i = 0; i < RQ; ++i) {
        if constexpr (RC == 4) {
            _mm_storeu_ps(S + i * lds, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        } else {
            for (int j = 0; j < RC; ++j) S[i * lds + j] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
}

constexpr int MQ = 6, MC = 4;
using BlockFn = void (*)(const uint16_t*, size_t, const uint16_t*, size_t, size_t, float*, size_t);

BlockFn block_fn(size_t rq, size_t rc) {
    static const BlockFn table[MQ + 1][MC + 1] = {
        {nullptr},
        {nullptr, &block<1, 1>, &block<1, 2>, &block<1, 3>, &block<1, 4>},
        {nullptr, &block<2, 1>, &block<2, 2>, &block<2, 3>, &block<2, 4>},
        {nullptr, &block<3, 1>, &block<3, 2>, &block<3, 3>, &block<3, 4>},
        {nullptr, &block<4, 1>, &block<4, 2>, &block<4, 3>, &block<4, 4>},
        {nullptr, &block<5, 1>, &block<5, 2>, &block<5, 3>, &block<5, 4>},
        {nullptr, &block<6, 1>, &block<6, 2>, &block<6, 3>, &block<6, 4>}};
    return table[rq][rc];
}

// Each group of MQ queries sweeps the corpus tile (as the fp32 tile loop).
void dot_tile_bf16(const uint16_t* Q, size_t ldq, size_t nq, const uint16_t* X, size_t ldx, size_t nx,
                   size_t dp, float* S, size_t lds) {
    for (size_t i = 0; i < nq; i += MQ) {
        const size_t rq = nq - i < (size_t)MQ ? nq - i : (size_t)MQ;
        for (size_t j = 0; j < nx; j += MC) {
            const size_t rc = nx - j < (size_t)MC ? nx - j : (size_t)MC;
            block_fn(rq, rc)(Q + i * ldq, ldq, X + j * ldx, ldx, dp, S + i * lds + j, lds);
        }
    }
}

}  // namespace

const Bf16Kernels table = {to_bf16_rows, dot_tile_bf16};

}  // namespace avx512bf16
}  // namespace hn
#endif
