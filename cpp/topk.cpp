// Exact top-k: score tiles from the SIMD dot kernel, selected on the fly.
//
// Work is split over corpus blocks (NB rows each, sized to stay in L2).  Each
// thread owns a score tile [panel x NB] and one candidate buffer per query.  For
// every block it computes the tile, turns dot products into ranking keys (larger
// is better), keeps only the keys >= the query's running threshold (the k-th
// best key so far), and compacts the buffer when it fills (TopkBuf::compact).  At
// the end the per-thread buffers of each query are merged and sorted.
#include "topk.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "simd/kernels.h"
#include "threads.h"
#include "topk_internal.h"

namespace hn {
namespace {

using namespace detail;

// Running top-k of one query inside one thread.
struct TopkBuf {
    Cand* buf;
    size_t n, cap, k;
    float tau;                                      // keys below tau can no longer enter the top k
    float* keys;                                    // cap floats of scratch (shared by a panel's buffers)
    float (*lower_kth)(const float*, size_t, size_t);  // Kernels::lower_kth

    void push(float key, int64_t id) {
        if (n == cap) compact();
        buf[n++] = make_cand(key, id);
    }
    // Drops the keys that can no longer enter the top k.  The cut is a bound t at most a
    // 4096th of the keys' range below the k-th best (Kernels::lower_kth: a dozen vector
    // counting passes), so the buffer keeps its k best and at most a few more: several times
    // cheaper than selecting the k-th exactly (nth_element was an eighth of a search of
    // isotropic rows at d = 384), and the results are selected exactly at the end anyway.
    // Exactly when the keys are not all finite or too many tie at the cut.
    void compact() {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (size_t i = 0; i < n; ++i) {
            const float x = cand_key(buf[i]);
            keys[i] = x;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        if (std::isfinite(hi - lo)) {  // (every Kernels table has a lower_kth)
            const float t = lower_kth(keys, n, k);
            // keep the words >= t's (key bits first: the same order as the keys), without a
            // branch (about half the keys go, unpredictably)
            const Cand cut = Cand(key_bits(t + 0.0f)) << 32;
            size_t m = 0;
            for (size_t i = 0; i < n; ++i) {
                const Cand c = buf[i];
                buf[m] = c;
                m += c >= cut;
            }
            if (m <= k + (cap - k) / 2) {  // room for at least half a buffer of new keys
                n = m;
                tau = t;
                return;
            }
            n = m;  // (the dropped keys are below the k-th best: selecting among the rest is exact)
        }
        std::nth_element(buf, buf + (k - 1), buf + n, std::greater<Cand>());
        n = k;
        tau = cand_key(buf[k - 1]);
    }
};

constexpr size_t kBufferBudget = size_t(32) << 20;  // bytes of candidate buffers, all threads
constexpr size_t kMaxPanel = 256;                     // queries per panel (keeps the score tile in L2)
constexpr size_t kAlignCopyPanel = 16;                // from this many queries a misaligned block is copied (measured: a gain from 16 on, a loss at Q = 1 on a corpus streamed from memory)

size_t block_rows(size_t d, DType t) {
    // about 384 KiB of corpus per block: stays in L2 while every query group of the panel passes over it
    size_t rows = (size_t(384) << 10) / std::max<size_t>(1, d * dtype_size(t));
    rows = std::max<size_t>(24, std::min<size_t>(rows, 1536));
    return rows / 24 * 24;
}

struct Block {
    const Segment* seg;
    size_t r0, r1;
};

void check_row_finite(const Kernels& K, const char* X, const Segment& sg, size_t j, size_t d, size_t row) {
    std::vector<float> tmp(d);
    K.to_f32(X + j * sg.ld * dtype_size(sg.dtype), sg.dtype, d, tmp.data());
    for (float v : tmp)
        if (!std::isfinite(v))
            throw std::invalid_argument("corpus contains NaN or Inf (row " + std::to_string(sg.id_offset + (int64_t)row) + ")");
}

// Everything one search needs, shared read-only by the threads.
struct Search {
    const Kernels& K;
    const void* Q;
    DType qt;
    size_t ldq, d, k, cap;
    Metric metric;
    const Exclusions& excl;
    const std::vector<int64_t>& ex_sorted;
    const std::vector<Block>& blocks;
    size_t nb_max;
    size_t ldp;  // floats per row of a panel's query copy: d rounded up to a cache line
};

// Per-thread scratch for a panel of up to `panel` queries.
struct Panel {
    AlignedVec<float> q;   // the panel's queries, each row starting on a cache line (d * 4 is a multiple of 64, or padded)
    std::vector<float> qn, tile, xn;
    AlignedVec<char> xa;   // an aligned copy of a misaligned corpus block (see process)
    std::vector<uint32_t> surv;
    std::unique_ptr<Cand[]> cands;
    std::vector<float> keys;  // TopkBuf::compact's scratch
    std::vector<TopkBuf> bufs;
    size_t q0 = 0, P = 0;

