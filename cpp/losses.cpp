// Fused InfoNCE kernels: the query->passage term with a cross-batch memory,
// flash-attention style, on the CPU.
//
//   * Candidates (positives, hard negatives, memory) are cut into blocks of NB rows
//     (about 768 KiB, so a block stays in L2).  For a block and a panel of at most
//     256 queries the score tile S = Q * X^T comes from hn::kernels().dot_tile; masks
//     and scaling are applied and a streaming log-sum-exp is updated per query:
//     running max mx, sum l = sum exp(z - mx) and, when a gradient is wanted,
//     acc = sum exp(z - mx) * x_hat (a d-vector).
//   * The gradient term W * X (W = the tile's exp weights) is a second dot_tile,
//     against the block transposed once into fp32 scratch: T = W * (X^T)^T.
//   * Work items are (query panel, range of blocks): threads take them dynamically
//     (hn::parallel_for); every item owns the running state of its panel's queries,
//     and the items of one panel are merged exactly at the end (split-K flash
//     decoding).  With B >= 256 * threads every thread owns whole query panels;
//     with fewer queries the blocks are split too, so all threads work.  State
//     memory is (items x 256 x d) floats, independent of the memory size.
//
// Nothing of size B x candidates exists at any time.  Because the loss is a scalar
// per query and the memory carries no gradient, dloss_i/dq_i is complete after the
// one forward pass; the backward only recomputes the in-batch tiles for the
// passages' gradients.
#include "losses.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fast_exp.h"
#include "simd/kernels.h"
#include "threads.h"

namespace hn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr size_t kQueryPanel = 256;

size_t block_rows(size_t d) {
    size_t rows = (size_t(768) << 10) / std::max<size_t>(1, d * 4);
    rows = std::max<size_t>(16, std::min<size_t>(rows, 1024));
    return rows / 16 * 16;
}

// Logits float32 cannot hold (|z| > FLT_MAX, or NaN from an overflowed dot product)
// would turn the loss into NaN or a silent 0: the kernels record the first segment
// where one appeared (-1 memory, k >= 0 batch segment) and the caller throws.
constexpr int kNoOverflow = -1000;
inline bool logit_ok(float z) { return std::fabs(z) <= std::numeric_limits<float>::max(); }
inline void note_overflow(std::atomic<int>& flag, int seg) {
    int none = kNoOverflow;
    flag.compare_exchange_strong(none, seg, std::memory_order_relaxed);
}
std::string segment_name(int seg) {
    return seg < 0 ? "memory" : seg == 0 ? "pos" : "hard_negatives";
}

struct RowCtx {
    float ls;         // logit multiplier of the block: scale + alpha (other / memory)
    float ls_own;     // scale + alpha_own_neg (the query's own hard negative)
    float zpos;       // z_ip
    float thr;        // mask sim > thr (+inf: no margin)
    int64_t pid;      // < 0: no id masking
    int64_t qid;      // a second id masked for this query (its own text); == pid when absent
    bool only_own;    // in_batch == false on an in-batch segment
    long own;         // column of this query's own passage inside the block, or -1
    bool own_is_pos;  // segment 0: the positive itself (left out: it is the "1")
};

// Shifted logits of one row of a tile: s[j] (raw dot product) -> z_ij - z_ip, or -inf.
// Returns false when a logit (masked or not) is not representable in float32.
inline bool shifted_row(float* s, size_t nb, const float* inv, const int64_t* ids, size_t id_stride,
                        const RowCtx& c) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const float raw_own = c.own >= 0 ? s[c.own] : 0.0f;
    int bad = 0;
    if (c.only_own) {
        std::fill(s, s + nb, neg_inf);
    } else if (ids && c.pid >= 0) {
        for (size_t j = 0; j < nb; ++j) {
            const float sim = s[j] * inv[j];
            const int64_t id = ids[j * id_stride];
            const bool msk = sim > c.thr || id == c.pid || id == c.qid;
            bad |= !logit_ok(sim * c.ls);
            s[j] = msk ? neg_inf : sim * c.ls - c.zpos;
        }
    } else {
        for (size_t j = 0; j < nb; ++j) {
            const float sim = s[j] * inv[j];
            bad |= !logit_ok(sim * c.ls);
            s[j] = sim > c.thr ? neg_inf : sim * c.ls - c.zpos;
        }
    }
    if (c.own >= 0) {
        const size_t j = (size_t)c.own;
        if (c.own_is_pos) {
            s[j] = neg_inf;
        } else {
            const float sim = raw_own * inv[j];
            const int64_t id = ids ? ids[j * id_stride] : -1;
            const bool msk = sim > c.thr || (ids && c.pid >= 0 && (id == c.pid || id == c.qid));
            bad |= !logit_ok(sim * c.ls_own);
            s[j] = msk ? neg_inf : sim * c.ls_own - c.zpos;
        }
    }
    return !bad;
}

