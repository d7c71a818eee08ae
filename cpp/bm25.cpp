// BM25 tokeniser, inverted index and search.  See bm25.h for the layout.
#include "bm25.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "simd/kernels.h"
#include "threads.h"
#include "unicode_tables.h"

namespace hn {
namespace bm25 {

Method method_of(const std::string& name) {
    static const std::pair<const char*, Method> kMethods[] = {{"robertson", Method::Robertson},
                                                              {"lucene", Method::Lucene},
                                                              {"atire", Method::Atire},
                                                              {"bm25l", Method::BM25L},
                                                              {"bm25+", Method::BM25Plus}};
    for (const auto& m : kMethods)
        if (name == m.first) return m.second;
    throw std::invalid_argument("unknown BM25 method '" + name + "' (expected robertson, lucene, atire, bm25l or bm25+)");
}

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

}  // namespace

const char* unicode_version() { return unicode::kUnicodeVersion; }

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
    std::vector<WordCache> tables(nch);  // word -> its index in the chunk
    std::vector<std::vector<uint32_t>> toks(nch);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        std::string buf;
        for (size_t c = cb; c < ce; ++c) {
            const size_t b = n * c / nch, e = n * (c + 1) / nch;
            // Built in locals and moved out: threads never write neighbouring vector headers.
            WordCache tab;
            std::vector<uint32_t> tk;
            for (size_t i = b; i < e; ++i) {
                for_each_token(texts[i], buf,
                               [&](const std::string& w) { tk.push_back(uint32_t(tab.find_or_add(w, int64_t(tab.size())))); });
                out.offsets[i + 1] = tk.size();  // local count, made global below
            }
            tables[c] = std::move(tab);
            toks[c] = std::move(tk);
        }
    });
    // Merge the chunk vocabularies (serial over distinct words per chunk).
    WordCache global;
    std::vector<std::vector<uint32_t>> remap(nch);
    std::string tmp;
    for (size_t c = 0; c < nch; ++c) {
        remap[c].resize(tables[c].size());
        for (size_t w = 0; w < tables[c].size(); ++w) {
            tmp.assign(tables[c].word(w));
            remap[c][w] = uint32_t(global.find_or_add(tmp, int64_t(global.size())));
        }
        tables[c].clear();
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

// Term ids of texts through the word cache alone, without building a batch
// vocabulary (the common case for queries: every word was seen before).
bool Vocabulary::cached_ids(const std::vector<std::string_view>& texts, int num_threads,
                            std::vector<int64_t>& offsets, std::vector<int64_t>& ids,
                            std::vector<std::string>& missing) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    const size_t n = texts.size();
    offsets.assign(n + 1, 0);
    ids.clear();
    missing.clear();
    if (n == 0) return true;
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), (n + 63) / 64));
    std::vector<std::vector<int64_t>> part(nt);
    std::vector<std::vector<std::string>> miss(nt);
    parallel_for(nt, int(nt), 1, [&](size_t cb, size_t ce, int) {
        std::string buf;
        for (size_t c = cb; c < ce; ++c) {
            // Thread-local vectors, moved out at the end: no false sharing on their ends.
            std::vector<int64_t> out;
            std::vector<std::string> ms;
            std::vector<int64_t> cnt;
            for (size_t i = n * c / nt; i < n * (c + 1) / nt; ++i) {
                for_each_token(texts[i], buf, [&](const std::string& w) {
                    const int64_t v = cache_.find(w);
                    if (v == WordCache::kAbsent && ms.size() < 100000) ms.push_back(w);
                    out.push_back(v < 0 ? -1 : v);
                });
                cnt.push_back(int64_t(out.size()));  // local count, made global below
            }
            std::copy(cnt.begin(), cnt.end(), offsets.begin() + 1 + n * c / nt);
            part[c] = std::move(out);
            miss[c] = std::move(ms);
        }
    });
    size_t total = 0;
    for (size_t c = 0; c < nt; ++c) {
        for (auto& w : miss[c]) missing.push_back(std::move(w));
        for (size_t i = n * c / nt; i < n * (c + 1) / nt; ++i) offsets[i + 1] += int64_t(total);
        total += part[c].size();
    }
    if (!missing.empty()) {
        std::sort(missing.begin(), missing.end());
        missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
        return false;
    }
    ids.reserve(total);
    for (auto& v : part) ids.insert(ids.end(), v.begin(), v.end());
    return true;
}

