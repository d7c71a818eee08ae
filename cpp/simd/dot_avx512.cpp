// AVX-512 kernels (compiled with -mavx512f/bw/vl/dq, -mfma, -mf16c; only
// called when the CPU and OS support them, see dispatch.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include "simd/kernels.h"

namespace hn {
namespace avx512 {
namespace {

#include "simd/bisect_kth.inl"

// Load 16 corpus elements starting at element `off`, widened to fp32.
template <DType T>
inline __m512 load16(const void* X, size_t off) {
    if constexpr (T == DType::F32) {
        return _mm512_loadu_ps(static_cast<const float*>(X) + off);
    } else if constexpr (T == DType::F16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(X) + off)));
    } else {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(X) + off)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
}

// Masked version for the tail of a row (lanes outside the mask read nothing and are 0).
template <DType T>
inline __m512 load16m(const void* X, size_t off, __mmask16 m) {
    if constexpr (T == DType::F32) {
        return _mm512_maskz_loadu_ps(m, static_cast<const float*>(X) + off);
    } else if constexpr (T == DType::F16) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(X) + off));
    } else {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(X) + off));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
}

// Horizontal sum in a fixed order (same for every accumulator).
inline float hsum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

// Four horizontal sums at once, returned as [sum(w), sum(x), sum(y), sum(z)].
// Every lane follows exactly the addition tree of hsum() (halves of 256, then
// 128, then pairs), so a score is bit-identical whichever path reduced it.
inline __m128 hsum4(__m512 w, __m512 x, __m512 y, __m512 z) {
    // 512 -> 256: [w.lo256 + w.hi256 | x.lo256 + x.hi256]
    __m512 awx = _mm512_add_ps(_mm512_shuffle_f32x4(w, x, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(w, x, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 ayz = _mm512_add_ps(_mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(3, 2, 3, 2)));
    // 256 -> 128: one 128-bit lane per input
    __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(awx, ayz, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(awx, ayz, _MM_SHUFFLE(3, 1, 3, 1)));
    // 4 -> 2 -> 1 inside each lane
    b = _mm512_add_ps(b, _mm512_permute_ps(b, _MM_SHUFFLE(1, 0, 3, 2)));
    b = _mm512_add_ps(b, _mm512_permute_ps(b, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12), b));
}

// THE HOT LOOP.  A register block of RQ queries x RC corpus rows: RQ*RC
// accumulators of 16 lanes each, walking along d 16 elements at a time.  Each
// step loads RQ query vectors and RC corpus vectors and issues RQ*RC FMAs; the
// 16 lanes are summed once at the end.  With RQ=6, RC=4 that is 24 + 6 + 1
// live zmm registers out of 32.
template <int RQ, int RC, DType T>
inline void block(const float* Q, size_t ldq, const void* X, size_t ldx, size_t d,
                  float* S, size_t lds) {
    __m512 acc[RQ][RC];
    for (int i = 0; i < RQ; ++i)
        for (int j = 0; j < RC; ++j) acc[i][j] = _mm512_setzero_ps();
    size_t p = 0;
    for (; p + 16 <= d; p += 16) {
        __m512 q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = _mm512_loadu_ps(Q + i * ldq + p);
        for (int j = 0; j < RC; ++j) {
            __m512 x = load16<T>(X, j * ldx + p);
            for (int i = 0; i < RQ; ++i) acc[i][j] = _mm512_fmadd_ps(q[i], x, acc[i][j]);
        }
    }
    if (p < d) {
        __mmask16 m = (__mmask16)((1u << (d - p)) - 1u);
        __m512 q[RQ];
        for (int i = 0; i < RQ; ++i) q[i] = _mm512_maskz_loadu_ps(m, Q + i * ldq + p);
        for (int j = 0; j < RC; ++j) {
            __m512 x = load16m<T>(X, j * ldx + p, m);
            for (int i = 0; i < RQ; ++i) acc[i][j] = _mm512_fmadd_ps(q[i], x, acc[i][j]);
        }
    }
    for (int i = 0; i < RQ; ++i) {
        if constexpr (RC == 4) {
            _mm_storeu_ps(S + i * lds, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        } else {
            for (int j = 0; j < RC; ++j) S[i * lds + j] = hsum(acc[i][j]);
        }
    }
}

constexpr int MQ = 6;  // queries per register block
constexpr int MC = 4;  // corpus rows per register block

#include "simd/tile_loop.inl"

// RC (query, row) pairs given by pointers: per pair exactly the arithmetic of
// block<> (the same FMA chain per lane, the same horizontal sums), so every score
// is bit-identical to dot_tile's for that pair.  The RC chains run side by side.
template <int RC, DType T>
inline void pairs_block(const float* const* Qp, const void* const* X, size_t d, float* out) {
    __m512 acc[RC];
    for (int j = 0; j < RC; ++j) acc[j] = _mm512_setzero_ps();
    size_t p = 0;
    for (; p + 16 <= d; p += 16)
        for (int j = 0; j < RC; ++j) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(Qp[j] + p), load16<T>(X[j], p), acc[j]);
    if (p < d) {
        const __mmask16 m = (__mmask16)((1u << (d - p)) - 1u);
        for (int j = 0; j < RC; ++j)
            acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, Qp[j] + p), load16m<T>(X[j], p, m), acc[j]);
    }
    if constexpr (RC == 4) {
        _mm_storeu_ps(out, hsum4(acc[0], acc[1], acc[2], acc[3]));
    } else {
        for (int j = 0; j < RC; ++j) out[j] = hsum(acc[j]);
    }
}

