// Pieces shared by the plain top-k (topk.cpp) and the bf16-screened one
// (topk_screen.cpp).  Baseline code only: never include from an ISA file.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>  // madvise (AlignedAlloc)
#endif

#include "simd/kernels.h"
#include "topk.h"

namespace hn {
namespace detail {

// Allocator for 64-byte-aligned scratch (one cache line, one zmm register): the
// dot kernel's 16-lane loads from such rows never straddle two cache lines.  A
// misaligned load costs two L1 accesses, which at d = 768 made the fp32 kernel
// about 1.3x slower (measured on numpy arrays, whose data sits 16 bytes past a
// line).
template <class T>
struct AlignedAlloc {
    using value_type = T;
    AlignedAlloc() = default;
    template <class U>
    AlignedAlloc(const AlignedAlloc<U>&) {}
    T* allocate(size_t n) {
        const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        // A large buffer (a coded copy of the corpus: hundreds of MB) in 2 MiB pages where the
        // kernel offers them on request: its first touch then faults once per 2 MiB instead of
        // once per 4 KiB (measured: a fresh 116 MiB copy spent ~25 ms in page faults).
        constexpr size_t kHuge = size_t(2) << 20;
        if (bytes >= 4 * kHuge) {
            const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
            void* p = std::aligned_alloc(kHuge, rounded);
            if (!p) throw std::bad_alloc();
            madvise(p, rounded, MADV_HUGEPAGE);  // advice only: ignored where unsupported
            return static_cast<T*>(p);
        }
#endif
        void* p = std::aligned_alloc(64, bytes ? bytes : 64);
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U>
    bool operator==(const AlignedAlloc<U>&) const { return true; }
    template <class U>
    bool operator!=(const AlignedAlloc<U>&) const { return false; }
};
template <class T>
using AlignedVec = std::vector<T, AlignedAlloc<T>>;

// A candidate is one 64-bit word: the ranking key mapped to an unsigned
// integer that sorts like the float (high 32 bits) and the bitwise NOT of the id
// (low 32 bits).  Larger words are better: higher key, then smaller id.  Plain
// integer compares make nth_element/sort several times faster than a struct
// comparator, and the buffers half the size.
using Cand = uint64_t;
constexpr int64_t kMaxRows = int64_t(0xFFFFFFFF);  // ids must fit in 32 bits

inline uint32_t key_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float bits_key(uint32_t u) {
    u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline Cand make_cand(float key, int64_t id) {
    key += 0.0f;  // -0 -> +0: equal floats must map to equal bits
    return (uint64_t(key_bits(key)) << 32) | uint64_t(~uint32_t(id));
}
inline float cand_key(Cand c) { return bits_key(uint32_t(c >> 32)); }
inline int64_t cand_id(Cand c) { return int64_t(~uint32_t(c)); }

// fp32 squared norms at least this large lost nothing to underflow (every flushed
// square is below 2^-126, d of them below 2^-109: 2^-49 relative), and finite
// ones did not overflow (the partial sums only grow).
constexpr float kMinSafeSqnorm = 8.673617379884035e-19f;  // 2^-60
inline bool safe_sqnorm(float sq) { return sq >= kMinSafeSqnorm && sq <= 3.4028234663852886e38f; }

// 1 / ||x|| for cosine (0 for a zero row) from the fp32 squared norm sq of row x
// (d elements of type t).  In the safe range: 1 / sqrt(sq) in fp32 as always;
// otherwise (the squares overflowed or underflowed) the norm is recomputed in
// double, where no square of a finite float over- or underflows.
float inv_norm_slow(const Kernels& K, const void* x, DType t, size_t d);
inline float inv_norm(const Kernels& K, float sq, const void* x, DType t, size_t d) {
    if (safe_sqnorm(sq)) return 1.0f / std::sqrt(sq);
    return inv_norm_slow(K, x, t, d);
}

// The L2 ranking key (larger is better: minus the squared distance, clamped at 0) from the
// query's and the row's fp32 squared norms and their fp32 dot product.  One function for
// the plain path and the screen's rescoring, so both compute it with the same operations.
// Nondecreasing in dot: the screen's upper bound of a dot gives an upper bound of the key.
inline float l2_key(float qsq, float xsq, float dot) { return -std::max(0.0f, qsq + xsq - 2.0f * dot); }

// Query `row` of Q as fp32 into dst[0..d), normalised for cosine; *qn gets its
// squared norm (before normalising) for L2 / cosine.
void load_query(const Kernels& K, const void* Q, DType qt, size_t ldq, size_t d, Metric metric, size_t row,
                float* dst, float* qn);

// Sorts the best min(k, size) candidates of `c` (reordering c) and writes one
// output row: best first, then padding (id -1, score -inf / +inf for L2).
void write_row(std::vector<Cand>& c, size_t k, Metric metric, float* so, int64_t* io);

// The screened search (topk_screen.cpp).  Returns false, having written
// nothing, when it does not apply (metric, CPU, sizes, huge or non-finite corpus
// norms); the caller then runs the plain search.  Returns true having written
// every query except the ranges [rest[0], rest[1]), [rest[2], rest[3]), ... that
// it left to the plain search (queries with huge norms; the rest of a search on
// data where the screen does not prune).
// ex_sorted: the exclusions with each query's ids sorted (excl.indptr indexes it).
bool topk_search_screened(const void* Q, DType qt, size_t nq, size_t ldq, size_t d,
                          const std::vector<Segment>& segments, Metric metric, size_t k, const Exclusions& excl,
                          const std::vector<int64_t>& ex_sorted, float* scores, int64_t* ids, int num_threads,
                          ScreenCache* cache, std::vector<size_t>* rest);

}  // namespace detail
}  // namespace hn