struct CBlock {
    int seg;  // 0..n: in-batch segment, -1: memory
    size_t r0, nb;
};

// 1 / |x| of a row from its fp32 sum of squares sq, without overflow or underflow:
// the fast fp32 sum is only trusted inside [1e-30, 1e30]; outside it (entries above
// ~1e15 square towards inf, entries below ~1e-15 lose bits to subnormals) the row is
// summed again in double, whose range holds every float32 square.  So the cosine is
// scale invariant over float32's whole range.  A zero row gets 0 (it scores 0);
// a subnormal-norm row gets at most FLT_MAX.
inline float safe_inv_norm(float sq, const Kernels& K, const void* row, DType t, size_t d) {
    if (sq >= 1e-30f && sq <= 1e30f) return 1.0f / std::sqrt(sq);
    std::vector<float> xr(d);
    K.to_f32(row, t, d, xr.data());
    double acc = 0.0;
    for (size_t c = 0; c < d; ++c) acc += double(xr[c]) * double(xr[c]);
    if (acc == 0.0) return 0.0f;
    return (float)std::min(1.0 / std::sqrt(acc), (double)std::numeric_limits<float>::max());
}

void inv_norms(const Kernels& K, const CandSegment& sg, size_t r0, size_t nb, size_t d, bool cosine, float* inv) {
    if (!cosine) {
        std::fill(inv, inv + nb, 1.0f);
        return;
    }
    const size_t es = dtype_size(sg.dtype);
    const char* X = static_cast<const char*>(sg.data) + r0 * sg.ld * es;
    K.sqnorm_rows(X, sg.ld, nb, d, sg.dtype, inv);
    for (size_t j = 0; j < nb; ++j) inv[j] = safe_inv_norm(inv[j], K, X + j * sg.ld * es, sg.dtype, d);
}


// Context of row i of a block.
inline RowCtx row_ctx(const InfoNceProblem& p, const InfoNceState& st, const CBlock& b, size_t i) {
    RowCtx c;
    const bool mem = b.seg < 0;
    c.ls = p.scale + (mem ? p.alpha_mem : p.alpha_other);
    c.ls_own = p.scale + p.alpha_own_neg;
    c.zpos = p.scale * st.sim_pos[i];
    c.thr = p.use_margin ? st.sim_pos[i] - p.margin : std::numeric_limits<float>::infinity();
    c.pid = p.pos_ids ? p.pos_ids[i] : -1;
    c.qid = p.query_ids ? p.query_ids[i] : -1;
    if (c.pid < 0) c.pid = c.qid;  // one known id is enough to mask
    if (c.qid < 0) c.qid = c.pid;
    c.only_own = !mem && !p.in_batch;
    c.own = (!mem && i >= b.r0 && i < b.r0 + b.nb) ? long(i - b.r0) : -1;
    c.own_is_pos = b.seg == 0;
    return c;
}

const CandSegment& seg_of(const InfoNceProblem& p, const CBlock& b) {
    return b.seg < 0 ? p.memory : p.batch[(size_t)b.seg];
}

