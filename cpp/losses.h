// Fused cross-batch-memory term of the InfoNCE loss (see cpp/losses.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include <vector>

#include "common.h"

namespace hn {

// One query-by-memory log-sum-exp problem.  For query i and memory row j:
//   sim_ij   = <q_i, m_j>            (cosine: <q_i, m_j> / |m_j| (0 for a zero row); q is
//                                     expected already normalised by the caller)
//   masked   = (mem_ids && mem_ids[j] is a known (>= 0) pos_ids[i] or query_ids[i])
//              || (thresholds && sim_ij > thresholds[i])
//   z_ij     = masked ? -inf : logit_scale * sim_ij
//   lse[i]   = log sum_j exp(z_ij)                     (-inf when every entry is masked)
//   grad[i]  = grad_scale * sum_j softmax_j(z_i.) * d sim_ij / d q_i
//            = grad_scale * sum_j p_ij * m_j / |m_j|   (cosine)
// A logit float32 cannot represent throws std::range_error naming the input.
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
    const int64_t* query_ids = nullptr; // nq, or null: memory rows with this id are masked too
    const float* thresholds = nullptr;  // nq, or null
    float logit_scale = 1.0f;
    float grad_scale = 1.0f;
    bool cosine = false;
};

void memory_lse(const MemoryLseProblem& p, float* lse, float* grad, int num_threads);

// ---------------------------------------------------------------------------
// The whole query->passage InfoNCE term in one kernel (directions=query_to_doc).
//
// Candidates of query i, in sentence-transformers' order: segment 0 = the B
// positives, segment k = 1..n = hard negative k-1 of every query (row j of a
// segment belongs to query j), then the memory rows.  With the positive p = i of
// segment 0:
//   sim_ic = <q_i, x_c> (cosine: both normalised; norms summed in double when the
//            fp32 sum of squares over- or underflows; a zero row scores 0)
//   masked = c != p and ((!in_batch and c is another query's passage)
//                        or id(c) is a known (>= 0) pos_ids[i] or query_ids[i]
//                        or (use_margin and sim_ic > sim_ip - margin))
//   z_ic   = (scale + alpha_c) * sim_ic, alpha_c = alpha_own_neg (own hard
//            negatives), alpha_other (other queries' passages), alpha_mem (memory);
//            the alpha part carries no gradient (sentence-transformers' hardness
//            penalty alpha * stop_grad(sim))
//   loss_i = log(1 + sum_{c != p, not masked} exp(z_ic - z_ip))
// The sum runs as a streaming log-sum-exp over score tiles; dloss_i/dq_i is
// accumulated in the same pass.  The backward recomputes the tiles of the
// in-batch segments only (the memory has no gradient).
struct CandSegment {
    const void* data = nullptr;
    DType dtype = DType::F32;
    size_t rows = 0, ld = 0;
    const int64_t* ids = nullptr;  // id of row j is ids[j * id_stride], or null
    size_t id_stride = 1;
};

struct InfoNceProblem {
    size_t B = 0, d = 0;
    const void* q = nullptr;
    DType q_type = DType::F32;
    size_t ldq = 0;
    std::vector<CandSegment> batch;   // 1 + n segments of B rows
    CandSegment memory;               // rows == 0: none
    const int64_t* pos_ids = nullptr; // B, or null
    const int64_t* query_ids = nullptr; // B, or null: a second id masked for query i (its own text)
    bool use_margin = false;
    float margin = 0.0f;
    float scale = 1.0f;
    float alpha_own_neg = 0.0f, alpha_other = 0.0f, alpha_mem = 0.0f;
    bool cosine = true;
    bool in_batch = true;
};

// What the forward pass leaves for the backward pass (all fp32, row-major).
struct InfoNceState {
    std::vector<float> qhat;     // B x d: normalised (cosine) or widened queries
    std::vector<float> qinv;     // B: 1 / |q_i| (0 for a zero row; 1 for dot)
    std::vector<float> sim_pos;  // B: sim_ip
    std::vector<float> lnorm;    // B: loss_i = log of the shifted normaliser
    std::vector<float> gq;       // B x d: dloss_i / dq_i (raw q), or empty
};

// loss (B) gets loss_i; state is filled for infonce_backward.
void infonce_forward(const InfoNceProblem& p, bool want_grad, float* loss, InfoNceState& state,
                     int num_threads);
// g: dL/dloss_i (B).  grad_q: B x d; grad_batch[k]: B x d for segment k (null: skip).
void infonce_backward(const InfoNceProblem& p, const InfoNceState& state, const float* g, float* grad_q,
                      const std::vector<float*>& grad_batch, int num_threads);

}  // namespace hn
