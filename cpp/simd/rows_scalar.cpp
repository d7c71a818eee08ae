// Row passes of the dense loss path, compiled with this file's ISA flags (see rows.inl).

#include <cstddef>
#include <cstdint>

#include "fast_exp.h"
#include "simd/kernels.h"

namespace hn {
namespace scalar {
namespace {
#include "simd/rows.inl"
}  // namespace

const RowOps<float> rows_f32 = {logits_row<float>, max_row<float>, exp_sum_row<float>, mul_row<float>, "scalar"};
const RowOps<double> rows_f64 = {logits_row<double>, max_row<double>, exp_sum_row<double>, mul_row<double>, "scalar"};

}  // namespace scalar
}  // namespace hn