void transpose_block(const Kernels& K, const CandSegment& sg, size_t r0, size_t nb, size_t d,
                     std::vector<float>& Xf, float* Xt) {
    const size_t es = dtype_size(sg.dtype);
    const char* X = static_cast<const char*>(sg.data) + r0 * sg.ld * es;
    const float* Xs;
    size_t ld;
    if (sg.dtype == DType::F32) {
        Xs = reinterpret_cast<const float*>(X);
        ld = sg.ld;
    } else {
        Xf.resize(nb * d);
        for (size_t j = 0; j < nb; ++j) K.to_f32(X + j * sg.ld * es, sg.dtype, d, Xf.data() + j * d);
        Xs = Xf.data();
        ld = d;
    }
    constexpr size_t TB = 16;
    for (size_t j0 = 0; j0 < nb; j0 += TB)
        for (size_t p0 = 0; p0 < d; p0 += TB) {
            const size_t j1 = std::min(nb, j0 + TB), p1 = std::min(d, p0 + TB);
            for (size_t j = j0; j < j1; ++j)
                for (size_t c = p0; c < p1; ++c) Xt[c * nb + j] = Xs[j * ld + c];
        }
}


// Running log-sum-exp state of one work item (its panel's queries).
struct Item {
    size_t q0 = 0, P = 0;  // query rows [q0, q0 + P)
    size_t b0 = 0, b1 = 0; // blocks [b0, b1)
    std::vector<float> mx, l, acc;
};

struct Scratch {
    std::vector<float> S, W, T, Xt, Xf, inv, rescale;
    std::vector<char> live;
};

// The streaming pass shared by both kernels.  row_fn(block, global row i, s, inv)
// turns row i of a raw score tile into logits (-inf = masked) in place.
template <class SegOf, class RowFn>
std::vector<Item> stream_pass(const Kernels& K, const float* qhat, size_t B, size_t d,
                              const std::vector<CBlock>& blocks, size_t NB, bool cosine, bool want_grad,
                              int num_threads, SegOf seg_of_blk, RowFn row_fn) {
    const size_t panel = std::min(B, kQueryPanel);
    const size_t npanels = (B + panel - 1) / panel;
    size_t total = 0;
    for (const auto& b : blocks) total += b.nb;
    int nt = std::max(1, num_threads);
    if (double(B) * double(total) * double(d) < 4e6) nt = 1;
    // Block ranges per panel: about 4 items per thread so that dynamic scheduling
    // evens out busy cores, as long as the items' state stays under ~64 MiB.
    size_t G = (4 * (size_t)nt + npanels - 1) / npanels;
    const size_t per_item = panel * (want_grad ? d + 2 : 2) * sizeof(float);
    G = std::min(G, std::max<size_t>(1, (size_t(64) << 20) / (npanels * per_item)));
    G = std::max(G, ((size_t)nt + npanels - 1) / npanels);
    G = std::max<size_t>(1, std::min(G, blocks.size()));
    std::vector<Item> items(npanels * G);
    for (size_t pi = 0; pi < npanels; ++pi)
        for (size_t g = 0; g < G; ++g) {
            Item& it = items[pi * G + g];
            it.q0 = pi * panel;
            it.P = std::min(panel, B - it.q0);
            it.b0 = blocks.size() * g / G;
            it.b1 = blocks.size() * (g + 1) / G;
        }
    nt = (int)std::min<size_t>((size_t)nt, items.size());
    std::vector<Scratch> scratch(nt);
    for (auto& sc : scratch) {
        sc.S.resize(panel * NB);
        sc.inv.resize(NB);
        sc.rescale.resize(panel);
        sc.live.resize(panel);
        if (want_grad) {
            sc.W.resize(panel * NB);
            sc.T.resize(panel * d);
            sc.Xt.resize(d * NB);
        }
    }

    parallel_for(items.size(), nt, 1, [&](size_t i0, size_t i1, int tid) {
        Scratch& t = scratch[tid];
        for (size_t ii = i0; ii < i1; ++ii) {
            Item& it = items[ii];
            const size_t P = it.P;
            it.mx.assign(P, kNegInf);
            it.l.assign(P, 0.0f);
            if (want_grad) it.acc.assign(P * d, 0.0f);
            for (size_t bi = it.b0; bi < it.b1; ++bi) {
                const CBlock& blk = blocks[bi];
                const CandSegment& sg = seg_of_blk(blk);
                const size_t nb = blk.nb;
                const char* X = static_cast<const char*>(sg.data) + blk.r0 * sg.ld * dtype_size(sg.dtype);
                float* inv = t.inv.data();
                inv_norms(K, sg, blk.r0, nb, d, cosine, inv);
                float* S = t.S.data();
                // THE HOT LOOP, part 1: score tile of this panel x block.
                K.dot_tile(qhat + it.q0 * d, d, P, X, sg.ld, nb, d, sg.dtype, S, nb);
                bool any_live = false;
                for (size_t i = 0; i < P; ++i) {
                    float* s = S + i * nb;
                    row_fn(blk, it.q0 + i, s, inv);
                    float bmax = kNegInf;
                    for (size_t j = 0; j < nb; ++j) bmax = std::max(bmax, s[j]);
                    t.live[i] = bmax != kNegInf;
                    t.rescale[i] = 1.0f;
                    if (!t.live[i]) {
                        if (want_grad) std::fill(t.W.data() + i * nb, t.W.data() + (i + 1) * nb, 0.0f);
                        continue;
                    }
                    any_live = true;
                    // streaming log-sum-exp update
                    const float m_old = it.mx[i];
                    const float m_new = std::max(m_old, bmax);
                    const float r = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
                    float sum = 0.0f;
                    if (want_grad) {
                        float* w = t.W.data() + i * nb;
                        for (size_t j = 0; j < nb; ++j) {
                            const float e = exp_nonpos(s[j] - m_new);
                            sum += e;
                            w[j] = e * inv[j];  // weight of the raw row (x_hat = x * inv)
                        }
                    } else {
                        for (size_t j = 0; j < nb; ++j) sum += exp_nonpos(s[j] - m_new);
                    }
                    it.l[i] = it.l[i] * r + sum;
                    it.mx[i] = m_new;
                    t.rescale[i] = r;
                }
                if (!want_grad || !any_live) continue;
                // THE HOT LOOP, part 2: acc_i = acc_i * r_i + sum_j w_ij x_j.
                transpose_block(K, sg, blk.r0, nb, d, t.Xf, t.Xt.data());
                K.dot_tile(t.W.data(), nb, P, t.Xt.data(), nb, d, nb, DType::F32, t.T.data(), d);
                for (size_t i = 0; i < P; ++i) {
                    if (!t.live[i]) continue;
                    float* a = it.acc.data() + i * d;
                    const float* tt = t.T.data() + i * d;
                    const float r = t.rescale[i];
                    if (r == 1.0f) {
                        for (size_t c = 0; c < d; ++c) a[c] += tt[c];
                    } else {
                        for (size_t c = 0; c < d; ++c) a[c] = a[c] * r + tt[c];
                    }
                }
            }
        }
    });
    return items;
}