template <DType T>
void dot_pairs_t(const float* const* q, const void* const* rows, size_t n, size_t d, float* out) {
    const size_t bytes = d * (T == DType::F32 ? 4 : 2);
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        // the rows come from anywhere in the corpus: fetch the next four while these are scored
        for (size_t t = j + 4; t < j + 8 && t < n; ++t)
            for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(static_cast<const char*>(rows[t]) + o, _MM_HINT_T0);
        pairs_block<4, T>(q + j, rows + j, d, out + j);
    }
    switch (n - j) {
        case 3: pairs_block<3, T>(q + j, rows + j, d, out + j); break;
        case 2: pairs_block<2, T>(q + j, rows + j, d, out + j); break;
        case 1: pairs_block<1, T>(q + j, rows + j, d, out + j); break;
        default: break;
    }
}

void dot_pairs(const float* const* q, const void* const* rows, size_t n, size_t d, DType xt, float* out) {
    switch (xt) {
        case DType::F32: dot_pairs_t<DType::F32>(q, rows, n, d, out); break;
        case DType::F16: dot_pairs_t<DType::F16>(q, rows, n, d, out); break;
        case DType::BF16: dot_pairs_t<DType::BF16>(q, rows, n, d, out); break;
    }
}

template <DType T>
void sqnorm_t(const void* X, size_t ldx, size_t nx, size_t d, float* out) {
    const size_t es = (T == DType::F32) ? 4 : 2;
    const char* xb = static_cast<const char*>(X);
    for (size_t j = 0; j < nx; ++j) {
        const void* row = xb + j * ldx * es;
        __m512 acc = _mm512_setzero_ps();
        size_t p = 0;
        for (; p + 16 <= d; p += 16) {
            __m512 x = load16<T>(row, p);
            acc = _mm512_fmadd_ps(x, x, acc);
        }
        if (p < d) {
            __m512 x = load16m<T>(row, p, (__mmask16)((1u << (d - p)) - 1u));
            acc = _mm512_fmadd_ps(x, x, acc);
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
    const __m512 t = _mm512_set1_ps(tau);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t c = 0, i = 0;
    // Compress in a register and store all 16 lanes (c <= i, so out[c .. c + 16)
    // lies inside out[0 .. n)): the memory form of the compress is slow on some
    // cores.  64 values per step with one branch: skipped at once when none
    // passes (the common case once the threshold has settled).
    auto put = [&](__mmask16 m, size_t at) {
        _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(lane, _mm512_set1_epi32((int)at))));
        c += (size_t)__builtin_popcount(m);
    };
    for (; i + 64 <= n; i += 64) {
        const __mmask16 m0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), t, _CMP_GE_OQ);
        const __mmask16 m1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i + 16), t, _CMP_GE_OQ);
        const __mmask16 m2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i + 32), t, _CMP_GE_OQ);
        const __mmask16 m3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i + 48), t, _CMP_GE_OQ);
        if ((m0 | m1 | m2 | m3) == 0) continue;
        put(m0, i);
        put(m1, i + 16);
        put(m2, i + 32);
        put(m3, i + 48);
    }
    for (; i + 16 <= n; i += 16) put(_mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), t, _CMP_GE_OQ), i);
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
            for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<DType::F16>(src, i));
            if (i < n) _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << (n - i)) - 1u), load16m<DType::F16>(src, i, (__mmask16)((1u << (n - i)) - 1u)));
            break;
        case DType::BF16:
            for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<DType::BF16>(src, i));
            if (i < n) _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << (n - i)) - 1u), load16m<DType::BF16>(src, i, (__mmask16)((1u << (n - i)) - 1u)));
            break;
    }
}

