// Metric kernels: see metrics.h for the data layout.  The hot loop is the row
// scan in evaluate_ids (one pass over the retrieved ids of a query).
#include "metrics.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "threads.h"

namespace hn {

namespace {

// Positive judgements sorted descending: the ideal ranking of nDCG.
void ideal_gains(const int32_t* rels, size_t n, std::vector<int32_t>& g) {
    g.clear();
    for (size_t i = 0; i < n; ++i)
        if (rels[i] > 0) g.push_back(rels[i]);
    std::sort(g.begin(), g.end(), [](int32_t a, int32_t b) { return a > b; });
}

inline bool within(int64_t rank, int64_t k) { return k <= 0 || rank <= k; }

[[noreturn]] void bad_id(size_t row, int64_t v, int64_t n_codes) {
    throw std::invalid_argument("ids row " + std::to_string(row) + " holds " + std::to_string(v) +
                                ", outside [-1, " + std::to_string(n_codes) + ")");
}

}  // namespace

void score_query(const JudgedHit* hits, size_t n_hits, const int32_t* rels, size_t n_rels,
                 int32_t level, const MetricSpec* specs, size_t n_specs, double* out) {
    int64_t num_rel = 0;
    for (size_t i = 0; i < n_rels; ++i) num_rel += rels[i] >= level;
    thread_local std::vector<int32_t> ideal;
    bool have_ideal = false;

    for (size_t m = 0; m < n_specs; ++m) {
        const int64_t k = specs[m].k;
        double v = 0.0;
        switch (specs[m].kind) {
            case MetricKind::NDCG: {
                // linear gain, log2(rank + 1) discount (trec_eval ndcg_cut)
                if (!have_ideal) ideal_gains(rels, n_rels, ideal), have_ideal = true;
                double dcg = 0.0, idcg = 0.0;
                for (size_t h = 0; h < n_hits && within(hits[h].rank, k); ++h)
                    if (hits[h].rel > 0) dcg += hits[h].rel / std::log2(double(hits[h].rank + 1));
                const size_t ni = k <= 0 ? ideal.size() : std::min<size_t>(ideal.size(), size_t(k));
                for (size_t i = 0; i < ni; ++i) idcg += ideal[i] / std::log2(double(i + 2));
                v = idcg > 0.0 ? dcg / idcg : 0.0;
                break;
            }
            case MetricKind::RecipRank:
                for (size_t h = 0; h < n_hits && within(hits[h].rank, k); ++h)
                    if (hits[h].rel >= level) {
                        v = 1.0 / double(hits[h].rank);
                        break;
                    }
                break;
            case MetricKind::Recall:
            case MetricKind::Precision:
            case MetricKind::Hits:
            case MetricKind::HitCount:
            case MetricKind::RPrec: {
                const int64_t cut = specs[m].kind == MetricKind::RPrec ? num_rel : k;
                if (specs[m].kind == MetricKind::RPrec && num_rel == 0) break;
                int64_t c = 0;
                for (size_t h = 0; h < n_hits && within(hits[h].rank, cut); ++h) c += hits[h].rel >= level;
                if (specs[m].kind == MetricKind::Recall) v = num_rel ? double(c) / double(num_rel) : 0.0;
                else if (specs[m].kind == MetricKind::Hits) v = c > 0 ? 1.0 : 0.0;
                else if (specs[m].kind == MetricKind::HitCount) v = double(c);
                else v = double(c) / double(cut);
                break;
            }
            case MetricKind::AP: {
                if (num_rel == 0) break;
                int64_t c = 0;
                double s = 0.0;
                for (size_t h = 0; h < n_hits && within(hits[h].rank, k); ++h)
                    if (hits[h].rel >= level) s += double(++c) / double(hits[h].rank);
                v = s / double(num_rel);
                break;
            }
        }
        out[m] = v;
    }
}

bool docno_greater(std::string_view a, std::string_view b) {
    const int c = std::memcmp(a.data(), b.data(), std::min(a.size(), b.size()));
    return c != 0 ? c > 0 : a.size() > b.size();
}

// One pass over the scores.  An entry with a higher score than found[p] is
// ordered before found[p..] (a suffix): counted in diff[p].  Entries whose score
// equals a found score are counted per group of equal found scores; only when
// some entry other than the found documents themselves ties are docnos compared.
void trec_ranks(std::vector<FoundDoc>& found, const float* scores, size_t n,
                const std::function<std::string_view(size_t)>& docno_at, std::vector<JudgedHit>& out) {
    // trec_eval order among the found documents (score desc, docno desc)
    std::sort(found.begin(), found.end(), [](const FoundDoc& a, const FoundDoc& c) {
        return a.score != c.score ? a.score > c.score : docno_greater(a.docno, c.docno);
    });
    const size_t nf = found.size();
    if (nf == 0) return;
    std::vector<int64_t> diff(nf + 1, 0), ties(nf, 0);
    std::vector<size_t> group(nf);  // first found document with the same score
    for (size_t p = 0; p < nf; ++p) group[p] = (p > 0 && found[p - 1].score == found[p].score) ? group[p - 1] : p;
    for (size_t j = 0; j < n; ++j) {  // the hot loop: one binary search per run entry
        const float s = scores[j];
        size_t lo = 0, hi = nf;  // first p with found[p].score < s
        while (lo < hi) {
            const size_t mid = (lo + hi) / 2;
            if (found[mid].score < s) hi = mid;
            else lo = mid + 1;
        }
        diff[lo]++;
        if (lo > 0 && found[lo - 1].score == s) ties[group[lo - 1]]++;
    }
    int64_t acc = 0;
    for (size_t p = 0; p < nf; ++p) {
        acc += diff[p];
        const size_t g = group[p];
        size_t ge = g;
        while (ge < nf && group[ge] == g) ++ge;
        int64_t within;
        if (ties[g] == int64_t(ge - g)) {
            within = int64_t(p - g);  // only the found documents tie: docno order among them
        } else {
            within = 0;  // other entries tie too: compare docnos (rare)
            for (size_t j = 0; j < n; ++j)
                if (scores[j] == found[p].score) within += docno_greater(docno_at(j), found[p].docno);
        }
        out.push_back({1 + acc + within, found[p].rel});
    }
}

void evaluate_hits(size_t nq, const int64_t* hit_indptr, const JudgedHit* hits,
                   const int64_t* row_query, const QrelsCSR& qrels, int32_t level,
                   const MetricSpec* specs, size_t n_specs, double* out, int num_threads) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    parallel_for(nq, num_threads, 256, [&](size_t b, size_t e, int) {
        std::vector<double> tmp(n_specs);
        for (size_t i = b; i < e; ++i) {
            const int64_t t = row_query[i];
            if (t < 0) {
                for (size_t m = 0; m < n_specs; ++m) out[m * nq + i] = nan;
                continue;
            }
            const int64_t rb = qrels.indptr[t], re = qrels.indptr[t + 1];
            score_query(hits + hit_indptr[i], size_t(hit_indptr[i + 1] - hit_indptr[i]), qrels.rels + rb,
                        size_t(re - rb), level, specs, n_specs, tmp.data());
            for (size_t m = 0; m < n_specs; ++m) out[m * nq + i] = tmp[m];
        }
    });
}