// The G items of query i's panel: (first item index, count).
inline void items_of(size_t i, size_t B, size_t nitems, size_t* first, size_t* count) {
    const size_t panel = std::min(B, kQueryPanel);
    const size_t npanels = (B + panel - 1) / panel;
    const size_t G = nitems / npanels;
    *first = (i / panel) * G;
    *count = G;
}

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
    // contiguous fp32 copy of the queries (they may have a row stride)
    std::vector<float> qf(nq * d);
    for (size_t i = 0; i < nq; ++i) std::copy(p.q + i * p.ldq, p.q + i * p.ldq + d, qf.data() + i * d);
    CandSegment mem;
    mem.data = p.mem;
    mem.dtype = p.mem_type;
    mem.rows = m;
    mem.ld = p.ldm;
    mem.ids = p.mem_ids;
    const size_t NB = block_rows(d);
    std::vector<CBlock> blocks;
    for (size_t r = 0; r < m; r += NB) blocks.push_back({-1, r, std::min(NB, m - r)});
    std::atomic<int> overflow{kNoOverflow};
    auto row_fn = [&](const CBlock& blk, size_t gi, float* s, const float* inv) {
        const size_t nb = blk.nb;
        const float thr = p.thresholds ? p.thresholds[gi] : std::numeric_limits<float>::infinity();
        int64_t pid = p.pos_ids ? p.pos_ids[gi] : -1;
        int64_t qid = p.query_ids ? p.query_ids[gi] : -1;
        if (pid < 0) pid = qid;
        if (qid < 0) qid = pid;
        const float ls = p.logit_scale;
        const int64_t* bid = p.mem_ids ? p.mem_ids + blk.r0 : nullptr;
        int bad = 0;
        if (bid && pid >= 0) {
            for (size_t j = 0; j < nb; ++j) {
                const float sim = s[j] * inv[j];
                bad |= !logit_ok(sim * ls);
                s[j] = (sim > thr || bid[j] == pid || bid[j] == qid) ? kNegInf : sim * ls;
            }
        } else {
            for (size_t j = 0; j < nb; ++j) {
                const float sim = s[j] * inv[j];
                bad |= !logit_ok(sim * ls);
                s[j] = sim > thr ? kNegInf : sim * ls;
            }
        }
        if (bad) note_overflow(overflow, -1);
    };
    std::vector<Item> items = stream_pass(K, qf.data(), nq, d, blocks, NB, p.cosine, want_grad, num_threads,
                                          [&](const CBlock&) -> const CandSegment& { return mem; }, row_fn);
    if (overflow.load() != kNoOverflow)
        throw std::range_error("the logits of q against the memory overflow float32 (|similarity * scale| > "
                               "3.4e38): scale the embeddings down or use similarity='cosine'");
    // Merge the items of each query (exact: the same algebra as the streaming update).
    for (size_t i = 0; i < nq; ++i) {
        size_t f, G;
        items_of(i, nq, items.size(), &f, &G);
        const size_t li = i - items[f].q0;
        float M = kNegInf;
        for (size_t g = 0; g < G; ++g) M = std::max(M, items[f + g].mx[li]);
        if (M == kNegInf) {
            lse[i] = kNegInf;
            if (want_grad) std::fill(grad + i * d, grad + (i + 1) * d, 0.0f);
            continue;
        }
        double L = 0.0;
        for (size_t g = 0; g < G; ++g)
            if (items[f + g].mx[li] != kNegInf) L += double(items[f + g].l[li]) * std::exp(double(items[f + g].mx[li]) - M);
        lse[i] = float(double(M) + std::log(L));
        if (!want_grad) continue;
        float* gr = grad + i * d;
        std::fill(gr, gr + d, 0.0f);
        for (size_t g = 0; g < G; ++g) {
            const Item& it = items[f + g];
            if (it.mx[li] == kNegInf) continue;
            const float w = float(std::exp(double(it.mx[li]) - M) / L) * p.grad_scale;
            const float* a = it.acc.data() + li * d;
            for (size_t c = 0; c < d; ++c) gr[c] += w * a[c];
        }
    }
}