void axpy(float* y, const float* x, size_t n, float w) {
    // Explicit-rounding forms: the compiler cannot fuse them into an FMA.
    constexpr int R = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 vw = _mm512_set1_ps(w);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 p = _mm512_mul_round_ps(vw, _mm512_loadu_ps(x + i), R);
        _mm512_storeu_ps(y + i, _mm512_add_round_ps(_mm512_loadu_ps(y + i), p, R));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        const __m512 p = _mm512_mul_round_ps(vw, _mm512_maskz_loadu_ps(m, x + i), R);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_round_ps(_mm512_maskz_loadu_ps(m, y + i), p, R));
    }
}

void block_max(const float* x, size_t nb, size_t bl, uint32_t* out) {
    const int32_t* xi = reinterpret_cast<const int32_t*>(x);
    for (size_t b = 0; b < nb; ++b) {
        __m512i m = _mm512_setzero_si512();
        for (size_t r = 0; r < bl; r += 16)
            m = _mm512_max_epi32(m, _mm512_loadu_si512(reinterpret_cast<const void*>(xi + b * bl + r)));
        out[b] = uint32_t(_mm512_reduce_max_epi32(m));
    }
}

}  // namespace

// Rank sort: each key goes to the position given by how many keys exceed it
// (8 unsigned 64-bit compares per instruction, no branches on the data); four
// keys at a time share the loads and keep four independent count chains.
void sort_desc_small(const uint64_t* in, size_t n, uint64_t* out) {
    const size_t nv = n / 8;
    const __mmask8 tail = (__mmask8)((1u << (n % 8)) - 1u);
    const __m512i one = _mm512_set1_epi64(1);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m512i x0 = _mm512_set1_epi64((long long)in[i]), x1 = _mm512_set1_epi64((long long)in[i + 1]);
        const __m512i x2 = _mm512_set1_epi64((long long)in[i + 2]), x3 = _mm512_set1_epi64((long long)in[i + 3]);
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
        for (size_t v = 0; v <= nv; ++v) {
            const __mmask8 m = v < nv ? (__mmask8)0xFF : tail;
            const __m512i y = _mm512_maskz_loadu_epi64(m, in + 8 * v);
            c0 = _mm512_mask_add_epi64(c0, _mm512_mask_cmpgt_epu64_mask(m, y, x0), c0, one);
            c1 = _mm512_mask_add_epi64(c1, _mm512_mask_cmpgt_epu64_mask(m, y, x1), c1, one);
            c2 = _mm512_mask_add_epi64(c2, _mm512_mask_cmpgt_epu64_mask(m, y, x2), c2, one);
            c3 = _mm512_mask_add_epi64(c3, _mm512_mask_cmpgt_epu64_mask(m, y, x3), c3, one);
        }
        out[(size_t)_mm512_reduce_add_epi64(c0)] = in[i];
        out[(size_t)_mm512_reduce_add_epi64(c1)] = in[i + 1];
        out[(size_t)_mm512_reduce_add_epi64(c2)] = in[i + 2];
        out[(size_t)_mm512_reduce_add_epi64(c3)] = in[i + 3];
    }
    for (; i < n; ++i) {
        const __m512i x = _mm512_set1_epi64((long long)in[i]);
        __m512i c = _mm512_setzero_si512();
        for (size_t v = 0; v <= nv; ++v) {
            const __mmask8 m = v < nv ? (__mmask8)0xFF : tail;
            c = _mm512_mask_add_epi64(c, _mm512_mask_cmpgt_epu64_mask(m, _mm512_maskz_loadu_epi64(m, in + 8 * v), x), c, one);
        }
        out[(size_t)_mm512_reduce_add_epi64(c)] = in[i];
    }
}

