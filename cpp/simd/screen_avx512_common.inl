// Pieces shared by the two screening kernel files (screen_avx512bf16.cpp,
// screen_avx512vnni.cpp).  Included inside each file's anonymous namespace after
// it has defined kElemBytes, MQ and MG (block<RQ, RG> comes after), so every copy is compiled with that
// file's flags and stays internal to it; only AVX-512 F/BW instructions here,
// which both files' CPUs have.
//
// Both kinds of code rows are handled as rows of 32-bit lanes (two bf16 or four
// int8 codes per lane): dp codes are dp * elem_bytes / 4 lanes, a multiple of 16.

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

// Packs rows of `lanes` 32-bit lanes (row-major, stride ld lanes, lanes a multiple
// of 16) into groups of 16 rows: group G holds, for each lane p, the 16 rows'
// lane p as one 64-byte vector.  A last partial group is zero-padded.  16 rows x
// 16 lanes at a time through a register transpose.
void pack_lanes(const uint32_t* X, size_t ld, size_t nx, size_t lanes, uint32_t* out) {
    for (size_t g0 = 0; g0 < nx; g0 += 16) {
        uint32_t* o = out + (g0 / 16) * 16 * lanes;
        const size_t rows = nx - g0 < 16 ? nx - g0 : 16;
        for (size_t p = 0; p < lanes; p += 16) {
            __m512i r[16];
            for (size_t i = 0; i < 16; ++i)
                r[i] = i < rows ? _mm512_loadu_si512(X + (g0 + i) * ld + p) : _mm512_setzero_si512();
            transpose16(r);  // r[j] = lane p + j of the 16 rows
            for (int j = 0; j < 16; ++j) _mm512_storeu_si512(o + (p + j) * 16, r[j]);
        }
    }
}

// Code rows (contiguous, dp codes each) packed for dot_tile: group G of 16 rows
// at out + G * 16 * lanes.
void pack_rows(const void* X, size_t nx, size_t dp, uint32_t* out) {
    const size_t lanes = dp * kElemBytes / 4;
    pack_lanes(static_cast<const uint32_t*>(X), lanes, nx, lanes, out);
}

// RQ queries x RG groups of 16 packed corpus rows (defined by each file).
template <int RQ, int RG>
void block(const uint32_t* Q, size_t lanes, const ScreenQueries& q, const uint32_t* X, const ScreenRows& r, float* S,
           size_t lds);
using BlockFn = void (*)(const uint32_t*, size_t, const ScreenQueries&, const uint32_t*, const ScreenRows&, float*,
                         size_t);

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

// Each group of MQ queries sweeps the packed corpus tile (it stays in L2, the
// queries in L1); values for all ceil(nx / 16) * 16 rows are written.
void dot_tile(const ScreenQueries& Q, size_t nq, const uint32_t* X, size_t nx, size_t dp, const ScreenRows& R,
              float* S, size_t lds) {
    const size_t lanes = dp * kElemBytes / 4, groups = (nx + 15) / 16;
    for (size_t i = 0; i < nq; i += MQ) {
        const size_t rq = nq - i < (size_t)MQ ? nq - i : (size_t)MQ;
        const ScreenQueries qi = Q.at(i, lanes * 4);
        for (size_t g = 0; g < groups; g += MG) {
            const size_t rg = groups - g < (size_t)MG ? groups - g : (size_t)MG;
            block_fn(rq, rg)(static_cast<const uint32_t*>(qi.codes), lanes, qi, X + g * 16 * lanes, R.at(g * 16),
                             S + i * lds + g * 16, lds);
        }
    }
}

#include "simd/screen_store_ub.inl"
