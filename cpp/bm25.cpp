// BM25 tokeniser, inverted index and search.  See bm25.h for the layout.
#include "bm25.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <functional>
#include <limits>
#include <stdexcept>

#include "threads.h"
#include "unicode_tables.h"

namespace hn {
namespace bm25 {

// ------------------------------------------------------------------ formulas
// The five variants exactly as bm25s 0.3 defines them (shared/reference/bm25.md).
double idf(const Params& p, double df, double n) {
    switch (p.method) {
        case Method::Robertson: {
            double inner = (n - df + 0.5) / (df + 0.5);
            return std::log(inner < 1.0 ? 1.0 : inner);
        }
        case Method::Lucene: return std::log(1.0 + (n - df + 0.5) / (df + 0.5));
        case Method::Atire: return std::log(n / df);
        case Method::BM25L: return std::log((n + 1.0) / (df + 0.5));
        case Method::BM25Plus: return std::log((n + 1.0) / df);
    }
    return 0;
}

double tf_part(const Params& p, double tf, double B) {
    const double k1 = p.k1, d = p.delta;
    switch (p.method) {
        case Method::Robertson:
        case Method::Lucene: return tf / (k1 * B + tf);
        case Method::Atire: return (tf * (k1 + 1.0)) / (tf + k1 * B);
        case Method::BM25L: {
            const double c = tf / B;
            return ((k1 + 1.0) * (c + d)) / (k1 + c + d);
        }
        case Method::BM25Plus: return ((k1 + 1.0) * tf) / (k1 * B + tf) + d;
    }
    return 0;
}

double tf_part_zero(const Params& p) {
    if (p.method == Method::BM25L) return ((p.k1 + 1.0) * p.delta) / (p.k1 + p.delta);
    if (p.method == Method::BM25Plus) return p.delta;
    return 0.0;
}

// ----------------------------------------------------------------- tokeniser
namespace {

bool is_word_cp(uint32_t cp) {
    if (cp < 128) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    int lo = 0, hi = unicode::kNumWordRanges - 1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (cp < unicode::kWordRanges[mid][0]) hi = mid - 1;
        else if (cp > unicode::kWordRanges[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

uint32_t lower_cp(uint32_t cp) {
    if (cp < 128) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    int lo = 0, hi = unicode::kNumLower - 1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (cp < unicode::kLower[mid][0]) hi = mid - 1;
        else if (cp > unicode::kLower[mid][0]) lo = mid + 1;
        else return unicode::kLower[mid][1];
    }
    return cp;
}

// Decodes one code point at s[i]; returns its byte length (>= 1).  Invalid or
// truncated sequences, overlongs and surrogates decode as one byte of U+FFFD.
inline size_t decode(const unsigned char* s, size_t n, size_t i, uint32_t& cp) {
    const unsigned c = s[i];
    if (c < 0x80) { cp = c; return 1; }
    cp = 0xFFFD;
    if (c < 0xC2 || c > 0xF4) return 1;
    size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i + len > n) return 1;
    uint32_t v = c & (0xFF >> (len + 1));
    for (size_t j = 1; j < len; ++j) {
        const unsigned cc = s[i + j];
        if ((cc & 0xC0) != 0x80) return 1;
        v = (v << 6) | (cc & 0x3F);
    }
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v < 0xE000))
        return 1;
    cp = v;
    return len;
}

inline void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out.push_back(char(cp));
    else if (cp < 0x800) {
        out.push_back(char(0xC0 | (cp >> 6)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(char(0xE0 | (cp >> 12)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (cp >> 18)));
        out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    }
}

// ASCII word characters -> their lowercase, 0 for separators.
struct AsciiTable {
    unsigned char t[128];
    AsciiTable() {
        for (int c = 0; c < 128; ++c) {
            const bool w = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
            t[c] = w ? (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c) : 0;
        }
    }
    unsigned char operator[](unsigned c) const { return t[c]; }
};
const AsciiTable kAsciiWord;

// Calls emit(word) for every maximal run of 2+ word characters, lowercased
// like Python's str.lower() (including U+0130 and the final sigma).
template <class F>
void for_each_token(std::string_view text, std::string& buf, F&& emit) {
    const unsigned char* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    size_t i = 0, nchars = 0;
    buf.clear();
    while (i < n) {
        const unsigned c = s[i];
        if (c < 0x80) {  // ASCII fast path: a whole run of ASCII word characters at once
            if (kAsciiWord[c]) {
                size_t j = i;
                while (j < n && s[j] < 0x80 && kAsciiWord[s[j]]) ++j;
                const size_t old = buf.size();
                buf.resize(old + (j - i));
                for (size_t r = i; r < j; ++r) buf[old + (r - i)] = char(kAsciiWord[s[r]]);
                nchars += j - i;
                i = j;
                continue;
            } else {
                if (nchars >= 2) emit(buf);
                buf.clear();
                nchars = 0;
            }
            ++i;
            continue;
        }
        uint32_t cp;
        const size_t len = decode(s, n, i, cp);
        if (is_word_cp(cp)) {
            if (cp == 0x130) {  // 'İ' -> "i" + combining dot above
                buf.push_back('i');
                append_utf8(buf, 0x307);
            } else if (cp == 0x3A3) {  // 'Σ': final sigma after a word character, before a non-word one
                uint32_t next = 0;
                const bool at_end = i + len >= n;
                if (!at_end) decode(s, n, i + len, next);
                append_utf8(buf, (nchars > 0 && (at_end || !is_word_cp(next))) ? 0x3C2 : 0x3C3);
            } else {
                append_utf8(buf, lower_cp(cp));
            }
            ++nchars;
        } else {
            if (nchars >= 2) emit(buf);
            buf.clear();
            nchars = 0;
        }
        i += len;
    }
    if (nchars >= 2) emit(buf);
}

inline uint64_t hash_bytes(const char* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        std::memcpy(&v, p, 8);
        h = (h ^ v) * 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

// Open-addressing string -> id table with the strings in one arena.  A slot
// holds the hash's high half next to id + 1 (0 = empty), so a probe touches
// one slot and, on a hash match, the string itself.
struct WordTable {
    std::vector<char> arena;
    std::vector<uint64_t> starts{0};
    std::vector<uint64_t> hashes;
    std::vector<uint64_t> slots = std::vector<uint64_t>(1024, 0);

    size_t size() const { return hashes.size(); }
    std::string_view word(size_t i) const { return {arena.data() + starts[i], size_t(starts[i + 1] - starts[i])}; }

    uint32_t find_or_add(const std::string& w) {
        const uint64_t h = hash_bytes(w.data(), w.size());
        const uint64_t tag = h & 0xFFFFFFFF00000000ull;
        size_t mask = slots.size() - 1, pos = h & mask;
        for (;;) {
            const uint64_t sl = slots[pos];
            if (sl == 0) break;
            if ((sl & 0xFFFFFFFF00000000ull) == tag) {
                const uint32_t id = uint32_t(sl) - 1;
                if (starts[id + 1] - starts[id] == w.size() &&
                    std::memcmp(arena.data() + starts[id], w.data(), w.size()) == 0)
                    return id;
            }
            pos = (pos + 1) & mask;
        }
        const uint32_t id = uint32_t(hashes.size());
        arena.insert(arena.end(), w.begin(), w.end());
        starts.push_back(arena.size());
        hashes.push_back(h);
        slots[pos] = tag | (uint64_t(id) + 1);
        if (hashes.size() * 2 > slots.size()) grow();
        return id;
    }

    void grow() {
        std::vector<uint64_t> ns(slots.size() * 2, 0);
        const size_t mask = ns.size() - 1;
        for (uint32_t id = 0; id < hashes.size(); ++id) {
            size_t pos = hashes[id] & mask;
            while (ns[pos]) pos = (pos + 1) & mask;
            ns[pos] = (hashes[id] & 0xFFFFFFFF00000000ull) | (uint64_t(id) + 1);
        }
        slots.swap(ns);
    }
};

}  // namespace

void tokenize_text(std::string_view text, std::vector<std::string>& out) {
    std::string buf;
    for_each_token(text, buf, [&](const std::string& w) { out.push_back(w); });
}

TokenBatch tokenize_batch(const std::vector<std::string_view>& texts, int num_threads) {
    const size_t n = texts.size();
    TokenBatch out;
    out.offsets.assign(n + 1, 0);
    if (n == 0) return out;
    // Chunks of texts, each with its own word table; merged afterwards.
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), n));
    const size_t nch = std::min(n, nt * 4);
    std::vector<WordTable> tables(nch);
    std::vector<std::vector<uint32_t>> toks(nch);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        std::string buf;
        for (size_t c = cb; c < ce; ++c) {
            const size_t b = n * c / nch, e = n * (c + 1) / nch;
            WordTable& tab = tables[c];
            std::vector<uint32_t>& tk = toks[c];
            for (size_t i = b; i < e; ++i) {
                for_each_token(texts[i], buf, [&](const std::string& w) { tk.push_back(tab.find_or_add(w)); });
                out.offsets[i + 1] = tk.size();  // local count, made global below
            }
        }
    });
    // Merge the chunk vocabularies (serial over distinct words per chunk).
    WordTable global;
    std::vector<std::vector<uint32_t>> remap(nch);
    std::string tmp;
    for (size_t c = 0; c < nch; ++c) {
        remap[c].resize(tables[c].size());
        for (size_t w = 0; w < tables[c].size(); ++w) {
            tmp.assign(tables[c].word(w));
            remap[c][w] = global.find_or_add(tmp);
        }
        std::vector<char>().swap(tables[c].arena);
    }
    std::vector<uint64_t> chunk_start(nch + 1, 0);
    for (size_t c = 0; c < nch; ++c) chunk_start[c + 1] = chunk_start[c] + toks[c].size();
    out.tokens.resize(chunk_start[nch]);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        for (size_t c = cb; c < ce; ++c) {
            const size_t b = n * c / nch, e = n * (c + 1) / nch;
            for (size_t i = b; i < e; ++i) out.offsets[i + 1] += chunk_start[c];
            const auto& rm = remap[c];
            uint32_t* dst = out.tokens.data() + chunk_start[c];
            for (size_t j = 0; j < toks[c].size(); ++j) dst[j] = rm[toks[c][j]];
            std::vector<uint32_t>().swap(toks[c]);
        }
    });
    out.words.reserve(global.size());
    for (size_t w = 0; w < global.size(); ++w) out.words.emplace_back(global.word(w));
    return out;
}