// ---------------------------------------------------------------- word cache
// A slot holds the top 32 bits of the word's hash (a tag compared before the
// words) and the entry + 1 (0 = empty).
size_t WordCache::slot_of(std::string_view w, uint64_t h) const {
    const uint64_t tag = h & 0xFFFFFFFF00000000ull;
    const size_t mask = slots_.size() - 1;
    for (size_t pos = h & mask;; pos = (pos + 1) & mask) {
        const uint64_t sl = slots_[pos];
        if (sl == 0) return pos;
        const size_t i = size_t(uint32_t(sl)) - 1;
        if ((sl & 0xFFFFFFFF00000000ull) == tag && starts_[i + 1] - starts_[i] == w.size() &&
            std::memcmp(arena_.data() + starts_[i], w.data(), w.size()) == 0)
            return pos;
    }
}

int64_t WordCache::find(std::string_view w) const {
    const uint64_t sl = slots_[slot_of(w, hash_bytes(w.data(), w.size()))];
    return sl ? values_[size_t(uint32_t(sl)) - 1] : kAbsent;
}

int64_t WordCache::find_or_add(std::string_view w, int64_t value) {
    const uint64_t h = hash_bytes(w.data(), w.size());
    const size_t pos = slot_of(w, h);
    if (slots_[pos]) return values_[size_t(uint32_t(slots_[pos])) - 1];
    if (hashes_.size() >= 0xFFFFFFF0ull) throw std::length_error("BM25 word table exceeds 2^32 words");
    arena_.insert(arena_.end(), w.begin(), w.end());
    starts_.push_back(arena_.size());
    hashes_.push_back(h);
    values_.push_back(value);
    slots_[pos] = (h & 0xFFFFFFFF00000000ull) | uint64_t(hashes_.size());
    if (hashes_.size() * 2 > slots_.size()) {  // grow: keep the load factor <= 1/2
        std::vector<uint64_t> ns(slots_.size() * 2, 0);
        const size_t mask = ns.size() - 1;
        for (size_t i = 0; i < hashes_.size(); ++i) {
            size_t p = hashes_[i] & mask;
            while (ns[p]) p = (p + 1) & mask;
            ns[p] = (hashes_[i] & 0xFFFFFFFF00000000ull) | uint64_t(i + 1);
        }
        slots_.swap(ns);
    }
    return value;
}

void WordCache::set(std::string_view w, int64_t value) {
    const uint64_t sl = slots_[slot_of(w, hash_bytes(w.data(), w.size()))];
    if (sl)
        values_[size_t(uint32_t(sl)) - 1] = value;
    else
        find_or_add(w, value);
}

void WordCache::forget(int64_t value) {
    if (std::find(values_.begin(), values_.end(), value) == values_.end()) return;
    // Rebuilt without those entries (the arena would otherwise keep every word ever forgotten).
    WordCache kept;
    for (size_t i = 0; i < values_.size(); ++i)
        if (values_[i] != value) kept.find_or_add(word(i), values_[i]);
    *this = std::move(kept);
}

void WordCache::clear() { *this = WordCache(); }