void evaluate_ids(const int64_t* ids, size_t nq, size_t k, size_t ld, int64_t n_codes,
                  const int64_t* row_query, const QrelsCSR& qrels, int32_t level,
                  const MetricSpec* specs, size_t n_specs, double* out, int num_threads) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const size_t words = size_t(n_codes + 63) / 64;
    // deepest rank any metric looks at (R-precision: the query's number of relevant)
    int64_t max_rank = 0;
    bool needs_rprec = false;
    for (size_t m = 0; m < n_specs; ++m) {
        if (specs[m].kind == MetricKind::RPrec) needs_rprec = true;
        else if (specs[m].k <= 0) max_rank = std::numeric_limits<int64_t>::max();
        else max_rank = std::max(max_rank, specs[m].k);
    }
    std::vector<std::vector<uint64_t>> seen_of(std::max(1, num_threads));
    parallel_for(nq, num_threads, 64, [&](size_t b, size_t e, int tid) {
        // Per thread: a bitset over all codes marks the ids already seen in the
        // current row (repeats are skipped; cleared after each row), and a 4096-bit
        // filter hashes the judged codes of the current query so most ids skip the
        // binary search.
        std::vector<uint64_t>& seen = seen_of[tid];
        if (seen.size() != words) seen.assign(words, 0);
        uint64_t filt[64] = {0};
        std::vector<JudgedHit> hits;
        std::vector<double> tmp(n_specs);
        auto fh = [](int64_t c) { return uint32_t((uint64_t(c) * 0x9E3779B97F4A7C15ull) >> 52); };

        for (size_t i = b; i < e; ++i) {
            const int64_t* row = ids + i * ld;
            // ids must lie in [-1, n_codes): checked in the scan, and over the rest of
            // the row by check_tail (so an early exit does not skip the check)
            auto check_tail = [&](size_t from) {
                int64_t lo = 0, hi = -1;
                for (size_t jj = from; jj < k; ++jj) {
                    lo = std::min(lo, row[jj]);
                    hi = std::max(hi, row[jj]);
                }
                if (lo < -1 || hi >= n_codes) bad_id(i, lo < -1 ? lo : hi, n_codes);
            };
            const int64_t t = row_query[i];
            if (t < 0) {
                check_tail(0);
                for (size_t m = 0; m < n_specs; ++m) out[m * nq + i] = nan;
                continue;
            }
            const int64_t qb = qrels.indptr[t], qe = qrels.indptr[t + 1];
            const int64_t* codes = qrels.codes;
            // judged documents that can change a metric: relevant, or positive gain
            size_t need = 0;
            int64_t num_rel = 0;
            for (int64_t j = qb; j < qe; ++j) num_rel += qrels.rels[j] >= level;
            const int64_t stop = needs_rprec ? std::max(max_rank, num_rel) : max_rank;
            for (int64_t j = qb; j < qe; ++j)
                if (codes[j] >= 0 && (qrels.rels[j] > 0 || qrels.rels[j] >= level)) {
                    ++need;
                    const uint32_t h = fh(codes[j]);
                    filt[h >> 6] |= uint64_t(1) << (h & 63);
                }
            hits.clear();
            size_t j = 0;
            if (need > 0) {
                int64_t rank = 0;
                size_t found = 0;
                // ---- hot loop: one pass over the ranking ----
                // (locals instead of captured references, so nothing is reloaded per id)
                uint64_t* const sp = seen.data();
                const uint64_t wmax = words ? words - 1 : 0;
                const uint64_t ncodes = uint64_t(n_codes);
                const size_t kk = k;
                const int64_t stop_rank = stop;
                for (; j < kk; ++j) {
                    const int64_t c = row[j];
                    if (j + 16 < kk)  // the bitset word of a later id
                        __builtin_prefetch(sp + std::min<uint64_t>(uint64_t(row[j + 16]) >> 6, wmax), 1);
                    if (uint64_t(c) + 1 > ncodes) {  // c < -1 or c >= n_codes (no signed c + 1 overflow): clean up, throw
                        for (size_t jj = 0; jj < j; ++jj)
                            if (row[jj] >= 0) sp[row[jj] >> 6] = 0;
                        for (int64_t q = qb; q < qe; ++q)
                            if (codes[q] >= 0) filt[fh(codes[q]) >> 6] = 0;
                        bad_id(i, c, n_codes);
                    }
                    if (c < 0) continue;
                    const uint64_t bit = uint64_t(1) << (c & 63);
                    const uint64_t word = sp[c >> 6];
                    if (word & bit) continue;  // repeated id: skipped
                    if (rank == stop_rank) break;  // deeper than any metric looks
                    sp[c >> 6] = word | bit;
                    ++rank;
                    const uint32_t h = fh(c);
                    if (!(filt[h >> 6] & (uint64_t(1) << (h & 63)))) continue;
                    const int64_t* p = std::lower_bound(codes + qb, codes + qe, c);
                    if (p == codes + qe || *p != c) continue;
                    const int32_t rel = qrels.rels[p - codes];
                    if (!(rel > 0 || rel >= level)) continue;
                    hits.push_back({rank, rel});
                    if (++found == need) {  // every useful judged doc found: the rest cannot matter
                        ++j;
                        break;
                    }
                }
                for (size_t jj = 0; jj < j; ++jj)
                    if (row[jj] >= 0) seen[row[jj] >> 6] = 0;
                for (int64_t q = qb; q < qe; ++q)
                    if (codes[q] >= 0) filt[fh(codes[q]) >> 6] = 0;
            }
            check_tail(j);
            score_query(hits.data(), hits.size(), qrels.rels + qb, size_t(qe - qb), level, specs, n_specs,
                        tmp.data());
            for (size_t m = 0; m < n_specs; ++m) out[m * nq + i] = tmp[m];
        }
    });
}