    Panel(const Search& S, size_t panel)
        : q(panel * S.ldp), qn(panel), tile(panel * S.nb_max), xn(S.nb_max), surv(S.nb_max),
          cands(new Cand[panel * S.cap]), keys(S.cap), bufs(panel) {}

    // Queries q0 .. q0+P-1 as contiguous fp32 (normalised for cosine); empty buffers.
    void load_queries(const Search& S, size_t q0_, size_t P_) {
        q0 = q0_;
        P = P_;
        for (size_t i = 0; i < P; ++i)
            load_query(S.K, S.Q, S.qt, S.ldq, S.d, S.metric, q0 + i, q.data() + i * S.ldp, &qn[i]);
        reset(S);
    }
    void reset(const Search& S) {
        for (size_t i = 0; i < P; ++i)
            bufs[i] = TopkBuf{cands.get() + i * S.cap, 0, S.cap, S.k, -std::numeric_limits<float>::infinity(),
                              keys.data(), S.K.lower_kth};
    }

    // THE SELECTION LOOP: score one corpus block against the panel and keep, per
    // query, only the keys at or above its running threshold.
    void process(const Search& S, const float* qpanel, const float* qnorms, const Block& blk) {
        const Segment& sg = *blk.seg;
        const size_t nb = blk.r1 - blk.r0, d = S.d;
        const size_t es = dtype_size(sg.dtype);
        const char* X = static_cast<const char*>(sg.data) + blk.r0 * sg.ld * es;
        float* T = tile.data();
        // The dot kernel loads 64 bytes at a time along each row.  numpy puts a
        // large array's data 16 bytes past a cache line, so every load of its rows
        // would straddle two lines; when the panel is large enough for the kernel
        // to be compute-bound, copy the block into aligned rows first (one pass
        // over data the kernel reads P times; the values and their positions in
        // the row, hence every score's bits, are unchanged).
        const size_t rowb = (d * es + 63) / 64 * 64;
        if (P >= kAlignCopyPanel && (reinterpret_cast<uintptr_t>(X) % 64 != 0 || (sg.ld * es) % 64 != 0)) {
            if (xa.size() < nb * rowb) xa.resize(S.nb_max * rowb);
            for (size_t j = 0; j < nb; ++j) std::memcpy(xa.data() + j * rowb, X + j * sg.ld * es, d * es);
            S.K.dot_tile(qpanel, S.ldp, P, xa.data(), rowb / es, nb, d, sg.dtype, T, nb);
        } else {
            S.K.dot_tile(qpanel, S.ldp, P, X, sg.ld, nb, d, sg.dtype, T, nb);
        }
        // A NaN/Inf anywhere in a corpus row makes its score with every query
        // non-finite, so checking the first query's row finds bad input for
        // free; huge finite values that overflow are allowed.
        for (size_t j = 0; j < nb; ++j)
            if (!std::isfinite(T[j])) check_row_finite(S.K, X, sg, j, d, blk.r0 + j);
        if (S.metric != Metric::IP) {
            if (sg.sqnorms) std::copy(sg.sqnorms + blk.r0, sg.sqnorms + blk.r1, xn.begin());
            else S.K.sqnorm_rows(X, sg.ld, nb, d, sg.dtype, xn.data());
            if (S.metric == Metric::Cosine)  // 1/||c||, exact also for rows whose squares over/underflow
                for (size_t j = 0; j < nb; ++j) xn[j] = inv_norm(S.K, xn[j], X + j * sg.ld * dtype_size(sg.dtype), sg.dtype, d);
        }
        const int64_t base = sg.id_offset + (int64_t)blk.r0;
        for (size_t i = 0; i < P; ++i) {
            float* s = T + i * nb;
            // ranking keys: larger is better
            if (S.metric == Metric::Cosine) {
                for (size_t j = 0; j < nb; ++j) s[j] *= xn[j];
            } else if (S.metric == Metric::L2) {
                const float a = qnorms[i];
                for (size_t j = 0; j < nb; ++j) s[j] = detail::l2_key(a, xn[j], s[j]);
            }
            TopkBuf& tb = bufs[i];
            const size_t c = S.K.filter_ge(s, nb, tb.tau, surv.data());
            const int64_t* eb = nullptr;
            const int64_t* ee = nullptr;
            if (S.excl.indptr) {
                eb = S.ex_sorted.data() + S.excl.indptr[q0 + i];
                ee = S.ex_sorted.data() + S.excl.indptr[q0 + i + 1];
            }
            for (size_t u = 0; u < c; ++u) {
                const float key = s[surv[u]];
                if (key < tb.tau) continue;  // the threshold rose inside this row
                const int64_t id = base + surv[u];
                if (eb != ee && std::binary_search(eb, ee, id)) continue;
                tb.push(key, id);
            }
        }
    }
};

// Merges the candidates of query i from one or more panels, best first, into the outputs.
void write_results(const Search& S, const std::vector<Panel*>& parts, size_t i, std::vector<Cand>& merged,
                   float* scores, int64_t* ids) {
    merged.clear();
    for (Panel* p : parts) merged.insert(merged.end(), p->bufs[i].buf, p->bufs[i].buf + p->bufs[i].n);
    const size_t row = parts.front()->q0 + i;
    write_row(merged, S.k, S.metric, scores + row * S.k, ids + row * S.k);
}

}  // namespace

namespace detail {

void load_query(const Kernels& K, const void* Q, DType qt, size_t ldq, size_t d, Metric metric, size_t row,
                float* dst, float* qn) {
    K.to_f32(static_cast<const char*>(Q) + row * ldq * dtype_size(qt), qt, d, dst);
    if (metric != Metric::IP) {
        K.sqnorm_rows(dst, d, 1, d, DType::F32, qn);
        if (metric == Metric::Cosine) {
            const float inv = inv_norm(K, *qn, dst, DType::F32, d);
            for (size_t p = 0; p < d; ++p) dst[p] *= inv;
        }
    }
}

float inv_norm_slow(const Kernels& K, const void* x, DType t, size_t d) {
    thread_local std::vector<float> tmp;
    tmp.resize(d);
    K.to_f32(x, t, d, tmp.data());
    double ss = 0;
    for (size_t p = 0; p < d; ++p) ss += double(tmp[p]) * double(tmp[p]);
    return ss > 0 ? float(1.0 / std::sqrt(ss)) : 0.0f;
}

void write_row(std::vector<Cand>& c, size_t k, Metric metric, float* so, int64_t* io) {
    const size_t m = std::min(k, c.size());
    const Kernels& K = kernels();
    if (K.sort_desc_small && c.size() <= 192 && c.size() > 1) {
        // a few hundred at most (the screen's survivors): one vector rank sort (the
        // candidates are distinct words: ids differ)
        thread_local std::vector<Cand> sorted;
        sorted.resize(c.size());
        K.sort_desc_small(c.data(), c.size(), sorted.data());
        std::copy(sorted.begin(), sorted.begin() + m, c.begin());
    } else {
        if (c.size() > m) std::nth_element(c.begin(), c.begin() + (m - 1), c.end(), std::greater<Cand>());
        std::sort(c.begin(), c.begin() + m, std::greater<Cand>());
    }
    for (size_t r = 0; r < m; ++r) {
        const float key = cand_key(c[r]);
        so[r] = metric == Metric::L2 ? 0.0f - key : key;  // 0 - key: a zero distance is +0
        io[r] = cand_id(c[r]);
    }
    const float pad = metric == Metric::L2 ? std::numeric_limits<float>::infinity()
                                           : -std::numeric_limits<float>::infinity();
    for (size_t r = m; r < k; ++r) {
        so[r] = pad;
        io[r] = -1;
    }
}

}  // namespace detail

namespace {

// The plain fp32 search of queries 0 .. nq-1 of Q (ex_sorted: each query's exclusions sorted,
// indexed through excl.indptr).
void plain_search(const void* Q, DType qt, size_t nq, size_t ldq, size_t d, const std::vector<Segment>& segments,
                  Metric metric, size_t k, const Exclusions& excl, const std::vector<int64_t>& ex_sorted,
                  float* scores, int64_t* ids, int num_threads);

}  // namespace

void topk_search(const void* Q, DType qt, size_t nq, size_t ldq, size_t d,
                 const std::vector<Segment>& segments, Metric metric, size_t k,
                 const Exclusions& excl, float* scores, int64_t* ids, int num_threads, ScreenCache* cache,
                 std::vector<size_t>* left) {
    using namespace detail;
    if (k == 0) throw std::invalid_argument("k must be positive");
    if (d == 0) throw std::invalid_argument("d must be positive");
    size_t total = 0;
    for (const Segment& s : segments) {
        total += s.rows;
        if (s.id_offset < 0 || s.id_offset + (int64_t)s.rows > kMaxRows)
            throw std::invalid_argument("corpus ids must lie in [0, 2^32 - 1)");
    }
    if (left) left->clear();
    if (nq == 0) return;

    // Sorted copy of each query's exclusions (checked only for threshold survivors).
    std::vector<int64_t> ex_sorted;
    if (excl.indptr) {
        ex_sorted.assign(excl.indices, excl.indices + excl.indptr[nq]);
        for (size_t i = 0; i < nq; ++i)
            std::sort(ex_sorted.begin() + excl.indptr[i], ex_sorted.begin() + excl.indptr[i + 1]);
    }
    // low-precision screen + exact fp32 rescoring where it applies (same results, fewer fp32
    // flops); the queries it leaves (if any) run the plain path
    std::vector<size_t> rest;
    if (!topk_search_screened(Q, qt, nq, ldq, d, segments, metric, k, excl, ex_sorted, scores, ids, num_threads,
                              cache, &rest))
        rest = {0, nq};
    if (left) {  // screen only: the caller runs the plain path on what is left
        *left = std::move(rest);
        return;
    }
    const size_t qrow = ldq * dtype_size(qt);  // bytes per query row
    for (size_t j = 0; j + 1 < rest.size(); j += 2) {
        const size_t a = rest[j], b = rest[j + 1];
        const Exclusions sub{excl.indptr ? excl.indptr + a : nullptr, excl.indices};  // ex_sorted: same offsets
        plain_search(static_cast<const char*>(Q) + a * qrow, qt, b - a, ldq, d, segments, metric, k, sub, ex_sorted,
                     scores + a * k, ids + a * k, num_threads);
    }
}

namespace {

void plain_search(const void* Q, DType qt, size_t nq, size_t ldq, size_t d, const std::vector<Segment>& segments,
                  Metric metric, size_t k, const Exclusions& excl, const std::vector<int64_t>& ex_sorted,
                  float* scores, int64_t* ids, int num_threads) {
    using namespace detail;
    size_t total = 0;
    for (const Segment& s : segments) total += s.rows;
    // Corpus blocks over all segments.
    std::vector<Block> blocks;
    size_t nb_max = 0;
    for (const Segment& s : segments) {
        size_t nb = block_rows(d, s.dtype);
        nb_max = std::max(nb_max, nb);
        for (size_t r = 0; r < s.rows; r += nb) blocks.push_back(Block{&s, r, std::min(s.rows, r + nb)});
    }
    // Fewer threads for small problems (thread start-up would dominate).
    int nt = std::max(1, num_threads);
    if (double(nq) * double(total) * double(d) < 4e6) nt = 1;

    // Buffer capacity: a compaction (a pass over cap keys) runs every cap - k insertions or so.
    const size_t cap = std::min(2 * k + 32, std::max<size_t>(total, 1) + 1);
    size_t panel = kBufferBudget / (size_t(nt) * cap * sizeof(Cand));
    panel = std::max<size_t>(1, std::min({panel, kMaxPanel, nq}));
    Search S{kernels(), Q, qt, ldq, d, k, cap, metric, excl, ex_sorted, blocks, nb_max, (d + 15) / 16 * 16};

    size_t npanels = (nq + panel - 1) / panel;
    if (npanels >= size_t(2 * nt) && npanels % size_t(nt) != 0) {
        // equal panels, a multiple of the thread count: no thread idles at the end
        npanels = (npanels + nt - 1) / nt * nt;
        panel = (nq + npanels - 1) / npanels;
        npanels = (nq + panel - 1) / panel;
    }
    if (npanels >= size_t(2 * nt) || nt == 1) {
        // Many queries: threads take whole query panels and sweep the corpus;
        // no cross-thread merge, and each query keeps one buffer.
        std::vector<std::unique_ptr<Panel>> state(nt);
        parallel_for(npanels, nt, 1, [&](size_t b0, size_t b1, int tid) {
            if (!state[tid]) state[tid].reset(new Panel(S, panel));
            Panel& pn = *state[tid];
            std::vector<Cand> merged;
            std::vector<Panel*> parts{&pn};
            for (size_t p = b0; p < b1; ++p) {
                pn.load_queries(S, p * panel, std::min(panel, nq - p * panel));
                for (const Block& blk : blocks) pn.process(S, pn.q.data(), pn.qn.data(), blk);
                for (size_t i = 0; i < pn.P; ++i) write_results(S, parts, i, merged, scores, ids);
            }
        });
        return;
    }
    // Few queries: threads split the corpus blocks of each panel, then the
    // per-thread candidates of each query are merged.
    nt = (int)std::min<size_t>((size_t)nt, std::max<size_t>(1, blocks.size()));
    Panel shared(S, panel);  // the panel's queries, read by every thread
    std::vector<std::unique_ptr<Panel>> state(nt);
    std::vector<Panel*> parts(nt);
    for (int t = 0; t < nt; ++t) {
        state[t].reset(new Panel(S, panel));
        parts[t] = state[t].get();
    }
    for (size_t q0 = 0; q0 < nq; q0 += panel) {
        const size_t P = std::min(panel, nq - q0);
        shared.load_queries(S, q0, P);
        for (auto& st : state) {
            st->q0 = q0;
            st->P = P;
            st->reset(S);
        }
        parallel_for(blocks.size(), nt, 1, [&](size_t b0, size_t b1, int tid) {
            for (size_t b = b0; b < b1; ++b) state[tid]->process(S, shared.q.data(), shared.qn.data(), blocks[b]);
        });
        // merge + sort the threads' candidates, queries split over the threads
        parallel_for(P, P * k >= 4096 ? nt : 1, 1, [&](size_t i0, size_t i1, int) {
            std::vector<Cand> merged;
            for (size_t i = i0; i < i1; ++i) write_results(S, parts, i, merged, scores, ids);
        });
    }
}

}  // namespace

void merge_topk(const std::vector<const float*>& part_scores, const std::vector<const int64_t*>& part_ids,
                const std::vector<size_t>& part_k, size_t nq, bool smallest_first, size_t k,
                float* scores, int64_t* ids, int num_threads) {
    const float pad = smallest_first ? std::numeric_limits<float>::infinity()
                                     : -std::numeric_limits<float>::infinity();
    parallel_for(nq, nq * k > 100000 ? num_threads : 1, 256, [&](size_t b, size_t e, int) {
        std::vector<std::pair<float, int64_t>> c;
        auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        };
        for (size_t i = b; i < e; ++i) {
            c.clear();
            for (size_t p = 0; p < part_scores.size(); ++p)
                for (size_t r = 0; r < part_k[p]; ++r) {
                    int64_t id = part_ids[p][i * part_k[p] + r];
                    if (id < 0) continue;
                    float s = part_scores[p][i * part_k[p] + r];
                    c.emplace_back(smallest_first ? -s : s, id);
                }
            size_t m = std::min(k, c.size());
            if (c.size() > m) std::nth_element(c.begin(), c.begin() + (m - 1), c.end(), better);
            std::sort(c.begin(), c.begin() + m, better);
            for (size_t r = 0; r < m; ++r) {
                scores[i * k + r] = smallest_first ? -c[r].first : c[r].first;
                ids[i * k + r] = c[r].second;
            }
            for (size_t r = m; r < k; ++r) {
                scores[i * k + r] = pad;
                ids[i * k + r] = -1;
            }
        }
    });
}

}  // namespace hn