namespace {

// The new documents of an add, tallied per chunk of documents (chunk c: documents
// [ndocs * c / nch, ndocs * (c + 1) / nch)): the (term, tf) pairs of each document
// in pt / ptf, each document's length and pair count, the per-term posting count
// of the batch (new_cnt), and cnt[c][t]: where chunk c's postings of t start among
// the term's new ones.
struct DocTally {
    std::vector<std::vector<uint32_t>> pt, ptf, cnt;
    std::vector<uint32_t> npairs, new_len;
    std::vector<int64_t> new_cnt;
};

DocTally tally_docs(const int64_t* tokens, const uint64_t* toffs, size_t ndocs, size_t V, size_t nch, size_t nt) {
    DocTally out;
    auto& pt = out.pt;
    auto& ptf = out.ptf;
    auto& cnt = out.cnt;
    auto& npairs = out.npairs;
    auto& new_len = out.new_len;
    pt.resize(nch);
    ptf.resize(nch);
    cnt.resize(nch);
    npairs.resize(ndocs);
    new_len.resize(ndocs);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        // Term counts without sorting: last[t] = the document that last saw t,
        // pos[t] = where its pair sits in this chunk's output.
        std::vector<uint32_t> last(V, UINT32_MAX);
        std::vector<uint64_t> pos(V);
        for (size_t c = cb; c < ce; ++c) {
            cnt[c].assign(V, 0);
            std::vector<uint32_t> lpt, lptf;  // moved out below: no false sharing on vector headers
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
                        pos[t] = lpt.size();
                        lpt.push_back(t);
                        lptf.push_back(1);
                        ++cnt[c][t];
                        ++np;
                    } else {
                        ++lptf[pos[t]];
                    }
                }
                if (len > 0xFFFFFFFFull) throw std::length_error("document too long");
                new_len[d] = uint32_t(len);
                npairs[d] = np;
            }
            pt[c] = std::move(lpt);
            ptf[c] = std::move(lptf);
        }
    });
    // Per term: new postings count; cnt becomes each chunk's start within the term's new range.
    std::vector<int64_t>& new_cnt = out.new_cnt;
    new_cnt.assign(V, 0);
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
    return out;
}

// Codes of the tallied (tf, length) pairs: the table ctf / clen grows by the pairs
// it lacks; dt.ptf[c][j] becomes a local code of chunk c, and the result maps
// chunk c's local codes to table codes.  Per chunk, a local code per distinct
// pair (one hash lookup per document, a dense lookup by tf per posting), then one
// global code per local one (few).
std::vector<std::vector<uint32_t>> code_pairs(DocTally& dt, size_t ndocs, size_t nch, size_t nt,
                                              std::vector<uint32_t>& ctf, std::vector<uint32_t>& clen) {
    auto& ptf = dt.ptf;
    const auto& npairs = dt.npairs;
    const auto& new_len = dt.new_len;
    std::vector<std::vector<uint64_t>> local_pairs(nch);
    parallel_for(nch, int(nt), 1, [&](size_t cb, size_t ce, int) {
        for (size_t c = cb; c < ce; ++c) {
            std::unordered_map<uint32_t, std::vector<uint32_t>> by_len;  // length -> local id + 1 by tf
            const size_t b = ndocs * c / nch, e = ndocs * (c + 1) / nch;
            size_t j = 0;
            for (size_t d = b; d < e; ++d) {
                if (npairs[d] == 0) continue;
                std::vector<uint32_t>& by_tf = by_len[new_len[d]];
                for (uint32_t r = 0; r < npairs[d]; ++r, ++j) {
                    const uint32_t tf = ptf[c][j];
                    if (tf >= by_tf.size()) by_tf.resize(size_t(tf) + 1, 0);
                    if (by_tf[tf] == 0) {
                        local_pairs[c].push_back((uint64_t(tf) << 32) | new_len[d]);
                        by_tf[tf] = uint32_t(local_pairs[c].size());
                    }
                    ptf[c][j] = by_tf[tf] - 1;
                }
            }
        }
    });
    std::unordered_map<uint64_t, uint32_t> global;
    global.reserve(ctf.size() * 2 + 16);
    for (size_t i = 0; i < ctf.size(); ++i) global.emplace((uint64_t(ctf[i]) << 32) | clen[i], uint32_t(i));
    std::vector<std::vector<uint32_t>> to_global(nch);
    for (size_t c = 0; c < nch; ++c) {
        for (uint64_t pr : local_pairs[c]) {
            auto it = global.find(pr);
            if (it == global.end()) {
                if (ctf.size() >= 0xFFFFFFF0ull) throw std::length_error("too many distinct (tf, length) pairs");
                it = global.emplace(pr, uint32_t(ctf.size())).first;
                ctf.push_back(uint32_t(pr >> 32));
                clen.push_back(uint32_t(pr));
            }
            to_global[c].push_back(it->second);
        }
    }
    return to_global;
}

}  // namespace

