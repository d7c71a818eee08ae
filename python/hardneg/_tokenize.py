"""The BM25 tokenisers and the versions saved with an index.

* ``"unicode"`` (default): the C++ tokeniser (``cpp/bm25.cpp``) over a frozen Unicode table
  (``cpp/unicode_tables.h``): lowercased maximal runs of 2+ word characters, where word
  characters are letters and digits of every script, ``_`` **and combining marks**, so Indic
  words with vowel signs stay whole.
* ``"bm25s"``: exactly bm25s's tokens, Python's ``re.findall(r"(?u)\\b\\w\\w+\\b", text.lower())``:
  combining marks are *not* word characters there (``"नमस्ते"`` gives ``"नमस"``), and the
  Unicode tables are those of the running Python.

Saved indexes record :func:`tokenizer_version` and :func:`stemmer_version`; an index whose
versions differ from the running ones would tokenise queries differently from its documents,
so loading it is refused.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, List, Optional

from hardneg import _core

TOKENIZERS = ("unicode", "bm25s")

#: bm25s's (and scikit-learn's) token pattern.
BM25S_PATTERN = re.compile(r"(?u)\b\w\w+\b")

# Bump when the rules of a tokeniser change (not its Unicode tables: those are in the version).
_RULES = {"unicode": 1, "bm25s": 1}


def bm25s_tokens(text: Any, name: str = "text") -> List[str]:
    """bm25s's tokens of one text (str, or UTF-8 bytes with invalid bytes as U+FFFD)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise TypeError(f"{name} must be str or bytes, got {type(text).__name__}")
    return BM25S_PATTERN.findall(text.lower())


def tokenizer_version(tokenizer: str) -> str:
    """A string naming the tokeniser's rules and Unicode tables (equal strings: equal tokens)."""
    if tokenizer == "unicode":
        return f"unicode-{_RULES['unicode']}/unicode {_core.bm25_unicode_version()}"
    return f"bm25s-re-{_RULES['bm25s']}/unicode {unicodedata.unidata_version}"


def stemmer_version(stemmer: Optional[str]) -> Optional[str]:
    """PyStemmer's version with the language (None without a stemmer)."""
    if stemmer is None:
        return None
    try:
        import Stemmer
    except ImportError:
        return None
    return f"PyStemmer {Stemmer.version()}/{stemmer}"