// --------------------------------------------------------------------- index
int64_t Index::term_id(const std::string& term, bool create) {
    auto it = term_ids.find(term);
    if (it != term_ids.end()) return it->second;
    if (!create) return -1;
    if (terms.size() >= 0xFFFFFFFEull) throw std::length_error("BM25 vocabulary exceeds 2^32 terms");
    const uint32_t id = uint32_t(terms.size());
    terms.push_back(term);
    term_ids.emplace(term, id);
    return id;
}

void Index::add_docs(const int64_t* tokens, const uint64_t* toffs, size_t ndocs, int num_threads) {
    if (ndocs == 0) return;
    const size_t n_old = num_docs();
    if (n_old + ndocs > 0xFFFFFFF0ull) throw std::length_error("BM25 supports at most 2^32 - 16 documents");
    const size_t V = terms.size(), V_old = num_terms();
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), ndocs));
    const size_t nch = nt;
    for (size_t i = 0; i < toffs[ndocs]; ++i)
        if (tokens[i] >= int64_t(V)) throw std::invalid_argument("token id outside the vocabulary");

    // Pass 1, per chunk of documents: (term, tf) pairs of each document, its
    // length, and per-term posting counts of the chunk.
    std::vector<std::vector<uint32_t>> pt(nch), ptf(nch), cnt(nch);
    std::vector<uint32_t> npairs(ndocs), new_len(ndocs);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        // Term counts without sorting: last[t] = the document that last saw t,
        // pos[t] = where its pair sits in this chunk's output.
        std::vector<uint32_t> last(V, UINT32_MAX);
        std::vector<uint64_t> pos(V);
        for (size_t c = cb; c < ce; ++c) {
            cnt[c].assign(V, 0);
            const size_t b = ndocs * c / nch, e = ndocs * (c + 1) / nch;
            for (size_t d = b; d < e; ++d) {
                uint64_t len = 0;
                uint32_t np = 0;
                for (uint64_t j = toffs[d]; j < toffs[d + 1]; ++j) {
                    if (tokens[j] < 0) continue;
                    const uint32_t t = uint32_t(tokens[j]);
                    ++len;
                    if (last[t] != uint32_t(d)) {
                        last[t] = uint32_t(d);
                        pos[t] = pt[c].size();
                        pt[c].push_back(t);
                        ptf[c].push_back(1);
                        ++cnt[c][t];
                        ++np;
                    } else {
                        ++ptf[c][pos[t]];
                    }
                }
                if (len > 0xFFFFFFFFull) throw std::length_error("document too long");
                new_len[d] = uint32_t(len);
                npairs[d] = np;
            }
        }
    });
    // Per term: new postings count; cnt becomes each chunk's start within the term's new range.
    std::vector<int64_t> new_cnt(V, 0);
    parallel_ranges(V, int(nt), [&](size_t b, size_t e, int) {
        for (size_t t = b; t < e; ++t) {
            uint32_t run = 0;
            for (size_t c = 0; c < nch; ++c) {
                const uint32_t x = cnt[c][t];
                cnt[c][t] = run;
                run += x;
            }
            new_cnt[t] = run;
        }
    });
    // Merged offsets: old postings of each term, then the new ones (higher ids).
    std::vector<int64_t> off(V + 1, 0);
    const int64_t* old_off = offsets.data();
    for (size_t t = 0; t < V; ++t) {
        const int64_t old_n = t < V_old ? old_off[t + 1] - old_off[t] : 0;
        off[t + 1] = off[t] + old_n + new_cnt[t];
    }
    const size_t P = size_t(off[V]);
    std::vector<uint32_t> nd(P), ntf(P);
    const uint32_t* od = docs.data();
    const uint32_t* otf = tfs.data();
    parallel_ranges(V_old, int(nt), [&](size_t b, size_t e, int) {
        for (size_t t = b; t < e; ++t) {
            const int64_t ob = old_off[t], oe = old_off[t + 1];
            std::memcpy(nd.data() + off[t], od + ob, sizeof(uint32_t) * size_t(oe - ob));
            std::memcpy(ntf.data() + off[t], otf + ob, sizeof(uint32_t) * size_t(oe - ob));
        }
    });
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        for (size_t c = cb; c < ce; ++c) {
            const size_t b = ndocs * c / nch, e = ndocs * (c + 1) / nch;
            size_t j = 0;
            for (size_t d = b; d < e; ++d) {
                const uint32_t gid = uint32_t(n_old + d);
                for (uint32_t r = 0; r < npairs[d]; ++r, ++j) {
                    const uint32_t t = pt[c][j];
                    const int64_t old_n = t < V_old ? old_off[t + 1] - old_off[t] : 0;
                    const size_t pos = size_t(off[t] + old_n + cnt[c][t]++);
                    nd[pos] = gid;
                    ntf[pos] = ptf[c][j];
                }
            }
        }
    });
    std::vector<uint32_t> lens(n_old + ndocs);
    if (n_old) std::memcpy(lens.data(), doc_len.data(), sizeof(uint32_t) * n_old);
    double added = 0;
    for (size_t d = 0; d < ndocs; ++d) {
        lens[n_old + d] = new_len[d];
        added += new_len[d];
    }
    offsets.set(std::move(off));
    docs.set(std::move(nd));
    tfs.set(std::move(ntf));
    doc_len.set(std::move(lens));
    total_len += added;
    recompute_impacts(num_threads);
}