// ---------------------------------------------------------------- vocabulary
int64_t Vocabulary::term_id(const std::string& term, bool create) {
    auto it = ids_.find(term);
    if (it != ids_.end()) return it->second;
    if (!create) return -1;
    if (terms_.size() >= 0xFFFFFFFEull) throw std::length_error("BM25 vocabulary exceeds 2^32 terms");
    const uint32_t id = uint32_t(terms_.size());
    terms_.push_back(term);
    ids_.emplace(term, id);
    return id;
}

size_t Vocabulary::size() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return terms_.size();
}

std::vector<std::string> Vocabulary::terms() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return terms_;
}

std::vector<std::string> Vocabulary::unknown_words(const std::vector<std::string>& words, bool documents) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    std::vector<std::string> out;
    for (const auto& w : words) {
        const int64_t v = cache_.find(w);
        if (v == WordCache::kAbsent || (documents && v == kUnknown)) out.push_back(w);
    }
    return out;
}

void Vocabulary::learn(const std::vector<std::string>& words, const std::vector<std::optional<std::string>>& terms,
                       bool create) {
    if (words.size() != terms.size()) throw std::invalid_argument("words and terms differ in length");
    std::unique_lock<std::shared_mutex> lk(mu_);
    const size_t v0 = terms_.size();
    for (size_t i = 0; i < words.size(); ++i) {
        int64_t id = kStop;
        if (terms[i]) {
            id = term_id(*terms[i], create);
            if (id < 0) id = kUnknown;
        }
        cache_.set(words[i], id);
    }
    if (terms_.size() != v0) cache_.forget(kUnknown);  // query words that may now be known
}

std::vector<int64_t> Vocabulary::word_ids(const std::vector<std::string>& words) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    std::vector<int64_t> out(words.size());
    for (size_t i = 0; i < words.size(); ++i) {
        const int64_t v = cache_.find(words[i]);
        if (v == WordCache::kAbsent) throw std::logic_error("word missing from the BM25 word cache");
        out[i] = v < 0 ? -1 : v;
    }
    return out;
}

std::vector<int64_t> Vocabulary::token_ids(const std::vector<std::string>& tokens, bool create) {
    std::unique_lock<std::shared_mutex> lk(mu_, std::defer_lock);
    std::shared_lock<std::shared_mutex> slk(mu_, std::defer_lock);
    if (create) lk.lock(); else slk.lock();
    const size_t v0 = terms_.size();
    std::vector<int64_t> out(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (create) out[i] = term_id(tokens[i], true);
        else {
            auto it = ids_.find(tokens[i]);
            out[i] = it == ids_.end() ? -1 : int64_t(it->second);
        }
    }
    if (terms_.size() != v0) cache_.forget(kUnknown);
    return out;
}

void Vocabulary::truncate(size_t n) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (n >= terms_.size()) return;
    for (size_t t = n; t < terms_.size(); ++t) ids_.erase(terms_[t]);
    terms_.resize(n);
    // Cached words of the dropped terms are forgotten (learnt again on their next use).
    WordCache kept;
    for (size_t i = 0; i < cache_.size(); ++i) {
        const int64_t v = cache_.value(i);
        if (v < int64_t(n) && v != kUnknown) kept.find_or_add(cache_.word(i), v);
    }
    cache_ = std::move(kept);
}

