// Fused query x memory log-sum-exp with its gradient (the cross-batch memory
// term of InfoNCE).  Flash-attention style, on the CPU:
//
//   * The memory is cut into blocks of NB rows (about 768 KiB, so a block stays
//     in L2).  Threads take blocks dynamically (hn::parallel_for); each thread
//     keeps its own running state per query: max mx, sum l = sum exp(z - mx) and,
//     when a gradient is wanted, acc = sum exp(z - mx) * m_hat (a d-vector).
//   * For a block and a panel of queries the score tile S = Q * X^T comes from
//     the SIMD dot kernel (hn::kernels().dot_tile), then masks and scaling are
//     applied and the running state is updated (streaming log-sum-exp).
//   * The gradient term W * X (W = the tile's exp weights) is again a dot_tile,
//     on the block transposed once into fp32 scratch: T = W * (X^T)^T.
//   * At the end the threads' states are merged exactly like split-K flash
//     decoding: M = max mx_t, L = sum l_t exp(mx_t - M), acc = sum acc_t exp(mx_t - M).
//
// Nothing of size nq x m exists at any time; scratch per thread is
// panel x NB (tile) + d x NB (transposed block) + panel x d (+ nq x d state).
// Because the loss is a scalar per query and the memory carries no gradient,
// dLSE_i/dq_i is fully known after this one pass: the autograd backward only
// multiplies it by the incoming gradient (no second pass over the memory).
#include "losses.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "simd/kernels.h"
#include "threads.h"

namespace hn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr size_t kQueryPanel = 256;

// exp(x) for x <= 0 (Cephes polynomial, ~1 ulp), exactly 0 below -87.
// Branch-free so that the loops calling it vectorise.
inline float exp_nonpos(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    const float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float p2;
    std::memcpy(&p2, &bits, 4);
    return x < -87.0f ? 0.0f : y * p2;
}

size_t block_rows(size_t d) {
    size_t rows = (size_t(768) << 10) / std::max<size_t>(1, d * 4);
    rows = std::max<size_t>(16, std::min<size_t>(rows, 1024));
    return rows / 16 * 16;
}

struct ThreadState {
    std::vector<float> mx, l, acc;        // per query running state
    std::vector<float> S, W, T, Xt, Xf;   // scratch
    std::vector<float> inv, rescale;
    std::vector<char> live;
};

}  // namespace

