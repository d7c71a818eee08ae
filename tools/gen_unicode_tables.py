"""Generate cpp/unicode_tables.h: word-character ranges and lowercase mappings.

Word characters follow Python's ``re`` ``\\w`` (``str.isalnum()`` or ``_``) plus
combining marks (Mn, Mc), so that Indic and other scripts with vowel signs keep
their words whole.  Lowercasing follows ``str.lower()`` (simple one-to-one
mappings; the special cases are handled in bm25.cpp).
The table is frozen: it was generated once and ``cpp/unicode_tables.h`` is checked into
git, so every build tokenises alike whatever Python builds it.  The header records the
Unicode version (``kUnicodeVersion``), which every saved BM25 index records too.  To move
to a newer Unicode version on purpose, run ``python tools/gen_unicode_tables.py
cpp/unicode_tables.h`` with a Python that has it, and commit the header: indexes saved
with the old table then refuse to load (their tokens would differ).
"""
import sys
import unicodedata

MAX = 0x110000


def is_word(cp: int) -> bool:
    if 0xD800 <= cp < 0xE000:
        return False
    c = chr(cp)
    return c.isalnum() or c == "_" or unicodedata.category(c) in ("Mn", "Mc")


def ranges(pred):
    out, start = [], None
    for cp in range(MAX):
        w = pred(cp)
        if w and start is None:
            start = cp
        elif not w and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, MAX - 1))
    return out


def main() -> None:
    w = ranges(is_word)
    lower = []
    for cp in range(MAX):
        if 0xD800 <= cp < 0xE000:
            continue
        lo = chr(cp).lower()
        if len(lo) == 1 and ord(lo) != cp:
            lower.append((cp, ord(lo)))
    out = open(sys.argv[1], "w", encoding="ascii") if len(sys.argv) > 1 else sys.stdout
    p = out.write
    p("// Generated once by tools/gen_unicode_tables.py from Python %s's unicodedata (Unicode %s)\n"
      "// and checked in: the build uses this file, not the building Python's tables. Do not edit.\n"
      % (sys.version.split()[0], unicodedata.unidata_version))
    p("#pragma once\n#include <cstdint>\n\nnamespace hn { namespace unicode {\n\n")
    p("// The Unicode version of these tables.\n")
    p("static const char kUnicodeVersion[] = \"%s\";\n\n" % unicodedata.unidata_version)
    p("// Inclusive ranges of word characters (letters, digits, numerics, '_', combining marks).\n")
    p("static const uint32_t kWordRanges[][2] = {\n")
    for a, b in w:
        p("    {0x%X, 0x%X},\n" % (a, b))
    p("};\nstatic const int kNumWordRanges = %d;\n\n" % len(w))
    p("// (code point, lowercase) pairs, sorted by code point.\n")
    p("static const uint32_t kLower[][2] = {\n")
    for a, b in lower:
        p("    {0x%X, 0x%X},\n" % (a, b))
    p("};\nstatic const int kNumLower = %d;\n\n}}  // namespace hn::unicode\n" % len(lower))
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