void Vocabulary::assign(const std::vector<std::string>& terms) {
    std::unordered_map<std::string, uint32_t> ids;
    ids.reserve(terms.size());
    for (size_t i = 0; i < terms.size(); ++i)
        if (!ids.emplace(terms[i], uint32_t(i)).second) throw std::invalid_argument("vocabulary holds a duplicate term");
    std::unique_lock<std::shared_mutex> lk(mu_);
    terms_ = terms;
    ids_ = std::move(ids);
    cache_.clear();
}

// --------------------------------------------------------------------- index
void Index::set_strategy(int s) {
    if (s < 0 || s > 2) throw std::invalid_argument("strategy must be 0, 1 or 2");
    std::unique_lock<std::shared_mutex> lk(mu_);
    strategy_ = s;  // every strategy runs the exhaustive search (bm25.h)
}

void Index::borrow(const Borrowed& a, int num_threads) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    offsets.borrow(a.offsets, a.n_offsets);
    docs.borrow(a.docs, a.n_docs);
    if (a.codes32) {
        codes32.borrow(a.codes32, a.n_codes);
        codes16.set({});
    } else {
        codes16.borrow(a.codes16, a.n_codes);
        codes32.set({});
    }
    code_tf.borrow(a.code_tf, a.n_table);
    code_len.borrow(a.code_len, a.n_table);
    doc_len.borrow(a.doc_len, a.n_doc_len);
    total_len = a.total_len;
    validate_structure();
    recompute_impacts(num_threads);
}

void Index::add_docs(const int64_t* tokens, const uint64_t* toffs, size_t ndocs, int num_threads) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    add_docs_locked(tokens, toffs, ndocs, num_threads);
}