void Index::recompute_impacts(int num_threads) {
    const size_t P = num_postings(), N = num_docs();
    std::vector<float> imp(P);
    const double lavg = avg_doc_len();
    const double b = params.b, z = tf_part_zero(params);
    const uint32_t* d = docs.data();
    const uint32_t* tf = tfs.data();
    const uint32_t* len = doc_len.data();
    parallel_for(P, num_threads, 1 << 16, [&](size_t lo, size_t hi, int) {
        for (size_t j = lo; j < hi; ++j) {
            if (d[j] >= N) throw std::invalid_argument("posting with a document id outside the corpus");  // before len[] access
            const double B = lavg > 0 ? (1.0 - b) + b * double(len[d[j]]) / lavg : 1.0;
            imp[j] = float(tf_part(params, double(tf[j]), B) - z);
        }
    });
    impacts.set(std::move(imp));
    compute_bounds(num_threads);
}

void Index::compute_bounds(int num_threads) {
    // Also checks the postings once (ids inside the corpus, strictly ascending per
    // term), so the search loops need no checks even on a loaded index.
    const size_t V = num_terms(), N = num_docs();
    std::vector<float> mx(V, 0.f);
    const int64_t* o = offsets.data();
    const float* imp = impacts.data();
    const uint32_t* d = docs.data();
    parallel_for(V, num_threads, 1024, [&](size_t b, size_t e, int) {
        for (size_t t = b; t < e; ++t) {
            float m = 0.f;
            uint32_t prev = 0;
            for (int64_t j = o[t]; j < o[t + 1]; ++j) {
                if (d[j] >= N || (j > o[t] && d[j] <= prev))
                    throw std::invalid_argument("postings must hold ascending document ids inside the corpus");
                prev = d[j];
                if (!(imp[j] >= 0.f && imp[j] <= 1e30f)) throw std::invalid_argument("impacts must be finite and >= 0");
                m = std::max(m, imp[j]);
            }
            mx[t] = m;
        }
    });
    max_impact.swap(mx);
}

