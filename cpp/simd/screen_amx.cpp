// The int8 screen on AMX tiles (compiled with -mamx-tile -mamx-int8 on top of
// the AVX-512 VNNI flags; only called when the CPU has AMX-INT8 and the OS has
// granted this process the tile state, see dispatch.cpp).
//
// Same codes, same packed corpus and same results as screen_avx512vnni.cpp: the
// packed layout (per group of 16 rows, lane p of the 16 rows as one 64-byte
// vector) is exactly AMX's B operand for TDPBUSD (K/4 rows of 16 dwords, each
// dword four consecutive codes of one column), and the query codes (code + 128,
// row-major) are its A operand.  One TDPBUSD adds 16 x 16 x 64 exact u8 x s8
// products into int32 lanes: 256 times one vpdpbusd, at about a sixteenth of
// its throughput.  Integer sums are exact, so the int32 sums, and the epilogue
// (store_ub) that turns them into upper bounds, are bit for bit those of the
// VNNI kernel (checked in tests/cpp/kernel_check.cpp).
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(HN_NO_AMX)
#include <immintrin.h>
#include <cstring>
#include "simd/kernels.h"

namespace hn {
namespace amx {
namespace {

#include "simd/screen_store_ub.inl"

// Palette 1, every tile 16 rows x 64 bytes: C tiles 0..3 (int32, 16 queries x 16
// rows), A tiles 4..5 (16 queries x 64 codes), B tiles 6..7 (64 codes x 16 rows).
struct alignas(64) TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// THE HOT LOOP of the AMX screen: QT tiles of 16 queries x GT groups of 16 packed
// rows, the whole code length, into C (tile (qt, gt) at C + 256 * (2 qt + gt)).
// A: the queries' codes (row stride lda bytes); X: group g0 of the packed corpus.
template <int QT, int GT>
void sweep(const uint8_t* A, size_t lda, const uint32_t* X, size_t lanes, int32_t* C) {
    _tile_zero(0);  // only configured tiles may be touched
    if (GT == 2) _tile_zero(1);
    if (QT == 2) _tile_zero(2);
    if (QT == 2 && GT == 2) _tile_zero(3);
    const uint32_t* X1 = X + 16 * lanes;
    for (size_t p = 0; p < lanes; p += 16) {  // 64 codes per step
        _tile_loadd(4, A + 4 * p, lda);
        _tile_loadd(6, X + 16 * p, 64);
        _tile_dpbusd(0, 4, 6);
        if (GT == 2) {
            _tile_loadd(7, X1 + 16 * p, 64);
            _tile_dpbusd(1, 4, 7);
        }
        if (QT == 2) {
            _tile_loadd(5, A + 16 * lda + 4 * p, lda);
            _tile_dpbusd(2, 5, 6);
            if (GT == 2) _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_stored(0, C, 64);
    if (GT == 2) _tile_stored(1, C + 256, 64);
    if (QT == 2) _tile_stored(2, C + 512, 64);
    if (QT == 2 && GT == 2) _tile_stored(3, C + 768, 64);
}
using SweepFn = void (*)(const uint8_t*, size_t, const uint32_t*, size_t, int32_t*);

// Upper bounds of rq queries x the 16 rows of group g from their int32 tile c, as the
// VNNI kernel: (I - 128 * code sum) as float, times s_q * s_x, then store_ub.
void epilogue(const int32_t* c, size_t rq, const ScreenQueries& q, const ScreenRows& r, size_t g, float* S,
              size_t lds) {
    const __m512 xsv = _mm512_loadu_ps(r.scale + 16 * g);
    const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(r.sum + 16 * g), 7));
    for (size_t i = 0; i < rq; ++i) {
        const __m512i acc = _mm512_add_epi32(init, _mm512_load_si512(c + 16 * i));
        const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(q.scale[i]), xsv);
        store_ub(S + i * lds + g * 16, _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sc), q, int(i), r, int(g));
    }
}

// Palette 1: C tiles 0, 1 and A tile 4 hold r0 query rows, C tiles 2, 3 and A tile 5
// r1 (0: unused); B tiles 6, 7 are 16 x 64 codes.
void configure(size_t r0, size_t r1) {
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const size_t rows[8] = {r0, r0, r1, r1, r0, r1, 16, 16};
    for (int t = 0; t < 8; ++t) cfg.rows[t] = uint8_t(rows[t]), cfg.colsb[t] = rows[t] ? 64 : 0;
    _tile_loadconfig(&cfg);
}

}  // namespace

// The int8 dot_tile (kernels.h) on tiles of 32 queries x 32 rows; a last tile of
// fewer queries is configured with fewer rows.
void dot_tile_int8(const ScreenQueries& Q, size_t nq, const uint32_t* X, size_t nx, size_t dp, const ScreenRows& R,
                   float* S, size_t lds) {
    static const SweepFn sweeps[2][2] = {{&sweep<1, 1>, &sweep<1, 2>}, {&sweep<2, 1>, &sweep<2, 2>}};
    const size_t lanes = dp / 4, groups = (nx + 15) / 16;
    alignas(64) int32_t C[4 * 256];
    size_t configured = 0;
    for (size_t i0 = 0; i0 < nq; i0 += 32) {
        const size_t rq = nq - i0 < 32 ? nq - i0 : 32, qt = rq > 16 ? 2 : 1;
        const size_t r0 = rq < 16 ? rq : 16, r1 = rq - r0;
        if (rq != configured) configure(r0, r1), configured = rq;
        const uint8_t* A = static_cast<const uint8_t*>(Q.codes) + i0 * dp;
        const ScreenQueries qi = Q.at(i0, dp);
        for (size_t g = 0; g < groups; g += 2) {
            const size_t gt = groups - g >= 2 ? 2 : 1;
            sweeps[qt - 1][gt - 1](A, dp, X + g * 16 * lanes, lanes, C);
            for (size_t t = 0; t < qt; ++t)
                for (size_t u = 0; u < gt; ++u)
                    epilogue(C + 256 * (2 * t + u), t ? r1 : r0, qi.at(16 * t, dp), R, g + u, S + (i0 + 16 * t) * lds,
                             lds);
        }
    }
    _tile_release();
}

}  // namespace amx
}  // namespace hn
#endif
