// Row passes of the dense InfoNCE path (see loss_dense.h).  Each row of the score
// block is finished by one thread while it sits in L1/L2: logits (+ the finite
// check), the largest exponent, shifted exponentials and their sum, gradient
// weights.  The vector loops are hn::RowOps (simd/rows.inl, per ISA); what stays
// here is the per-row scalar arithmetic and the rare masks.
#include "loss_dense.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "simd/kernels.h"
#include "threads.h"

namespace hn {
namespace {

// entries of the block per thread below which one thread does it all (a thread costs
// about as much to start as a pass over this many entries; and next to torch, whose
// OpenMP threads still spin after its matmul, small blocks are better done alone)
constexpr size_t kMinEntriesPerThread = size_t(1) << 17;

template <class T>
const RowOps<T>& row_ops();
template <>
const RowOps<float>& row_ops<float>() { return row_ops_f32(); }
template <>
const RowOps<double>& row_ops<double>() { return scalar::rows_f64; }

int threads_for(size_t rows, size_t cols, int num_threads) {
    const size_t most = std::max<size_t>(1, rows * cols / kMinEntriesPerThread);
    return (int)std::min<size_t>((size_t)std::max(1, num_threads), most);
}

size_t rows_per_grain(size_t cols) { return std::max<size_t>(1, (size_t(1) << 13) / std::max<size_t>(1, cols)); }

}  // namespace

template <class T>
long dense_rows(const DenseRows<T>& p, T* loss, T* pmem, int num_threads) {
    constexpr T kInf = std::numeric_limits<T>::infinity();
    const RowOps<T>& ops = row_ops<T>();
    std::atomic<long> bad{-1};
    const size_t N = p.N;
    parallel_for(p.B, threads_for(p.B, N, num_threads), rows_per_grain(N), [&](size_t i0, size_t i1, int) {
        for (size_t i = i0; i < i1; ++i) {
            T* s = p.S + i * p.lds;
            // 1. logits z = scale * s (+ alpha * s where penalised), and whether all are finite
            T probe;
            if (p.pen) {
                const uint8_t* pen = p.pen + i * N;
                for (size_t c = 0; c < N; ++c) s[c] = pen[c] ? p.scale * s[c] + p.alpha * s[c] : p.scale * s[c];
                probe = ops.logits(s, nullptr, N, T(1), kInf);  // (times 1: only the check)
            } else {
                probe = ops.logits(s, nullptr, N, p.scale, kInf);
            }
            if (probe != T(0)) {
                long none = -1;
                bad.compare_exchange_strong(none, (long)i);
                continue;
            }
            const size_t ip = p.first + i;  // the positive's column
            const T zp = s[ip];  // the positive's logit, kept even when an id match removes its column
            if (p.removed) {
                const uint8_t* rm = p.removed + i * N;
                for (size_t c = 0; c < N; ++c)
                    if (rm[c]) s[c] = -kInf;
            }
            // 2. m = max(0, max_{c kept} z_c - z_p, lse_mem - z_p): the largest exponent, factored out
            const T t = p.lse_mem ? p.lse_mem[i] - zp : -kInf;
            const T m = std::max(std::max(T(0), ops.max(s, N) - zp), t);
            s[ip] = -kInf;  // the positive is the "1" of log1p, not a term of the sum
            T rest = ops.exp_sum(s, nullptr, N, zp + m);  // sum_{c != p} exp(z_c - z_p - m)
            const T et = p.lse_mem ? std::exp(t - m) : T(0);
            rest += et;
            // 3. With em = exp(-m) and D = rest + em = exp(-m) (1 + sum_{c != p} exp(z_c - z_p)):
            //    loss_i = m + log D = m + log1p((rest - 1) + em); the weights
            //    dloss_i/dz_ic = exp(z_ic - z_ip - loss_i) = e_c / D, the positive's
            //    expm1(-loss_i) = em / D - 1 = -rest / D, the memory's exp(t - m) / D.
            //    One log1p and a division per row (expm1 / exp were most of a short row's time);
            //    m = 0, the usual row (no logit above the positive's), needs no exp at all.
            const T em = m == T(0) ? T(1) : std::exp(-m);
            const T D = rest + em;
            const T li = (m == T(0) ? std::log1p(rest) : std::log1p((rest - T(1)) + em)) + m;
            loss[i] = li;
            const T inv = T(1) / D;
            ops.mul(s, N, p.grad_scale * inv);
            s[ip] = p.grad_scale * (-rest * inv);
            if (pmem) pmem[i] = p.grad_scale * et * inv;
        }
    });
    return bad.load();
}

// bytes of candidate rows per block of the step's score pass (a part of L2)
constexpr size_t kStepBlockBytes = size_t(256) << 10;

namespace {

// Rows x (n x d) to out = x / |x| (0 for a zero row) and inv = 1 / |x| (0 for a zero row,
// at most FLT_MAX); false when a norm is not finite (NaN / Inf in x).
bool normalize_rows(const float* x, size_t n, size_t d, float* out, float* inv) {
    for (size_t r = 0; r < n; ++r) {
        const float* a = x + r * d;
        double ss = 0;
        for (size_t j = 0; j < d; ++j) ss += (double)a[j] * (double)a[j];
        if (!std::isfinite(ss)) return false;
        const double f = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
        for (size_t j = 0; j < d; ++j) out[r * d + j] = (float)(a[j] * f);
        inv[r] = (float)std::min(f, (double)std::numeric_limits<float>::max());
    }
    return true;
}

// g = (g - xh (xh . g)) * inv per row: the gradient through x -> x / |x|
void project_rows(const float* xh, const float* inv, size_t n, size_t d, float* g) {
    for (size_t r = 0; r < n; ++r) {
        const float* a = xh + r * d;
        float* b = g + r * d;
        float dot = 0;
        for (size_t j = 0; j < d; ++j) dot += a[j] * b[j];
        for (size_t j = 0; j < d; ++j) b[j] = (b[j] - a[j] * dot) * inv[r];
    }
}

long step_dot(const DenseStep& p, float* loss, int num_threads);

}  // namespace

bool dense_step_fast() { return std::strcmp(kernels().name, "avx512") == 0; }

long dense_step(const DenseStep& p, float* loss, int num_threads) {
    if (!p.cosine) return step_dot(p, loss, num_threads);
    const size_t B = p.B, d = p.d, Nh = p.B * p.n;
    // (uninitialised: every entry is written before it is read)
    std::unique_ptr<float[]> xh(new float[(2 * B + Nh) * d]), inv(new float[2 * B + Nh]);
    DenseStep u = p;
    u.cosine = false;
    u.q = xh.get();
    u.pos = xh.get() + B * d;
    u.hard = Nh ? xh.get() + 2 * B * d : nullptr;
    if (!normalize_rows(p.q, B, d, xh.get(), inv.get()) ||
        !normalize_rows(p.pos, B, d, xh.get() + B * d, inv.get() + B) ||
        (Nh && !normalize_rows(p.hard, Nh, d, xh.get() + 2 * B * d, inv.get() + 2 * B)))
        return 0;
    const long bad = step_dot(u, loss, num_threads);
    if (bad != -1) return bad;
    project_rows(u.q, inv.get(), B, d, p.gq);
    project_rows(u.pos, inv.get() + B, B, d, p.gpos);
    if (Nh) project_rows(u.hard, inv.get() + 2 * B, Nh, d, p.ghard);
    return -1;
}

namespace {

long step_dot(const DenseStep& p, float* loss, int num_threads) {
    const Kernels& k = kernels();
    const size_t B = p.B, d = p.d, Nh = p.B * p.n, N = B + Nh;
    // threads only where each has at least kMinStepMacs multiply-adds per phase (a thread is
    // started per call)
    constexpr size_t kMinStepMacs = size_t(1) << 22;
    const int nt = (int)std::min<size_t>((size_t)std::max(1, num_threads), std::max<size_t>(1, B * N * d / kMinStepMacs));
    std::atomic<long> bad{-1};
    // 1. per block of rows: scores against the positives and the hard negatives, the row
    //    passes (P in place), and those rows of gq = P c
    auto rows_phase = [&](size_t i0, size_t i1) {
        if (i0 == i1) return;
        float* S = p.S + i0 * N;
        const float* q = p.q + i0 * d;
        // the candidates in blocks of about kStepBlockBytes, each swept by all the rows while in L2
        const size_t rows = std::max<size_t>(1, kStepBlockBytes / (d * sizeof(float)));
        for (size_t c0 = 0; c0 < N; c0 += rows) {
            const size_t c1 = std::min(N, c0 + rows);
            if (c0 < B)
                k.dot_tile(q, d, i1 - i0, p.pos + c0 * d, d, std::min(c1, B) - c0, d, DType::F32, S + c0, N);
            if (c1 > B) {
                const size_t h0 = std::max(c0, B) - B;
                k.dot_tile(q, d, i1 - i0, p.hard + h0 * d, d, c1 - B - h0, d, DType::F32, S + B + h0, N);
            }
        }
        DenseRows<float> r;
        r.S = S;
        r.B = i1 - i0;
        r.N = r.lds = N;
        r.first = i0;
        r.scale = p.scale;
        r.grad_scale = p.grad_scale;
        const long b = dense_rows<float>(r, loss + i0, nullptr, 1);
        if (b >= 0) {
            long none = -1;
            bad.compare_exchange_strong(none, b + (long)i0);
            return;
        }
        k.wsum(S, N, 1, i1 - i0, B, p.pos, d, d, p.gq + i0 * d, d, false);
        if (Nh) k.wsum(S + B, N, 1, i1 - i0, Nh, p.hard, d, d, p.gq + i0 * d, d, true);
    };
    // 2. the candidates' gradients, P^T q, by blocks of candidate rows (every row of P done)
    auto cands_phase = [&](size_t j0, size_t j1) {
        if (j0 < B) k.wsum(p.S + j0, 1, N, std::min(j1, B) - j0, B, p.q, d, d, p.gpos + j0 * d, d, false);
        if (j1 > B) {
            const size_t h0 = std::max(j0, B) - B, h1 = j1 - B;
            k.wsum(p.S + B + h0, 1, N, h1 - h0, B, p.q, d, d, p.ghard + h0 * d, d, false);
        }
    };
    // Both phases in one set of threads (they are started per call: one start instead of two;
    // with one thread, parallel_for runs the lambda inline).
    // The blocks of each phase are claimed from a shared counter, and a thread waits for the
    // first phase only once no block of it is left to claim, so a thread that failed to start
    // (parallel_for then runs its share on the others) cannot leave anyone waiting forever.
    const size_t parts = (size_t)nt;
    std::atomic<size_t> next_rows{0}, done_rows{0}, next_cands{0};
    parallel_for(parts, nt, 1, [&](size_t, size_t, int) {
        for (size_t c; (c = next_rows.fetch_add(1)) < parts; done_rows.fetch_add(1))
            rows_phase(B * c / parts, B * (c + 1) / parts);
        while (done_rows.load() < parts) std::this_thread::yield();
        if (bad.load() >= 0) return;
        for (size_t c; (c = next_cands.fetch_add(1)) < parts;) cands_phase(N * c / parts, N * (c + 1) / parts);
    });
    if (bad.load() >= 0) return bad.load();
    return -1;
}

}  // namespace

template <class T>
bool lse_chunk(const LseChunk<T>& p, T* run_max, T* run_sum, T* r, int num_threads) {
    constexpr T kInf = std::numeric_limits<T>::infinity();
    const RowOps<T>& ops = row_ops<T>();
    std::atomic<bool> bad{false};
    const size_t C = p.C;
    parallel_for(p.B, threads_for(p.B, C, num_threads), rows_per_grain(C), [&](size_t i0, size_t i1, int) {
        for (size_t i = i0; i < i1; ++i) {
            T* s = p.S + i * p.lds;
            // 1. similarities (cosine: times 1/|x_j|), logits with the threshold mask (sim > +inf never
            //    holds), checked before masking: one pass
            if (ops.logits(s, p.inv, C, p.logit_scale, p.thresholds ? p.thresholds[i] : kInf) != T(0)) {
                bad.store(true);
                continue;
            }
            if (p.col_ids) {
                const int64_t pid = p.pos_ids[i], qid = p.query_ids ? p.query_ids[i] : -1;
                for (size_t j = 0; j < C; ++j) {
                    const int64_t c = p.col_ids[j];
                    if ((pid >= 0 && c == pid) || (qid >= 0 && c == qid)) s[j] = -kInf;
                }
            }
            // 2. the running max, and the factor that rescales what was summed so far
            const T new_max = std::max(run_max[i], ops.max(s, C));
            const T safe = std::isinf(new_max) ? T(0) : new_max;
            const T ri = std::exp(run_max[i] - safe);
            // 3. weights exp(z - max) and their sum, times 1/|x_j| for the caller's W @ x (raw rows):
            //    one pass
            const T sum = ops.exp_sum(s, p.inv, C, safe);
            run_sum[i] = run_sum[i] * ri + sum;
            run_max[i] = new_max;
            r[i] = ri;
        }
    });
    return bad.load();
}

template long dense_rows<float>(const DenseRows<float>&, float*, float*, int);
template long dense_rows<double>(const DenseRows<double>&, double*, double*, int);
template bool lse_chunk<float>(const LseChunk<float>&, float*, float*, float*, int);
template bool lse_chunk<double>(const LseChunk<double>&, double*, double*, double*, int);

}  // namespace hn
