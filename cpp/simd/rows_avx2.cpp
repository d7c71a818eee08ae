// Row passes of the dense loss path, compiled with this file's ISA flags (see rows.inl).
#if defined(__x86_64__) || defined(_M_X64)
#include <cstddef>
#include <cstdint>

#include "fast_exp.h"
#include "simd/kernels.h"

namespace hn {
namespace avx2 {
namespace {
#include "simd/rows.inl"
}  // namespace

const RowOps<float> rows_f32 = {logits_row<float>, max_row<float>, exp_sum_row<float>, mul_row<float>, "avx2"};

}  // namespace avx2
}  // namespace hn
#endif