void Index::validate_structure() const {
    const size_t V = num_terms(), P = num_postings();
    if (offsets.size() != terms.size() + 1) throw std::invalid_argument("offsets length does not match the vocabulary");
    if (tfs.size() != P || impacts.size() != P) throw std::invalid_argument("posting arrays differ in length");
    const int64_t* o = offsets.data();
    if (o[0] != 0 || o[V] != int64_t(P)) throw std::invalid_argument("offsets must start at 0 and end at the posting count");
    for (size_t t = 0; t < V; ++t)
        if (o[t + 1] < o[t]) throw std::invalid_argument("offsets must be non-decreasing");
    double tot = 0;
    const uint32_t* len = doc_len.data();
    for (size_t i = 0; i < num_docs(); ++i) tot += len[i];
    if (std::fabs(tot - total_len) > 0.5) throw std::invalid_argument("document lengths do not match the stored total");
}

// Unique query terms with weight count * idf and upper bound weight * max impact,
// in the canonical order (upper bound descending, then term id) in which every
// search path and score() add the contributions: results are bit-identical.
// base: the tf = 0 part that bm25l / bm25+ give every document.
void Index::query_terms(const Queries& q, size_t i, QueryTerms& out) const {
    out.t.clear();
    out.w.clear();
    out.ub.clear();
    out.base = 0;
    const double N = double(num_docs());
    const int64_t* o = offsets.data();
    const double z = tf_part_zero(params);
    const size_t V = num_terms();
    auto& tmp = out.tmp;
    tmp.clear();
    for (int64_t j = q.offsets[i]; j < q.offsets[i + 1]; ++j) {
        const int64_t t = q.terms[j];
        if (t < 0 || size_t(t) >= V || o[t + 1] == o[t]) continue;
        if (z != 0) out.base += float(idf(params, double(o[t + 1] - o[t]), N) * z);
        tmp.push_back(uint32_t(t));
    }
    std::sort(tmp.begin(), tmp.end());
    for (size_t j = 0; j < tmp.size();) {
        size_t r = j + 1;
        while (r < tmp.size() && tmp[r] == tmp[j]) ++r;
        const uint32_t t = tmp[j];
        const float w = float(double(r - j) * idf(params, double(o[t + 1] - o[t]), N));
        if (w > 0) {  // robertson / atire IDF of 0 adds nothing
            out.t.push_back(t);
            out.w.push_back(w);
            out.ub.push_back(w * max_impact[t]);
        }
        j = r;
    }
    auto& ord = out.ord;
    ord.resize(out.t.size());
    for (size_t a = 0; a < ord.size(); ++a) ord[a] = uint32_t(a);
    std::sort(ord.begin(), ord.end(), [&](uint32_t x, uint32_t y) {
        return out.ub[x] > out.ub[y] || (out.ub[x] == out.ub[y] && out.t[x] < out.t[y]);
    });
    auto& t2 = out.t2;
    auto& w2 = out.w2;
    auto& u2 = out.u2;
    t2.resize(ord.size());
    w2.resize(ord.size());
    u2.resize(ord.size());
    for (size_t a = 0; a < ord.size(); ++a) {
        t2[a] = out.t[ord[a]];
        w2[a] = out.w[ord[a]];
        u2[a] = out.ub[ord[a]];
    }
    out.t.swap(t2);
    out.w.swap(w2);
    out.ub.swap(u2);
}

namespace {

struct Hit {
    float s;
    uint32_t id;
};
// a ranks before b: higher score, then lower id.
inline bool better(const Hit& a, const Hit& b) { return a.s > b.s || (a.s == b.s && a.id < b.id); }
struct Better {
    bool operator()(const Hit& a, const Hit& b) const { return better(a, b); }
};

// Bounded heap of the k best hits; the worst is at the front.
struct TopK {
    std::vector<Hit> h;
    size_t k = 0;
    void reset(size_t kk) {
        h.clear();
        k = kk;
    }
    bool full() const { return h.size() >= k; }
    const Hit& worst() const { return h.front(); }
    void push(const Hit& x) {
        if (h.size() < k) {
            h.push_back(x);
            std::push_heap(h.begin(), h.end(), Better());
        } else if (better(x, h.front())) {
            std::pop_heap(h.begin(), h.end(), Better());
            h.back() = x;
            std::push_heap(h.begin(), h.end(), Better());
        }
    }
    void write(float* s, int64_t* ids) {
        std::sort(h.begin(), h.end(), Better());
        for (size_t r = 0; r < k; ++r) {
            if (r < h.size()) {
                s[r] = h[r].s;
                ids[r] = h[r].id;
            } else {
                s[r] = -std::numeric_limits<float>::infinity();
                ids[r] = -1;
            }
        }
    }
};

}  // namespace

