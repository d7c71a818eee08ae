// Row passes of the dense InfoNCE path (python/hardneg/_loss_dense.py and the memory
// chunks of python/hardneg/losses.py): everything between the BLAS matmuls, in one
// call per score block, each row finished while it is in cache.
//
// The matmuls stay in the caller's BLAS (torch.mm): at these shapes they are the
// arithmetic; what a chain of torch operations adds around them is a pass over the
// B x N block per operation and a dispatch per operation, which is what these
// kernels remove.  float (fp32, fp16 and bf16 inputs widened) and double.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hn {

// In-batch block: S (B x N, row stride lds) holds the similarities s_ic of query i
// and candidate c; the positive of row i is column i (B <= N).
//   z_ic   = scale * s_ic (+ alpha * s_ic where pen[i, c]: the hardness penalty, no gradient)
//   loss_i = log(1 + sum_{c != i, not removed[i, c]} exp(z_ic - z_ii) + exp(lse_mem_i - z_ii))
// evaluated as log1p(...) with the largest exponent factored out (exact for a
// well-separated positive: no 1 + tiny rounding, no cancellation of large logits).
// On return S holds P_ic = grad_scale * dloss_i / dz_ic (the positive's column:
// grad_scale * expm1(-loss_i)), and pmem[i] = grad_scale * dloss_i / dlse_mem_i when
// lse_mem is given: with grad_scale = scale / B, the backward of the mean loss is
// the two matmuls P @ candidates and P^T @ queries, nothing else.
template <class T>
struct DenseRows {
    T* S = nullptr;
    size_t B = 0, N = 0, lds = 0;
    size_t first = 0;  // the block's rows are queries first .. first + B - 1: row i's positive is column first + i
    T scale = 1, alpha = 0;
    T grad_scale = 1;
    const uint8_t* pen = nullptr;      // B x N (contiguous), or null
    const uint8_t* removed = nullptr;  // B x N (contiguous), or null; may cover column i
    const T* lse_mem = nullptr;        // B, or null: the memory's log-sum-exp per query
};

// Returns -1, or the first row (in the order rows were finished) holding a logit
// that is not finite before removal (an overflow, or NaN / Inf in the inputs): then
// S and loss are unspecified and the caller raises.
template <class T>
long dense_rows(const DenseRows<T>& p, T* loss, T* pmem, int num_threads);

// The whole step (forward and gradients) of the plain in-batch loss, every matmul in this
// library's kernels, in one call (python/hardneg/_loss_dense.py DenseStep): no chain of BLAS
// calls (at small batches their dispatch and thread wake-ups cost more than the arithmetic) and
// no elementwise passes between them.  No masks, hardness or memory; fp32.
//   candidates  c = [pos (B rows) | hard (B*n rows, query i's negative k at row i*n + k)]
//   S = q c^T (B x N, N = B(1+n)), dense_rows (P = grad_scale * dloss_i/dz_ic, in place),
//   gq = P c (B x d), gpos = P[:, :B]^T q (B x d), ghard = P[:, B:]^T q (B*n x d).
// The gradients are those of the mean loss when grad_scale = scale / B.  Rows of q, pos and
// hard are contiguous (d floats each).  num_threads: the rows of S and gq, then (once all are
// done) the rows of gpos / ghard, are split between at most that many threads, started once.  Returns what dense_rows returns
// (on a non-finite logit the gradients are left unwritten).
// cosine: the similarities are those of the rows divided by their norms (summed in double: no
// overflow or underflow for any float row; a zero row stays zero and gets a zero gradient);
// the step runs on normalised copies and each row's gradient g becomes (g - x^ (x^ . g)) / |x|.
// A NaN / Inf input (a norm that is not finite) returns 0 like a bad logit.
struct DenseStep {
    const float* q = nullptr;
    const float* pos = nullptr;
    const float* hard = nullptr;  // null when n = 0
    size_t B = 0, n = 0, d = 0;
    float scale = 1, grad_scale = 1;
    bool cosine = false;
    float* S = nullptr;  // B x N workspace: P on return
    float* gq = nullptr;
    float* gpos = nullptr;
    float* ghard = nullptr;  // null when n = 0
};
long dense_step(const DenseStep& p, float* loss, int num_threads);

// Whether dense_step runs at speed with the kernel table in use: the tables whose wsum is the
// register-blocked one (AVX-512).  Elsewhere wsum is a plain loop, and at the AVX2 level the step
// measured 0.4-0.7x the BLAS matmul path from B = 32, n = 7, d = 768 up (1.3x only at the
// smallest batches), so the caller keeps the matmuls there.
bool dense_step_fast();

// One chunk of a streaming log-sum-exp over the memory: S (B x C, row stride lds)
// holds q_i . x_j for the chunk's rows j.
//   sim_ij = S_ij * inv[j]  (inv: 1 / |x_j| for cosine, or null)
//   masked = (thresholds and sim_ij > thresholds[i]) or (col_ids[j] is a known (>= 0)
//            pos_ids[i] or query_ids[i])
//   z_ij   = masked ? -inf : logit_scale * sim_ij
// run_max[i] / run_sum[i] (max and sum of exp(z - max) so far) are updated; r[i] =
// exp(old max - new max) is the factor the caller applies to its gradient
// accumulator before adding W @ x, and S becomes W_ij = exp(z_ij - new max) (times
// inv[j] when inv is given: the weights of the normalised rows).  Returns true when
// a logit is not finite before masking (the caller raises).
template <class T>
struct LseChunk {
    T* S = nullptr;
    size_t B = 0, C = 0, lds = 0;
    const T* inv = nullptr;
    const T* thresholds = nullptr;
    const int64_t* col_ids = nullptr;    // C, or null
    const int64_t* pos_ids = nullptr;    // B (with col_ids)
    const int64_t* query_ids = nullptr;  // B, or null
    T logit_scale = 1;
};

template <class T>
bool lse_chunk(const LseChunk<T>& p, T* run_max, T* run_sum, T* r, int num_threads);

}  // namespace hn