void memory_lse(const MemoryLseProblem& p, float* lse, float* grad, int num_threads) {
    if (p.d == 0) throw std::invalid_argument("embedding dimension must be positive");
    const size_t nq = p.nq, d = p.d, m = p.m;
    const bool want_grad = grad != nullptr;
    if (nq == 0) return;
    if (m == 0) {
        std::fill(lse, lse + nq, kNegInf);
        if (want_grad) std::fill(grad, grad + nq * d, 0.0f);
        return;
    }
    const Kernels& K = kernels();
    const size_t NB = block_rows(d);
    const size_t nblocks = (m + NB - 1) / NB;
    const size_t panel = std::min(nq, kQueryPanel);
    int nt = std::max(1, num_threads);
    if (double(nq) * double(m) * double(d) < 4e6) nt = 1;
    nt = (int)std::min<size_t>((size_t)nt, nblocks);
    const size_t es = dtype_size(p.mem_type);

    std::vector<ThreadState> st(nt);
    for (auto& s : st) {
        s.mx.assign(nq, kNegInf);
        s.l.assign(nq, 0.0f);
        if (want_grad) s.acc.assign(nq * d, 0.0f);
        s.S.resize(panel * NB);
        if (want_grad) {
            s.W.resize(panel * NB);
            s.T.resize(panel * d);
            s.Xt.resize(d * NB);
            if (p.mem_type != DType::F32) s.Xf.resize(NB * d);
        }
        s.inv.resize(NB);
        s.rescale.resize(panel);
        s.live.resize(panel);
    }

    parallel_for(nblocks, nt, 1, [&](size_t b0, size_t b1, int tid) {
        ThreadState& ts = st[tid];
        for (size_t b = b0; b < b1; ++b) {
            const size_t r0 = b * NB, nb = std::min(NB, m - r0);
            const char* X = static_cast<const char*>(p.mem) + r0 * p.ldm * es;
            float* inv = ts.inv.data();
            if (p.cosine) {
                K.sqnorm_rows(X, p.ldm, nb, d, p.mem_type, inv);
                for (size_t j = 0; j < nb; ++j) inv[j] = 1.0f / std::max(std::sqrt(inv[j]), 1e-12f);
            } else {
                std::fill(inv, inv + nb, 1.0f);
            }
            const int64_t* bid = p.mem_ids ? p.mem_ids + r0 : nullptr;
            bool transposed = false;

            for (size_t q0 = 0; q0 < nq; q0 += panel) {
                const size_t P = std::min(panel, nq - q0);
                float* S = ts.S.data();
                // Score tile: S[i, j] = <q_{q0+i}, x_j>.
                K.dot_tile(p.q + q0 * p.ldq, p.ldq, P, X, p.ldm, nb, d, p.mem_type, S, nb);
                bool any_live = false;
                for (size_t i = 0; i < P; ++i) {
                    const size_t gi = q0 + i;
                    float* s = S + i * nb;
                    const float thr = p.thresholds ? p.thresholds[gi] : std::numeric_limits<float>::infinity();
                    const int64_t pid = p.pos_ids ? p.pos_ids[gi] : -1;
                    const float ls = p.logit_scale;
                    // Masks and logits of this row; block maximum.
                    float bmax = kNegInf;
                    if (bid && pid >= 0) {
                        for (size_t j = 0; j < nb; ++j) {
                            const float sim = s[j] * inv[j];
                            const bool msk = sim > thr || bid[j] == pid;
                            const float z = msk ? kNegInf : sim * ls;
                            s[j] = z;
                            bmax = std::max(bmax, z);
                        }
                    } else {
                        for (size_t j = 0; j < nb; ++j) {
                            const float sim = s[j] * inv[j];
                            const float z = sim > thr ? kNegInf : sim * ls;
                            s[j] = z;
                            bmax = std::max(bmax, z);
                        }
                    }
                    ts.live[i] = bmax != kNegInf;
                    ts.rescale[i] = 1.0f;
                    if (!ts.live[i]) {
                        if (want_grad) std::fill(ts.W.data() + i * nb, ts.W.data() + (i + 1) * nb, 0.0f);
                        continue;
                    }
                    any_live = true;
                    // Streaming log-sum-exp update.
                    const float m_old = ts.mx[gi];
                    const float m_new = std::max(m_old, bmax);
                    const float r = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
                    float sum = 0.0f;
                    if (want_grad) {
                        float* w = ts.W.data() + i * nb;
                        for (size_t j = 0; j < nb; ++j) {
                            const float e = exp_nonpos(s[j] - m_new);
                            sum += e;
                            w[j] = e * inv[j];  // weight of the raw memory row
                        }
                    } else {
                        for (size_t j = 0; j < nb; ++j) sum += exp_nonpos(s[j] - m_new);
                    }
                    ts.l[gi] = ts.l[gi] * r + sum;
                    ts.mx[gi] = m_new;
                    ts.rescale[i] = r;
                }
                if (!want_grad || !any_live) continue;
                // Gradient term: acc_i = acc_i * r_i + sum_j w_ij x_j, as one dot tile
                // against the block transposed to fp32 (done once per block).
                if (!transposed) {
                    const float* Xs;
                    size_t ld;
                    if (p.mem_type == DType::F32) {
                        Xs = reinterpret_cast<const float*>(X);
                        ld = p.ldm;
                    } else {
                        for (size_t j = 0; j < nb; ++j)
                            K.to_f32(X + j * p.ldm * es, p.mem_type, d, ts.Xf.data() + j * d);
                        Xs = ts.Xf.data();
                        ld = d;
                    }
                    float* Xt = ts.Xt.data();
                    constexpr size_t TB = 16;
                    for (size_t j0 = 0; j0 < nb; j0 += TB)
                        for (size_t p0 = 0; p0 < d; p0 += TB) {
                            const size_t j1 = std::min(nb, j0 + TB), p1 = std::min(d, p0 + TB);
                            for (size_t j = j0; j < j1; ++j)
                                for (size_t c = p0; c < p1; ++c) Xt[c * nb + j] = Xs[j * ld + c];
                        }
                    transposed = true;
                }
                float* T = ts.T.data();
                K.dot_tile(ts.W.data(), nb, P, ts.Xt.data(), nb, d, nb, DType::F32, T, d);
                for (size_t i = 0; i < P; ++i) {
                    if (!ts.live[i]) continue;
                    float* a = ts.acc.data() + (q0 + i) * d;
                    const float* t = T + i * d;
                    const float r = ts.rescale[i];
                    if (r == 1.0f) {
                        for (size_t c = 0; c < d; ++c) a[c] += t[c];
                    } else {
                        for (size_t c = 0; c < d; ++c) a[c] = a[c] * r + t[c];
                    }
                }
            }
        }
    });

    // Merge the threads' states (exact: the same algebra as the streaming update).
    parallel_for(nq, nt, 64, [&](size_t i0, size_t i1, int) {
        for (size_t i = i0; i < i1; ++i) {
            float M = kNegInf;
            for (int t = 0; t < nt; ++t) M = std::max(M, st[t].mx[i]);
            if (M == kNegInf) {
                lse[i] = kNegInf;
                if (want_grad) std::fill(grad + i * d, grad + (i + 1) * d, 0.0f);
                continue;
            }
            double L = 0.0;
            for (int t = 0; t < nt; ++t)
                if (st[t].mx[i] != kNegInf) L += double(st[t].l[i]) * std::exp(double(st[t].mx[i]) - M);
            lse[i] = float(double(M) + std::log(L));
            if (!want_grad) continue;
            float* g = grad + i * d;
            std::fill(g, g + d, 0.0f);
            for (int t = 0; t < nt; ++t) {
                if (st[t].mx[i] == kNegInf) continue;
                const float f = float(std::exp(double(st[t].mx[i]) - M) / L) * p.grad_scale;
                const float* a = st[t].acc.data() + i * d;
                for (size_t c = 0; c < d; ++c) g[c] += f * a[c];
            }
        }
    });
}

}  // namespace hn