namespace {

// First position in docs[p, e) holding an id >= d (galloping from p).
inline size_t seek(const uint32_t* docs, size_t p, size_t e, uint32_t d) {
    if (p >= e || docs[p] >= d) return p;
    size_t lo = p, step = 1;
    while (lo + step < e && docs[lo + step] < d) {
        lo += step;
        step <<= 1;
    }
    const size_t hi = std::min(lo + step, e);
    return size_t(std::lower_bound(docs + lo + 1, docs + hi, d) - docs);
}

struct Scratch {
    std::vector<float> acc;        // dense accumulator (exhaustive), zero between queries
    std::vector<uint32_t> touched; // documents whose accumulator became non-zero
    std::vector<uint32_t> ex;      // excluded ids of the query, sorted
    std::vector<Hit> cand;
    // MaxScore
    std::vector<size_t> pos, end;
    std::vector<double> cum;
    std::vector<float> cval, vals;
    std::vector<int32_t> bmax, vals_i;
    std::vector<uint32_t> seeds;
    std::vector<size_t> minlen;
    std::vector<std::pair<int32_t, uint32_t>> seedtmp;
    std::vector<uint32_t> cand_ids;
};

// Maxima of the float bits of acc over blocks of BL documents (full blocks only):
// bits of values >= 0 order like integers and the -inf of excluded documents is
// negative, so this is an integer max that vectorises.
template <size_t BL>
void block_maxima(const float* acc, size_t nblocks, int32_t* out) {
    for (size_t b = 0; b < nblocks; ++b) {
        const int32_t* a = reinterpret_cast<const int32_t*>(acc + b * BL);
        int32_t m = 0;
        for (size_t r = 0; r < BL; ++r) m = a[r] > m ? a[r] : m;
        out[b] = m;
    }
}

// The k best of a dense accumulator (acc > 0: a match; -inf: excluded).  Block
// maxima first (the float bits of values >= 0 order like integers, so this
// vectorises): the k-th largest block maximum is a lower bound of the k-th
// score, as each of those k blocks holds a document that high.  Only blocks
// above it are read, and their qualifying documents go to nth_element.
template <size_t BL>
void select_dense_bl(const float* acc, size_t N, size_t k, float base, Scratch& S, TopK& top) {
    const size_t nb = N / BL;
    S.bmax.resize(nb);
    block_maxima<BL>(acc, nb, S.bmax.data());
    float lo = 0.f;  // candidates: x > 0 and x >= lo
    S.vals_i.clear();
    for (size_t b = 0; b < nb; ++b)
        if (S.bmax[b] > 0) S.vals_i.push_back(S.bmax[b]);
    if (S.vals_i.size() >= k) {
        std::nth_element(S.vals_i.begin(), S.vals_i.begin() + (k - 1), S.vals_i.end(), std::greater<int32_t>());
        float th;
        std::memcpy(&th, &S.vals_i[k - 1], 4);
        // Margin so that a document tying the k-th score after adding `base` is kept.
        lo = std::max(0.f, th - (std::fabs(base) + th) * 4e-7f);
    }
    int32_t lo_i;
    std::memcpy(&lo_i, &lo, 4);
    S.cand.clear();
    for (size_t b = 0; b < nb; ++b) {
        if (S.bmax[b] <= 0 || S.bmax[b] < lo_i) continue;
        for (size_t r = b * BL; r < (b + 1) * BL; ++r) {
            const float x = acc[r];
            if (x > 0.f && x >= lo) S.cand.push_back(Hit{base + x, uint32_t(r)});
        }
    }
    for (size_t r = nb * BL; r < N; ++r) {
        const float x = acc[r];
        if (x > 0.f && x >= lo) S.cand.push_back(Hit{base + x, uint32_t(r)});
    }
    if (S.cand.size() > k) {
        std::nth_element(S.cand.begin(), S.cand.begin() + (k - 1), S.cand.end(), Better());
        S.cand.resize(k);
    }
    top.h.assign(S.cand.begin(), S.cand.end());
    std::make_heap(top.h.begin(), top.h.end(), Better());
}

// Blocks small enough that there are several times k of them.
void select_dense(const float* acc, size_t N, size_t k, float base, Scratch& S, TopK& top) {
    if (N >= 16 * 4 * k) return select_dense_bl<16>(acc, N, k, base, S, top);
    if (N >= 8 * 4 * k) return select_dense_bl<8>(acc, N, k, base, S, top);
    if (N >= 4 * 4 * k) return select_dense_bl<4>(acc, N, k, base, S, top);
    return select_dense_bl<2>(acc, N, k, base, S, top);
}

}  // namespace