// ---------------------------------------------------------------------------
void fuse_ids(const FuseRun* runs, size_t n_runs, size_t nq, FuseMethod method, FuseNorm norm,
              double rrf_k, size_t depth, float* out_scores, int64_t* out_ids, int num_threads) {
    size_t total = 0;
    for (size_t r = 0; r < n_runs; ++r) total += runs[r].k;
    size_t cap = 16;
    while (cap < 2 * total) cap <<= 1;
    parallel_for(nq, num_threads, 32, [&](size_t b, size_t e, int) {
        // Open-addressing table id -> slot of `fused`, reset per row by a stamp.
        std::vector<int64_t> tkey(cap);
        std::vector<uint32_t> tstamp(cap, 0), tval(cap);
        uint32_t stamp = 0;
        struct Fused {
            int64_t id;
            double sum;
            int32_t count, last_run;
        };
        std::vector<Fused> fused;
        std::vector<std::pair<uint32_t, double>> cur;  // (slot, score) of this run, first occurrences
        std::vector<uint32_t> order;
        for (size_t i = b; i < e; ++i) {
            if (++stamp == 0) {  // wrapped: clear
                std::fill(tstamp.begin(), tstamp.end(), 0);
                stamp = 1;
            }
            fused.clear();
            for (size_t r = 0; r < n_runs; ++r) {
                const FuseRun& R = runs[r];
                const int64_t* row = R.ids + i * R.k;
                const float* srow = R.scores ? R.scores + i * R.k : nullptr;
                cur.clear();
                for (size_t j = 0; j < R.k; ++j) {
                    const int64_t id = row[j];
                    if (id < 0) continue;
                    size_t h = size_t((uint64_t(id) * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
                    while (tstamp[h] == stamp && tkey[h] != id) h = (h + 1) & (cap - 1);
                    uint32_t f;
                    if (tstamp[h] != stamp) {
                        tstamp[h] = stamp;
                        tkey[h] = id;
                        tval[h] = f = uint32_t(fused.size());
                        fused.push_back({id, 0.0, 0, -1});
                    } else {
                        f = tval[h];
                    }
                    if (fused[f].last_run == int32_t(r)) continue;  // repeated in this run: skipped
                    fused[f].last_run = int32_t(r);
                    cur.push_back({f, srow ? double(srow[j]) : 0.0});
                }
                const size_t n = cur.size();
                if (method == FuseMethod::RRF) {
                    for (size_t j = 0; j < n; ++j) {
                        fused[cur[j].first].sum += R.weight / (rrf_k + double(j + 1));
                        fused[cur[j].first].count++;
                    }
                    continue;
                }
                double a = 0.0, s = 1.0;  // normalised = (v - a) / s
                if (n > 0 && norm == FuseNorm::MinMax) {
                    double lo = cur[0].second, hi = cur[0].second;
                    for (auto& x : cur) lo = std::min(lo, x.second), hi = std::max(hi, x.second);
                    if (hi > lo) a = lo, s = hi - lo;
                    else a = lo - 1.0, s = 1.0;  // constant scores -> 1
                } else if (n > 0 && norm == FuseNorm::ZScore) {
                    double mean = 0.0, var = 0.0;
                    for (auto& x : cur) mean += x.second;
                    mean /= double(n);
                    for (auto& x : cur) var += (x.second - mean) * (x.second - mean);
                    var /= double(n);
                    a = mean;
                    s = var > 0.0 ? std::sqrt(var) : std::numeric_limits<double>::infinity();  // constant -> 0
                }
                for (auto& x : cur) {
                    fused[x.first].sum += R.weight * ((x.second - a) / s);
                    fused[x.first].count++;
                }
            }
            if (method == FuseMethod::CombMNZ)
                for (auto& f : fused) f.sum *= double(f.count);
            // Finite inputs can still overflow (huge weights: inf - inf = NaN); a NaN
            // would break the strict weak order the sort below relies on.
            for (auto& f : fused)
                if (std::isnan(f.sum))
                    throw std::invalid_argument("fused score of id " + std::to_string(f.id) +
                                                " is NaN (weights or scores overflow)");
            const size_t keep = std::min(depth, fused.size());
            order.resize(fused.size());
            for (size_t j = 0; j < order.size(); ++j) order[j] = uint32_t(j);
            auto better = [&](uint32_t x, uint32_t y) {
                return fused[x].sum > fused[y].sum || (fused[x].sum == fused[y].sum && fused[x].id < fused[y].id);
            };
            if (keep < order.size()) std::nth_element(order.begin(), order.begin() + keep, order.end(), better);
            std::sort(order.begin(), order.begin() + keep, better);
            for (size_t j = 0; j < depth; ++j) {
                out_scores[i * depth + j] =
                    j < keep ? float(fused[order[j]].sum) : -std::numeric_limits<float>::infinity();
                out_ids[i * depth + j] = j < keep ? fused[order[j]].id : -1;
            }
        }
    });
}

}  // namespace hn
