// Shared plain types for the hardneg core.  No ISA-specific code here: this
// header is included by the per-ISA kernel files as well, so it must stay
// free of inline functions that could be instantiated with wider flags.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hn {

// Element type of a vector buffer.  Queries are always converted to F32 by the
// caller; corpus buffers may be any of these and are widened inside the kernels.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

}  // namespace hn