void Index::search(const Queries& q, size_t k, const int64_t* excl_indptr, const int64_t* excl_indices,
                   int num_threads, float* out_scores, int64_t* out_ids) const {
    const size_t N = num_docs();
    if (N == 0) throw std::invalid_argument("the index is empty");
    if (max_impact.size() != num_terms()) throw std::logic_error("BM25 bounds are stale");
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), q.nq));
    const int64_t* off = offsets.data();
    const uint32_t* dd = docs.data();
    const float* imp = impacts.data();
    const float NEG = -std::numeric_limits<float>::infinity();
    std::vector<Scratch> scratch(nt);
    parallel_for(q.nq, int(nt), 4, [&](size_t qb, size_t qe, int tid) {
        Scratch& S = scratch[tid];
        QueryTerms qt;
        TopK top;
        for (size_t qi = qb; qi < qe; ++qi) {
            query_terms(q, qi, qt);
            top.reset(k);
            S.ex.clear();
            if (excl_indptr)
                for (int64_t j = excl_indptr[qi]; j < excl_indptr[qi + 1]; ++j) S.ex.push_back(uint32_t(excl_indices[j]));
            std::sort(S.ex.begin(), S.ex.end());
            const size_t n = qt.t.size();
            const float base = qt.base;
            // Slack so that float rounding of an exact sum never exceeds a bound.
            const double slack = 1.0 + 1e-6 + 2.4e-7 * double(n);
            S.cum.assign(n + 1, 0.0);  // cum[i]: bound on the contributions of terms i.. (canonical order)
            for (size_t i = n; i-- > 0;) S.cum[i] = S.cum[i + 1] + double(qt.ub[i]);
            for (size_t i = 0; i < n; ++i) S.cum[i] *= slack;
            int strat = strategy;
            if (strat == 0) strat = 1;  // measured fastest on SciFact and Zipf corpora up to 200k docs (see docs/bm25.md)
            if (n == 0) {
                // nothing matches: only the bm25l / bm25+ base (handled below)
            } else if (strat == 2) {
                // ---- MaxScore, document at a time.  Lists by ascending bound (i = n-1 .. 0);
                // the lowest-bound lists whose bounds sum to <= the k-th score are
                // "non-essential": documents only in them cannot enter, so they are only probed.
                S.pos.resize(n);
                S.end.resize(n);
                S.cval.assign(n, 0.f);
                for (size_t i = 0; i < n; ++i) {
                    S.pos[i] = size_t(off[qt.t[i]]);
                    S.end[i] = size_t(off[qt.t[i] + 1]);
                }
                size_t n_ess = n, exi = 0;  // terms [0, n_ess) are essential
                float theta = NEG;          // score of the k-th hit once the heap is full
                auto cannot_enter = [&](double bound) { return top.full() && float(double(base) + bound) <= theta; };
                for (;;) {
                    uint32_t d = UINT32_MAX;
                    for (size_t i = 0; i < n_ess; ++i)
                        if (S.pos[i] < S.end[i]) d = std::min(d, dd[S.pos[i]]);
                    if (d == UINT32_MAX) break;
                    double x = 0;
                    for (size_t i = 0; i < n_ess; ++i) {
                        if (S.pos[i] < S.end[i] && dd[S.pos[i]] == d) {
                            const float v = qt.w[i] * imp[S.pos[i]];
                            S.cval[i] = v;
                            x += v;
                            ++S.pos[i];
                        }
                    }
                    while (exi < S.ex.size() && S.ex[exi] < d) ++exi;
                    bool pruned = exi < S.ex.size() && S.ex[exi] == d;
                    for (size_t i = n_ess; i < n && !pruned; ++i) {
                        if (cannot_enter(x * slack + S.cum[i])) {
                            pruned = true;
                            break;
                        }
                        S.pos[i] = seek(dd, S.pos[i], S.end[i], d);
                        if (S.pos[i] < S.end[i] && dd[S.pos[i]] == d) {
                            const float v = qt.w[i] * imp[S.pos[i]];
                            S.cval[i] = v;
                            x += v;
                        }
                    }
                    if (!pruned) {
                        float s = 0.f;  // exact score in canonical order
                        for (size_t a = 0; a < n; ++a) s += S.cval[a];
                        const Hit h{base + s, d};
                        if (!top.full() || better(h, top.worst())) {
                            top.push(h);
                            if (top.full()) {
                                theta = top.worst().s;
                                while (n_ess > 0 && cannot_enter(S.cum[n_ess - 1])) --n_ess;
                            }
                        }
                    }
                    std::fill(S.cval.begin(), S.cval.end(), 0.f);
                }
            } else {
                // ---- Term at a time, terms by descending bound, into a dense accumulator
                // (every contribution is > 0, so acc == 0 means "not touched").  With
                // strategy 3, once the k-th best partial score beats the bound of all
                // remaining terms, no untouched document can enter: the remaining
                // (long, low-IDF) lists are only probed for the surviving candidates.
                if (S.acc.empty()) S.acc.assign(N, 0.f);
                float* acc = S.acc.data();
                for (uint32_t d : S.ex) acc[d] = NEG;  // excluded: never counted as touched
                S.touched.clear();
                size_t i = 0, remaining = 0;
                for (size_t a = 0; a < n; ++a) remaining += size_t(off[qt.t[a] + 1] - off[qt.t[a]]);
                // Early termination is only tried when the lists are long; otherwise
                // touched documents are only tracked when they are few.
                const bool try_early = strat == 3 && remaining > 16384 && remaining > 2 * k;
                // Adds the contributions of terms i.. to the candidates (sorted ids) only,
                // dropping those that can no longer reach theta_s.
                bool reset_all = false;
                auto probe_rest = [&](size_t i0, float theta_s) {
                                for (size_t r = i0; r < n && !S.cand_ids.empty(); ++r) {
                                    const float w = qt.w[r];
                                    size_t p = size_t(off[qt.t[r]]);
                                    const size_t e = size_t(off[qt.t[r] + 1]);
                                    if (e - p < 96 * S.cand_ids.size()) {  // a probe costs ~100 postings scanned
                                        // Dense enough: one branch-free linear pass.  It also adds to
                                        // non-candidates, which are never selected.
                                        for (size_t j = p; j < e; ++j) acc[dd[j]] += w * imp[j];
                                        reset_all = true;  // untracked documents were written
                                    } else {
                                        for (uint32_t d : S.cand_ids) {
                                            p = seek(dd, p, e, d);
                                            if (p == e) break;
                                            if (dd[p] == d) acc[d] += w * imp[p];
                                        }
                                    }
                                    // Drop candidates that can no longer reach the k-th score.
                                    size_t m = 0;
                                    for (uint32_t d : S.cand_ids)
                                        if (float(double(base) + double(acc[d]) * slack + S.cum[r + 1]) >= theta_s)
                                            S.cand_ids[m++] = d;
                                    S.cand_ids.resize(m);
                                }
                };
                bool dense = remaining * 4 > N;  // no tracking: scan the whole accumulator
                bool probing = false;
                int checks = 0;
                S.seeds.clear();
                S.minlen.assign(n + 1, SIZE_MAX);  // shortest list among terms i..
                for (size_t a = n; a-- > 0;)
                    S.minlen[a] = std::min(S.minlen[a + 1], size_t(off[qt.t[a] + 1] - off[qt.t[a]]));
                constexpr size_t BL = 16;
                // Maxima of blocks of 16 accumulators (float bits of values >= 0 order like
                // integers; -inf of excluded documents is negative): vectorisable.
                auto block_max_all = [&]() {
                    const size_t nb = (N + BL - 1) / BL, full = N / BL;
                    S.bmax.resize(nb);
                    block_maxima<BL>(acc, full, S.bmax.data());
                    if (full < nb) {
                        int32_t m = 0;
                        for (size_t r = full * BL; r < N; ++r) {
                            int32_t v;
                            std::memcpy(&v, acc + r, 4);
                            m = v > m ? v : m;
                        }
                        S.bmax[full] = m;
                    }
                };
                double last_theta = 0;
                size_t last_i = 0;
                for (; i < n; ++i) {
                    const float w = qt.w[i];
                    const int64_t b = off[qt.t[i]], e = off[qt.t[i] + 1];
                    remaining -= size_t(e - b);
                    if (dense) {
                        for (int64_t j = b; j < e; ++j) acc[dd[j]] += w * imp[j];
                        // Dense early termination: the k-th largest block maximum is a lower
                        // bound of the k-th score; when it beats the bound of the remaining
                        // terms, only documents already scored can still enter.
                        // theta can only have grown by the bounds of the terms added since the
                        // last check (at first: it is at most the bound of the terms so far).
                        const double theta_max = last_theta + (S.cum[last_i] - S.cum[i + 1]);
                        // Only switch once every remaining list is long (a large share of the
                        // corpus, low IDF): then few candidates are near the k-th score and
                        // probing them is much cheaper than scanning those lists.
                        if (try_early && i + 1 < n && S.minlen[i + 1] * 8 >= N && checks < 16 &&
                            theta_max > S.cum[i + 1]) {
                            ++checks;
                            float th = -1.f;  // a lower bound of the k-th partial score
                            if (S.seeds.empty()) {
                                // First check: all block maxima; the k best blocks become seeds.
                                block_max_all();
                                S.seedtmp.clear();
                                for (size_t bb = 0; bb < S.bmax.size(); ++bb)
                                    if (S.bmax[bb] > 0) S.seedtmp.push_back({S.bmax[bb], uint32_t(bb)});
                                if (S.seedtmp.size() >= k) {
                                    std::nth_element(S.seedtmp.begin(), S.seedtmp.begin() + (k - 1), S.seedtmp.end(),
                                                     std::greater<std::pair<int32_t, uint32_t>>());
                                    std::memcpy(&th, &S.seedtmp[k - 1].first, 4);
                                    for (size_t r = 0; r < k; ++r) S.seeds.push_back(S.seedtmp[r].second);
                                }
                            } else {
                                // Later checks: each seed block still holds a document at least
                                // as high as its maximum, so the smallest seed maximum is a bound.
                                int32_t mn = INT32_MAX;
                                for (uint32_t bb : S.seeds) {
                                    int32_t m = 0;
                                    for (size_t r = bb * BL; r < std::min(N, (bb + 1) * BL); ++r) {
                                        int32_t v;
                                        std::memcpy(&v, acc + r, 4);
                                        m = v > m ? v : m;
                                    }
                                    mn = std::min(mn, m);
                                }
                                std::memcpy(&th, &mn, 4);
                            }
                            if (th > 0.f) {
                                const float theta_s = base + th;
                                last_theta = double(th);
                                last_i = i + 1;
                                if (float(double(base) + S.cum[i + 1]) < theta_s) {
                                    probing = true;
                                    ++i;
                                    block_max_all();
                                    // Candidates: x * slack + cum[i] can reach theta_s.  One float
                                    // threshold, with a margin for the rounding of that sum.
                                    const double need = double(theta_s) - double(base) - S.cum[i] -
                                                        4e-7 * (std::fabs(double(theta_s)) + std::fabs(double(base)));
                                    const float x_lo = float(std::max(0.0, need / slack));
                                    int32_t lo_bits;
                                    std::memcpy(&lo_bits, &x_lo, 4);
                                    // Branch-free compaction: the test is unpredictable.
                                    S.cand_ids.resize(N);
                                    size_t m = 0;
                                    for (size_t bb = 0; bb < S.bmax.size(); ++bb) {
                                        if (S.bmax[bb] <= 0 || S.bmax[bb] < lo_bits) continue;
                                        for (size_t r = bb * BL; r < std::min(N, (bb + 1) * BL); ++r) {
                                            const float x = acc[r];
                                            S.cand_ids[m] = uint32_t(r);
                                            m += size_t((x > 0.f) & (x >= x_lo));
                                        }
                                    }
                                    S.cand_ids.resize(m);
                                    size_t nc0 = S.cand_ids.size();
                                    probe_rest(i, theta_s);
                                    break;
                                }
                            }
                        }
                    } else {
                        for (int64_t j = b; j < e; ++j) {
                            const uint32_t d = dd[j];
                            const float x = acc[d];
                            if (x == 0.f) S.touched.push_back(d);
                            acc[d] = x + w * imp[j];
                        }
                        if (S.touched.size() * 4 > N) dense = true;
                    }
                    // Early termination test, when it can save more than it costs.
                    if (try_early && !dense && i + 1 < n && S.touched.size() >= k && remaining > 2 * S.touched.size()) {
                        S.vals.clear();
                        for (uint32_t d : S.touched)
                            if (acc[d] > 0.f) S.vals.push_back(acc[d]);
                        if (S.vals.size() >= k) {
                            std::nth_element(S.vals.begin(), S.vals.begin() + (k - 1), S.vals.end(), std::greater<float>());
                            const float theta_s = base + S.vals[k - 1];
                            if (float(double(base) + S.cum[i + 1]) < theta_s) {
                                probing = true;
                                ++i;
                                // Candidates that may still reach the k-th score, by id.
                                S.cand_ids.clear();
                                for (uint32_t d : S.touched) {
                                    const float x = acc[d];
                                    if (x > 0.f && float(double(base) + double(x) * slack + S.cum[i]) >= theta_s)
                                        S.cand_ids.push_back(d);
                                }
                                std::sort(S.cand_ids.begin(), S.cand_ids.end());
                                probe_rest(i, theta_s);
                                break;
                            }
                        }
                    }
                }
                // Selection.  Small k: a bounded heap behind a threshold test that almost
                // always fails; large k: gather the candidates and nth_element.
                auto select = [&](const uint32_t* ids, size_t cnt, bool all) {
                    if (all) {
                        select_dense(acc, N, k, base, S, top);
                        return;
                    }
                    if (k * 16 < cnt) {
                        float thr = NEG;
                        for (size_t r = 0; r < cnt; ++r) {
                            const uint32_t d = ids[r];
                            const float x = acc[d];
                            if (x > 0.f) {
                                const float s = base + x;
                                if (s >= thr) {
                                    top.push(Hit{s, d});
                                    if (top.full()) thr = top.worst().s;
                                }
                            }
                        }
                    } else {
                        S.cand.clear();
                        for (size_t r = 0; r < cnt; ++r) {
                            const uint32_t d = ids[r];
                            const float x = acc[d];
                            if (x > 0.f) S.cand.push_back(Hit{base + x, d});
                        }
                        if (S.cand.size() > k) {
                            std::nth_element(S.cand.begin(), S.cand.begin() + (k - 1), S.cand.end(), Better());
                            S.cand.resize(k);
                        }
                        for (const Hit& h : S.cand) top.h.push_back(h);
                        std::make_heap(top.h.begin(), top.h.end(), Better());
                    }
                };
                if (probing)
                    select(S.cand_ids.data(), S.cand_ids.size(), false);
                else
                    select(S.touched.data(), S.touched.size(), dense);
                if (dense || reset_all)
                    std::fill(S.acc.begin(), S.acc.end(), 0.f);
                else
                    for (uint32_t d : S.touched) acc[d] = 0.f;
                for (uint32_t d : S.ex) acc[d] = 0.f;
            }
            // bm25l / bm25+: documents without any query term still score `base`;
            // when fewer than k matched, the first unmatched ids fill the rest.
            if (base > 0.f && !top.full()) {
                std::vector<uint32_t> have;
                for (const Hit& h : top.h) have.push_back(h.id);
                std::sort(have.begin(), have.end());
                size_t hi = 0, exi = 0;
                for (uint32_t d = 0; d < N && !top.full(); ++d) {
                    while (hi < have.size() && have[hi] < d) ++hi;
                    while (exi < S.ex.size() && S.ex[exi] < d) ++exi;
                    if ((hi < have.size() && have[hi] == d) || (exi < S.ex.size() && S.ex[exi] == d)) continue;
                    top.push(Hit{base, d});
                }
            }
            top.write(out_scores + qi * k, out_ids + qi * k);
        }
    });
}