size_t filter_take(float* x, size_t n, float tau, uint32_t* idx, float* val) {
    const __m512 t = _mm512_set1_ps(tau);
    const __m512 zero = _mm512_setzero_ps();
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t c = 0, i = 0;
    // As filter_ge (register compress, full 16-lane stores at c <= i), plus the values.
    auto put = [&](__m512 v, __mmask16 m, size_t at) {
        _mm512_storeu_si512(idx + c, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(lane, _mm512_set1_epi32((int)at))));
        _mm512_storeu_ps(val + c, _mm512_maskz_compress_ps(m, v));
        c += (size_t)__builtin_popcount(m);
    };
    for (; i + 64 <= n; i += 64) {
        const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        const __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
        const __mmask16 m0 = _mm512_cmp_ps_mask(v0, t, _CMP_GE_OQ), m1 = _mm512_cmp_ps_mask(v1, t, _CMP_GE_OQ);
        const __mmask16 m2 = _mm512_cmp_ps_mask(v2, t, _CMP_GE_OQ), m3 = _mm512_cmp_ps_mask(v3, t, _CMP_GE_OQ);
        _mm512_storeu_ps(x + i, zero);
        _mm512_storeu_ps(x + i + 16, zero);
        _mm512_storeu_ps(x + i + 32, zero);
        _mm512_storeu_ps(x + i + 48, zero);
        if ((m0 | m1 | m2 | m3) == 0) continue;
        put(v0, m0, i);
        put(v1, m1, i + 16);
        put(v2, m2, i + 32);
        put(v3, m3, i + 48);
    }
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        _mm512_storeu_ps(x + i, zero);
        put(v, _mm512_cmp_ps_mask(v, t, _CMP_GE_OQ), i);
    }
    for (; i < n; ++i) {
        if (x[i] >= tau) {
            idx[c] = (uint32_t)i;
            val[c++] = x[i];
        }
        x[i] = 0.f;
    }
    return c;
}

// Kernels::lower_kth: bisection on [min, max], 12 counting passes of 16 lanes.
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
    return bisect_kth(lo, hi, r, [&](float th) {
        const __m512 t16 = _mm512_set1_ps(th);
        size_t c = 0, i = 0;
        for (; i + 16 <= n; i += 16)
            c += (size_t)__builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + i), t16, _CMP_GE_OQ));
        for (; i < n; ++i) c += v[i] >= th;
        return c;
    });
}

