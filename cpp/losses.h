// Fused cross-batch-memory term of the InfoNCE loss (see cpp/losses.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace hn {

// One query-by-memory log-sum-exp problem.  For query i and memory row j:
//   sim_ij   = <q_i, m_j>            (cosine: <q_i, m_j> / max(|m_j|, 1e-12); q is
//                                     expected already normalised by the caller)
//   masked   = (pos_ids && mem_ids && pos_ids[i] >= 0 && mem_ids[j] == pos_ids[i])
//              || (thresholds && sim_ij > thresholds[i])
//   z_ij     = masked ? -inf : logit_scale * sim_ij
//   lse[i]   = log sum_j exp(z_ij)                     (-inf when every entry is masked)
//   grad[i]  = grad_scale * sum_j softmax_j(z_i.) * d sim_ij / d q_i
//            = grad_scale * sum_j p_ij * m_j / max(|m_j|, 1e-12)   (cosine)
// grad (nq x d, row-major) is only written when it is not null.  Neither the nq x m
// logits nor a copy of the memory are ever materialised: tiles of at most
// kQueryPanel x block rows live in per-thread scratch.
struct MemoryLseProblem {
    const float* q = nullptr;  // nq x d fp32, row stride ldq
    size_t ldq = 0, nq = 0, d = 0;
    const void* mem = nullptr;  // m x d in mem_type, row stride ldm
    DType mem_type = DType::F32;
    size_t ldm = 0, m = 0;
    const int64_t* mem_ids = nullptr;   // m, or null
    const int64_t* pos_ids = nullptr;   // nq, or null
    const float* thresholds = nullptr;  // nq, or null
    float logit_scale = 1.0f;
    float grad_scale = 1.0f;
    bool cosine = false;
};

void memory_lse(const MemoryLseProblem& p, float* lse, float* grad, int num_threads);

}  // namespace hn