void Index::score(const Queries& q, const int64_t* doc_ids, size_t m, int num_threads, float* out) const {
    const size_t N = num_docs();
    if (max_impact.size() != num_terms()) throw std::logic_error("BM25 bounds are stale");
    const int64_t* off = offsets.data();
    const uint32_t* dd = docs.data();
    const float* imp = impacts.data();
    parallel_for(q.nq, num_threads, 16, [&](size_t qb, size_t qe, int) {
        QueryTerms qt;
        for (size_t qi = qb; qi < qe; ++qi) {
            query_terms(q, qi, qt);
            for (size_t c = 0; c < m; ++c) {
                const int64_t d = doc_ids[qi * m + c];
                if (d < 0 || size_t(d) >= N) {
                    out[qi * m + c] = -std::numeric_limits<float>::infinity();
                    continue;
                }
                // Same order of additions as search(): bit-identical scores.
                float x = 0.f;
                for (size_t a = 0; a < qt.t.size(); ++a) {
                    const uint32_t* b = dd + off[qt.t[a]];
                    const uint32_t* e = dd + off[qt.t[a] + 1];
                    const uint32_t* p = std::lower_bound(b, e, uint32_t(d));
                    if (p != e && *p == uint32_t(d)) x += qt.w[a] * imp[p - dd];
                }
                out[qi * m + c] = x > 0.f ? qt.base + x : qt.base;
            }
        }
    });
}

}  // namespace bm25
}  // namespace hn