void infonce_forward(const InfoNceProblem& p, bool want_grad, float* loss, InfoNceState& st, int num_threads) {
    const size_t B = p.B, d = p.d;
    if (d == 0) throw std::invalid_argument("embedding dimension must be positive");
    if (B == 0) return;
    if (p.batch.empty() || p.batch[0].rows != B) throw std::invalid_argument("positives must have B rows");
    const Kernels& K = kernels();

    // Queries as fp32 (normalised for cosine).
    st.qhat.assign(B * d, 0.0f);
    st.qinv.assign(B, 1.0f);
    for (size_t i = 0; i < B; ++i) {
        float* r = st.qhat.data() + i * d;
        K.to_f32(static_cast<const char*>(p.q) + i * p.ldq * dtype_size(p.q_type), p.q_type, d, r);
        if (p.cosine) {
            float sq;
            K.sqnorm_rows(r, d, 1, d, DType::F32, &sq);
            const float inv = safe_inv_norm(sq, K, r, DType::F32, d);
            st.qinv[i] = inv;
            for (size_t c = 0; c < d; ++c) r[c] *= inv;
        }
    }
    // Normalised positives (fp32) and sim_ip.
    std::vector<float> pos_hat(B * d), pos_inv(B);
    inv_norms(K, p.batch[0], 0, B, d, p.cosine, pos_inv.data());
    st.sim_pos.assign(B, 0.0f);
    {
        const CandSegment& ps = p.batch[0];
        const size_t es = dtype_size(ps.dtype);
        for (size_t i = 0; i < B; ++i) {
            float* r = pos_hat.data() + i * d;
            K.to_f32(static_cast<const char*>(ps.data) + i * ps.ld * es, ps.dtype, d, r);
            float dot;
            K.dot_tile(st.qhat.data() + i * d, d, 1, r, d, 1, d, DType::F32, &dot, 1);
            st.sim_pos[i] = dot * pos_inv[i];
            for (size_t c = 0; c < d; ++c) r[c] *= pos_inv[i];
            if (!logit_ok(p.scale * st.sim_pos[i]))
                throw std::range_error("the logits of q against pos overflow float32 (|similarity * scale| > "
                                       "3.4e38): scale the embeddings down or use similarity='cosine'");
        }
    }

    // Blocks over all candidate segments.
    const size_t NB = block_rows(d);
    std::vector<CBlock> blocks;
    for (size_t k = 0; k < p.batch.size(); ++k)
        for (size_t r = 0; r < p.batch[k].rows; r += NB) blocks.push_back({(int)k, r, std::min(NB, p.batch[k].rows - r)});
    for (size_t r = 0; r < p.memory.rows; r += NB) blocks.push_back({-1, r, std::min(NB, p.memory.rows - r)});
    auto seg = [&](const CBlock& b) -> const CandSegment& { return seg_of(p, b); };
    std::atomic<int> overflow{kNoOverflow};
    auto row_fn = [&](const CBlock& blk, size_t gi, float* s, const float* inv) {
        const CandSegment& sg = seg_of(p, blk);
        const int64_t* ids = sg.ids ? sg.ids + blk.r0 * sg.id_stride : nullptr;
        if (!shifted_row(s, blk.nb, inv, ids, sg.id_stride, row_ctx(p, st, blk, gi))) note_overflow(overflow, blk.seg);
    };
    std::vector<Item> items = stream_pass(K, st.qhat.data(), B, d, blocks, NB, p.cosine, want_grad, num_threads,
                                          seg, row_fn);
    if (overflow.load() != kNoOverflow)
        throw std::range_error("the logits of q against " + segment_name(overflow.load()) +
                               " overflow float32 (|similarity * scale| > 3.4e38): scale the embeddings down "
                               "or use similarity='cosine'");

    // Merge: the positive contributes exp(0) = 1 in the shifted space.
    st.lnorm.assign(B, 0.0f);
    if (want_grad) st.gq.assign(B * d, 0.0f);
    std::vector<float> gh(want_grad ? d : 0);
    for (size_t i = 0; i < B; ++i) {
        size_t f, G;
        items_of(i, B, items.size(), &f, &G);
        const size_t li = i - items[f].q0;
        double M = 0.0;
        for (size_t g = 0; g < G; ++g) M = std::max(M, (double)items[f + g].mx[li]);
        double rest = 0.0;
        for (size_t g = 0; g < G; ++g)
            if (items[f + g].mx[li] != kNegInf) rest += double(items[f + g].l[li]) * std::exp(double(items[f + g].mx[li]) - M);
        const double lval = M == 0.0 ? std::log1p(rest) : M + std::log(std::exp(-M) + rest);
        loss[i] = (float)lval;
        st.lnorm[i] = (float)lval;
        if (!want_grad) continue;
        // d loss_i / d qhat_i = scale * (sum_{c != p} p_ic xhat_c + (p_ip - 1) xhat_p)
        const double Ltot = std::exp(-M) + rest;
        const float fpos_m1 = float(-rest / Ltot);  // p_ip - 1, without cancellation
        const float* xp = pos_hat.data() + i * d;
        for (size_t c = 0; c < d; ++c) gh[c] = fpos_m1 * xp[c];
        for (size_t g = 0; g < G; ++g) {
            const Item& it = items[f + g];
            if (it.mx[li] == kNegInf) continue;
            const float w = float(std::exp(double(it.mx[li]) - M) / Ltot);
            const float* a = it.acc.data() + li * d;
            for (size_t c = 0; c < d; ++c) gh[c] += w * a[c];
        }
        float* gq = st.gq.data() + i * d;
        if (p.cosine) {  // through q / |q|
            const float* qh = st.qhat.data() + i * d;
            double dotv = 0.0;
            for (size_t c = 0; c < d; ++c) dotv += double(qh[c]) * gh[c];
            for (size_t c = 0; c < d; ++c) gq[c] = p.scale * (gh[c] - qh[c] * float(dotv)) * st.qinv[i];
        } else {
            for (size_t c = 0; c < d; ++c) gq[c] = p.scale * gh[c];
        }
        int bad = 0;
        for (size_t c = 0; c < d; ++c) bad |= !logit_ok(gq[c]);
        if (bad)
            throw std::range_error("the gradient of the loss w.r.t. q overflows float32 (cosine of a q row with a "
                                   "norm near float32's smallest normal number)");
    }
}