namespace {

// THE HOT LOOP of Kernels::wsum.  A register block of RM output rows x RV vectors of 16
// columns (RM * RV accumulators): per t, RV loads of Y's row t feed RM * RV FMAs, each with
// the broadcast weight A[i, t].  With RM = RV = 4: 16 accumulators + 4 + 1 of 32 zmm.
// kTail: the block is the row's masked tail (one vector, lanes outside `tail` neither read
// nor written).  Only there: a masked load in the loop ran this block at 20 G multiply-adds/s
// on an AMD EPYC (Zen 4) against 55 unmasked.
template <int RM, int RV, bool kAdd, bool kTail>
inline void wsum_block(const float* A, size_t ar, size_t ac, size_t k, const float* Y, size_t ldy,
                       float* Out, size_t ldo, __mmask16 tail) {
    __m512 acc[RM][RV];
    for (int r = 0; r < RM; ++r)
        for (int v = 0; v < RV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (size_t t = 0; t < k; ++t) {
        __m512 a[RM];
        for (int r = 0; r < RM; ++r) a[r] = _mm512_set1_ps(A[r * ar + t * ac]);
        for (int v = 0; v < RV; ++v) {
            const __m512 y = kTail ? _mm512_maskz_loadu_ps(tail, Y + t * ldy) : _mm512_loadu_ps(Y + t * ldy + 16 * v);
            for (int r = 0; r < RM; ++r) acc[r][v] = _mm512_fmadd_ps(a[r], y, acc[r][v]);
        }
    }
    const __mmask16 m = kTail ? tail : (__mmask16)0xFFFF;
    for (int r = 0; r < RM; ++r)
        for (int v = 0; v < RV; ++v) {
            float* o = Out + r * ldo + 16 * v;
            if constexpr (kAdd)
                _mm512_mask_storeu_ps(o, m, _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(m, o)));
            else
                _mm512_mask_storeu_ps(o, m, acc[r][v]);
        }
}

// All m rows for one strip of RV vectors: blocks of 4 rows, then 1.
template <int RV, bool kAdd, bool kTail>
inline void wsum_strip(const float* A, size_t ar, size_t ac, size_t m, size_t k, const float* Y, size_t ldy,
                       float* Out, size_t ldo, __mmask16 tail) {
    size_t i = 0;
    for (; i + 4 <= m; i += 4)
        wsum_block<4, RV, kAdd, kTail>(A + i * ar, ar, ac, k, Y, ldy, Out + i * ldo, ldo, tail);
    for (; i < m; ++i) wsum_block<1, RV, kAdd, kTail>(A + i * ar, ar, ac, k, Y, ldy, Out + i * ldo, ldo, tail);
}

// One panel (m rows, k terms) in strips of 64 columns (each strip's k x 64 slice of Y stays in
// L1 / L2 while every block of rows walks it), then 16 at a time, then the masked tail.
template <bool kAdd>
void wsum_panel(const float* A, size_t ar, size_t ac, size_t m, size_t k, const float* Y, size_t ldy, size_t d,
                float* Out, size_t ldo) {
    size_t p = 0;
    for (; p + 64 <= d; p += 64) wsum_strip<4, kAdd, false>(A, ar, ac, m, k, Y + p, ldy, Out + p, ldo, 0);
    for (; p + 16 <= d; p += 16) wsum_strip<1, kAdd, false>(A, ar, ac, m, k, Y + p, ldy, Out + p, ldo, 0);
    if (p < d)
        wsum_strip<1, kAdd, true>(A, ar, ac, m, k, Y + p, ldy, Out + p, ldo, (__mmask16)((1u << (d - p)) - 1u));
}

// Panels of kWsumRows rows x kWsumTerms terms: the panel's weights (64 KB) stay in L2 while its
// strips sweep the matching kWsumTerms rows of Y (a 64 KB slice per strip, reused by all the
// panel's row blocks), and the panels after a row group's first add to Out.  Without the split
// (every row block walking all k rows of a strip), a strip of 4,096 x 64 floats came from L3
// for every block of 4 rows.
constexpr size_t kWsumRows = 64;
constexpr size_t kWsumTerms = 256;

}  // namespace

void wsum(const float* A, size_t ar, size_t ac, size_t m, size_t k, const float* Y, size_t ldy, size_t d,
          float* Out, size_t ldo, bool add) {
    for (size_t i0 = 0; i0 < m; i0 += kWsumRows) {
        const size_t mi = m - i0 < kWsumRows ? m - i0 : kWsumRows;
        // (k = 0 still writes the zeros of a sum without terms)
        for (size_t t0 = 0; t0 < k || t0 == 0; t0 += kWsumTerms) {
            const size_t kt = k - t0 < kWsumTerms ? k - t0 : kWsumTerms;
            const float* Ap = A + i0 * ar + t0 * ac;
            float* Op = Out + i0 * ldo;
            if (add || t0 > 0)
                wsum_panel<true>(Ap, ar, ac, mi, kt, Y + t0 * ldy, ldy, d, Op, ldo);
            else
                wsum_panel<false>(Ap, ar, ac, mi, kt, Y + t0 * ldy, ldy, d, Op, ldo);
        }
    }
}

const Kernels table = {dot_tile, sqnorm_rows, filter_ge, to_f32, axpy, block_max, "avx512", dot_pairs, sort_desc_small,
                       filter_take, lower_kth, wsum};

}  // namespace avx512
}  // namespace hn
#endif