void Index::add_docs_locked(const int64_t* tokens, const uint64_t* toffs, size_t ndocs, int num_threads) {
    if (ndocs == 0) return;
    const size_t n_old = num_docs();
    if (n_old + ndocs > 0xFFFFFFF0ull) throw std::length_error("BM25 supports at most 2^32 - 16 documents");
    const size_t V = vocab.size(), V_old = num_terms();
    const size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), ndocs));
    const size_t nch = nt;
    for (size_t i = 0; i < toffs[ndocs]; ++i)
        if (tokens[i] >= int64_t(V)) throw std::invalid_argument("token id outside the vocabulary");

    // Pass 1: (term, tf) pairs, lengths and per-term posting counts of the new documents.
    DocTally dt = tally_docs(tokens, toffs, ndocs, V, nch, nt);
    auto& pt = dt.pt;
    auto& cnt = dt.cnt;
    const auto& npairs = dt.npairs;
    const auto& new_len = dt.new_len;
    const auto& new_cnt = dt.new_cnt;
    // Merged offsets: old postings of each term, then the new ones (higher ids).
    std::vector<int64_t> off(V + 1, 0);
    const int64_t* old_off = offsets.data();
    for (size_t t = 0; t < V; ++t) {
        const int64_t old_n = t < V_old ? old_off[t + 1] - old_off[t] : 0;
        off[t + 1] = off[t] + old_n + new_cnt[t];
    }
    const size_t P = size_t(off[V]);

    // Codes of the new (tf, length) pairs (the table grows by the new pairs).
    std::vector<uint32_t> ctf(code_tf.data(), code_tf.data() + code_tf.size());
    std::vector<uint32_t> clen(code_len.data(), code_len.data() + code_len.size());
    const std::vector<std::vector<uint32_t>> to_global = code_pairs(dt, ndocs, nch, nt, ctf, clen);
    auto& ptf = dt.ptf;
    const bool to_wide = wide() || ctf.size() > 65536;

    // Merged postings: old ones of each term, then the new ones (higher ids).
    std::vector<uint32_t> nd(P);
    std::vector<uint16_t> nc16(to_wide ? 0 : P);
    std::vector<uint32_t> nc32(to_wide ? P : 0);
    auto put_code = [&](size_t pos, uint32_t code) {
        if (to_wide)
            nc32[pos] = code;
        else
            nc16[pos] = uint16_t(code);
    };
    const uint32_t* od = docs.data();
    parallel_ranges(V_old, int(nt), [&](size_t b, size_t e, int) {
        for (size_t t = b; t < e; ++t) {
            const int64_t ob = old_off[t], oe = old_off[t + 1];
            std::memcpy(nd.data() + off[t], od + ob, sizeof(uint32_t) * size_t(oe - ob));
            for (int64_t j = ob; j < oe; ++j) put_code(size_t(off[t] + (j - ob)), code_at(size_t(j)));
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
                    put_code(pos, to_global[c][ptf[c][j]]);
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
    // The new impact table (it throws on a non-finite impact) before anything changes.
    std::vector<float> imp = impact_table(ctf.data(), clen.data(), ctf.size(), (total_len + added) / double(n_old + ndocs));
    offsets.set(std::move(off));
    docs.set(std::move(nd));
    if (to_wide) {
        codes32.set(std::move(nc32));
        codes16.set({});
    } else {
        codes16.set(std::move(nc16));
    }
    code_tf.set(std::move(ctf));
    code_len.set(std::move(clen));
    doc_len.set(std::move(lens));
    total_len += added;
    code_imp.swap(imp);
    compute_bounds(num_threads);
}

std::vector<float> Index::impact_table(const uint32_t* tf, const uint32_t* len, size_t n, double lavg) const {
    std::vector<float> imp(n);
    const double b = params.b, z = tf_part_zero(params);
    for (size_t c = 0; c < n; ++c) {
        const double B = lavg > 0 ? (1.0 - b) + b * double(len[c]) / lavg : 1.0;
        imp[c] = float(tf_part(params, double(tf[c]), B) - z);
        if (!(imp[c] >= 0.f && imp[c] <= 1e30f)) throw std::invalid_argument("a (tf, length) pair gives a non-finite impact");
    }
    return imp;
}

void Index::recompute_impacts(int num_threads) {
    code_imp = impact_table(code_tf.data(), code_len.data(), num_codes(), avg_doc_len());
    compute_bounds(num_threads);
}

void Index::compute_bounds(int num_threads) {
    // Also checks the postings once (ids inside the corpus, strictly ascending per
    // term, codes inside the table and matching the document's length), so the
    // search loops need no checks even on a loaded index.
    const size_t V = num_terms(), N = num_docs(), C = num_codes();
    std::vector<float> mx(V, 0.f);
    const int64_t* o = offsets.data();
    const uint32_t* d = docs.data();
    const uint32_t* len = doc_len.data();
    const uint32_t* clen = code_len.data();
    parallel_for(V, num_threads, 1024, [&](size_t b, size_t e, int) {
        for (size_t t = b; t < e; ++t) {
            float m = 0.f;
            uint32_t prev = 0;
            for (int64_t j = o[t]; j < o[t + 1]; ++j) {
                if (d[j] >= N || (j > o[t] && d[j] <= prev))
                    throw std::invalid_argument("postings must hold ascending document ids inside the corpus");
                prev = d[j];
                const uint32_t c = code_at(size_t(j));
                if (c >= C || clen[c] != len[d[j]])
                    throw std::invalid_argument("posting codes must index the (tf, length) table and match the document length");
                m = std::max(m, code_imp[c]);
            }
            mx[t] = m;
        }
    });
    max_impact.swap(mx);
    build_blocks(num_threads);
}

// Range metadata of the long terms (see bm25.h): where each long term's
// postings start in every range of kRangeBlocks document blocks.
void Index::build_blocks(int num_threads) {
    const size_t V = num_terms(), N = num_docs();
    const size_t NB = num_blocks(), NR = num_ranges();
    const int64_t* o = offsets.data();
    const uint32_t* d = docs.data();
    std::vector<int32_t> ids(V, -1);
    std::vector<uint32_t> longs;
    const int64_t min_df = int64_t(std::max<size_t>(kLongMinDf, 2 * NB));
    for (size_t t = 0; t < V; ++t)
        if (N >= kBlock * 8 && o[t + 1] - o[t] >= min_df) {
            ids[t] = int32_t(longs.size());
            longs.push_back(uint32_t(t));
        }
    std::vector<uint32_t> start(longs.size() * (NR + 1));
    parallel_for(longs.size(), num_threads, 4, [&](size_t lb, size_t le, int) {
        for (size_t li = lb; li < le; ++li) {
            const uint32_t t = longs[li];
            uint32_t* st = start.data() + li * (NR + 1);
            int64_t j = o[t];
            for (size_t r = 0; r < NR; ++r) {
                st[r] = uint32_t(j - o[t]);
                const uint64_t end_doc = uint64_t(std::min(NB, (r + 1) * kRangeBlocks)) << kBlockShift;
                while (j < o[t + 1] && d[j] < end_doc) ++j;
            }
            st[NR] = uint32_t(j - o[t]);
        }
    });
    long_id.swap(ids);
    long_terms.swap(longs);
    blk_start.swap(start);

    // Dense impact arrays of the most common terms: those in more than a quarter of the
    // documents, most common first, while the arrays stay within kDenseBudget of the
    // postings' bytes (a dense array costs 4 bytes per document, a posting 6).
    std::vector<int32_t> did(V, -1);
    std::vector<uint32_t> dterms, cands;
    for (size_t t = 0; t < V; ++t)
        if (long_id[t] >= 0 && size_t(o[t + 1] - o[t]) * 4 > N) cands.push_back(uint32_t(t));
    std::sort(cands.begin(), cands.end(), [&](uint32_t x, uint32_t y) {
        return o[x + 1] - o[x] > o[y + 1] - o[y] || (o[x + 1] - o[x] == o[y + 1] - o[y] && x < y);
    });
    const double budget = kDenseBudget * 6.0 * double(num_postings());
    for (uint32_t t : cands) {
        if (4.0 * double(NB * kBlock) * double(dterms.size() + 1) > budget) break;
        did[t] = int32_t(dterms.size());
        dterms.push_back(t);
    }
    const size_t L = NB * kBlock;
    std::vector<float> dimp(dterms.size() * L, 0.f);
    with_impacts([&](const auto imp) {
        parallel_for(dterms.size(), num_threads, 1, [&](size_t b, size_t e, int) {
            for (size_t i = b; i < e; ++i) {
                const uint32_t t = dterms[i];
                float* row = dimp.data() + i * L;
                for (int64_t j = o[t]; j < o[t + 1]; ++j) row[d[j]] = imp[size_t(j)];
            }
        });
    });
    dense_id.swap(did);
    dense_imp.swap(dimp);
}

size_t Index::memory_bytes() const {
    size_t b = offsets.size() * 8 + docs.size() * 4 + codes16.size() * 2 + codes32.size() * 4;
    b += (code_tf.size() + code_len.size() + code_imp.size()) * 4 + doc_len.size() * 4;
    b += max_impact.size() * 4 + long_id.size() * 4 + long_terms.size() * 4 + blk_start.size() * 4;
    b += dense_id.size() * 4 + dense_imp.size() * 4;
    return b;
}

void Index::validate_structure() const {
    const size_t V = num_terms(), P = num_postings();
    if (offsets.size() != vocab.size() + 1) throw std::invalid_argument("offsets length does not match the vocabulary");
    if ((wide() ? codes32.size() : codes16.size()) != P) throw std::invalid_argument("posting arrays differ in length");
    if (code_len.size() != code_tf.size()) throw std::invalid_argument("code tables differ in length");
    const int64_t* o = offsets.data();
    if (o[0] != 0 || o[V] != int64_t(P)) throw std::invalid_argument("offsets must start at 0 and end at the posting count");
    for (size_t t = 0; t < V; ++t)
        if (o[t + 1] < o[t]) throw std::invalid_argument("offsets must be non-decreasing");
    double tot = 0;
    const uint32_t* len = doc_len.data();
    for (size_t i = 0; i < num_docs(); ++i) tot += len[i];
    if (std::fabs(tot - total_len) > 0.5) throw std::invalid_argument("document lengths do not match the stored total");
}

}  // namespace bm25
}  // namespace hn