void infonce_backward(const InfoNceProblem& p, const InfoNceState& st, const float* g, float* grad_q,
                      const std::vector<float*>& grad_batch, int num_threads) {
    const size_t B = p.B, d = p.d;
    if (B == 0) return;
    if (st.qhat.size() != B * d || st.gq.size() != B * d || st.lnorm.size() != B)
        throw std::invalid_argument("infonce_backward: forward state does not match the problem");
    const Kernels& K = kernels();
    for (size_t i = 0; i < B; ++i)
        for (size_t c = 0; c < d; ++c) grad_q[i * d + c] = g[i] * st.gq[i * d + c];

    // d loss / d xhat_c = sum_i g_i * scale * (p_ic - [c == p_i]) * qhat_i, tile by tile:
    // G (tile x d) = W^T (tile x B) * qhat (B x d), as a dot tile against qhat^T.
    std::vector<float> qT(d * B);
    for (size_t i = 0; i < B; ++i)
        for (size_t c = 0; c < d; ++c) qT[c * B + i] = st.qhat[i * d + c];
    constexpr size_t TR = 64;  // candidate rows per tile
    std::vector<CBlock> tiles;
    for (size_t k = 0; k < p.batch.size(); ++k)
        if (grad_batch[k])
            for (size_t r = 0; r < p.batch[k].rows; r += TR) tiles.push_back({(int)k, r, std::min(TR, p.batch[k].rows - r)});
    int nt = std::max(1, num_threads);
    if (double(B) * double(tiles.size() * TR) * double(d) < 4e6) nt = 1;
    nt = (int)std::min<size_t>((size_t)nt, std::max<size_t>(1, tiles.size()));
    parallel_for(tiles.size(), nt, 1, [&](size_t t0, size_t t1, int) {
        std::vector<float> S(B * TR), WT(TR * B), G(TR * d), inv(TR), xr(d);
        for (size_t ti = t0; ti < t1; ++ti) {
            const CBlock& blk = tiles[ti];
            const CandSegment& sg = seg_of(p, blk);
            const size_t nb = blk.nb, es = dtype_size(sg.dtype);
            const char* X = static_cast<const char*>(sg.data) + blk.r0 * sg.ld * es;
            inv_norms(K, sg, blk.r0, nb, d, p.cosine, inv.data());
            const int64_t* ids = sg.ids ? sg.ids + blk.r0 * sg.id_stride : nullptr;
            K.dot_tile(st.qhat.data(), d, B, X, sg.ld, nb, d, sg.dtype, S.data(), nb);
            for (size_t i = 0; i < B; ++i) {
                float* s = S.data() + i * nb;
                const RowCtx c = row_ctx(p, st, blk, i);
                shifted_row(s, nb, inv.data(), ids, sg.id_stride, c);
                const float coef = g[i] * p.scale;
                const float ln = st.lnorm[i];
                for (size_t j = 0; j < nb; ++j) WT[j * B + i] = coef * exp_nonpos(s[j] - ln);
                if (c.own >= 0 && c.own_is_pos) WT[(size_t)c.own * B + i] = coef * std::expm1(-ln);
            }
            K.dot_tile(WT.data(), B, nb, qT.data(), B, d, B, DType::F32, G.data(), d);
            float* out = grad_batch[(size_t)blk.seg] + blk.r0 * d;
            if (!p.cosine) {
                for (size_t j = 0; j < nb; ++j) std::copy(G.data() + j * d, G.data() + (j + 1) * d, out + j * d);
            } else {  // through x / max(|x|, eps): (g - xhat <xhat, g>) / |x|
                for (size_t j = 0; j < nb; ++j) {
                    const float* gj = G.data() + j * d;
                    float* o = out + j * d;
                    K.to_f32(X + j * sg.ld * es, sg.dtype, d, xr.data());
                    double dotv = 0.0;
                    for (size_t c = 0; c < d; ++c) dotv += double(xr[c]) * inv[j] * gj[c];
                    for (size_t c = 0; c < d; ++c) o[c] = (gj[c] - xr[c] * inv[j] * float(dotv)) * inv[j];
                }
            }
        }
    });
}

}  // namespace hn
