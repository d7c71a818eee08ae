"""tokenizer="bm25s" reproduces bm25s's tokens and scores on every script; the default Unicode
tokeniser is unchanged; saved indexes record the tokeniser and stemmer versions."""
import json

import numpy as np
import pytest

import hardneg as hn
from hardneg import _core
from hardneg.bm25 import BM25, tokenize

bm25s = pytest.importorskip("bm25s")

TEXTS = [
    "नमस्ते दुनिया यह एक परीक्षण है",                      # Hindi: vowel signs are combining marks
    "दुनिया में नमस्ते और परीक्षण के बारे में",
    "Cafe\u0301 au lait, re\u0301sume\u0301 and na\u0308ive",  # decomposed accents
    "café au lait, résumé and naïve",                   # composed
    "İSTANBUL İzmir DİYARBAKIR ıstanbul Istanbul",      # Turkish dotted / dotless capitals
    "ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ final sigma ΟΔΟΣ",
    "Straße STRASSE ǅemal ǈubljana ﬁnance ＦＵＬＬ width",
    "The quick brown foxes were running over 12 lazy dogs_and_cats x y z",
    "mixed123 under_score a1 ١٢٣ arabic العربية مرحبا",
    "",
    "a b c",
]
QUERIES = ["नमस्ते परीक्षण", "cafe\u0301 résumé naive", "istanbul İstanbul stanbul", "ΟΔΟΣ σίσυφος",
           "strasse finance", "running dogs", "العربية", "nothing"]


def test_bm25s_tokens_are_bm25s_tokens():
    assert tokenize("नमस्ते दुनिया यह एक परीक्षण है", tokenizer="bm25s") == ["नमस", "यह", "एक", "पर", "षण"]
    ref = bm25s.tokenize(TEXTS + QUERIES, stopwords=None, stemmer=None, return_ids=False, show_progress=False)
    for t, r in zip(TEXTS + QUERIES, ref):
        assert tokenize(t, tokenizer="bm25s") == list(r), t


def test_default_tokenizer_unchanged():
    assert tokenize("नमस्ते दुनिया यह एक परीक्षण है") == ["नमस्ते", "दुनिया", "यह", "एक", "परीक्षण", "है"]
    with pytest.raises(ValueError, match="tokenizer"):
        BM25(tokenizer="spacy")
    with pytest.raises(ValueError, match="tokenizer"):
        tokenize("x", tokenizer="nltk")


@pytest.mark.parametrize("stem", [None, "english"])
@pytest.mark.parametrize("method", ["lucene", "robertson", "bm25+"])
def test_scores_equal_bm25s_on_every_script(stem, method):
    st = None
    if stem:
        Stemmer = pytest.importorskip("Stemmer")
        st = Stemmer.Stemmer(stem)
    docs = TEXTS * 3 + ["plain english text about dogs"]
    ctoks = bm25s.tokenize(docs, stopwords="en", stemmer=st, show_progress=False)
    ref = bm25s.BM25(method=method)
    ref.index(ctoks, show_progress=False)
    qtoks = bm25s.tokenize(QUERIES, stopwords="en", stemmer=st, show_progress=False, return_ids=False)
    bm = BM25(method=method, stemmer=stem, tokenizer="bm25s").index(docs)
    assert set(bm.vocabulary) == set(ctoks.vocab) - {""}  # bm25s keeps "" for empty documents
    ours = bm.score(QUERIES, np.tile(np.arange(len(docs)), (len(QUERIES), 1)))
    for q, (row, toks) in enumerate(zip(ours, qtoks)):
        known = [t for t in toks if t in ref.vocab_dict]
        want = ref.get_scores(known) if known else np.zeros(len(docs))
        if not known and method == "bm25+":
            continue  # bm25s scores an empty query 0; every document gets no base then
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6, err_msg=QUERIES[q])
    s, i = bm.search(QUERIES, k=5)
    np.testing.assert_allclose(s[i >= 0], np.take_along_axis(ours, i.clip(0), 1)[i >= 0])


def test_bm25s_tokenizer_add_and_bytes_and_bad_items():
    bm = BM25(stemmer=None, tokenizer="bm25s").index(TEXTS[:5])
    bm.add([b"caf\xc3\xa9 \xff bytes", "नमस्ते again"])
    fresh = BM25(stemmer=None, tokenizer="bm25s").index(TEXTS[:5] + ["café \ufffd bytes", "नमस्ते again"])
    np.testing.assert_array_equal(bm.search(QUERIES, k=7)[1], fresh.search(QUERIES, k=7)[1])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        bm.add(["ok", None])
    assert len(bm) == 7


def test_saved_index_records_versions_and_refuses_a_mismatch(tmp_path):
    bm = BM25(tokenizer="bm25s").index(TEXTS)
    bm.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "bm25.json").read_text())
    assert meta["tokenizer"] == "bm25s"
    assert meta["tokenizer_version"].startswith("bm25s-re-")
    assert meta["stemmer_version"].startswith("PyStemmer ")
    b2 = BM25.load(tmp_path / "ix")
    assert b2.tokenizer == "bm25s"
    np.testing.assert_array_equal(b2.search(QUERIES, k=5)[1], bm.search(QUERIES, k=5)[1])

    d = BM25().index(TEXTS)
    d.save(tmp_path / "uni")
    meta = json.loads((tmp_path / "uni" / "bm25.json").read_text())
    assert meta["tokenizer"] == "unicode"
    assert meta["tokenizer_version"].endswith(f"unicode {_core.bm25_unicode_version()}")
    for key, bad in (("tokenizer_version", "unicode-1/unicode 9.0.0"), ("stemmer_version", "PyStemmer 0.1/english")):
        m = dict(meta, **{key: bad})
        (tmp_path / "uni" / "bm25.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match=f"{key.split('_')[0]} version '{bad}'.*re-index"):
            BM25.load(tmp_path / "uni")
    # an index saved before versions were recorded loads as it is (the Unicode tokeniser)
    old = {k: v for k, v in meta.items() if k not in ("tokenizer", "tokenizer_version", "stemmer_version")}
    (tmp_path / "uni" / "bm25.json").write_text(json.dumps(old))
    b3 = BM25.load(tmp_path / "uni")
    assert b3.tokenizer == "unicode"
    np.testing.assert_array_equal(b3.search(QUERIES, k=5)[1], d.search(QUERIES, k=5)[1])


def test_unicode_table_is_frozen_in_the_repo():
    """The build uses the checked-in header; its version is what the module reports."""
    from pathlib import Path
    header = Path(__file__).resolve().parents[1] / "cpp" / "unicode_tables.h"
    text = header.read_text()
    assert f'kUnicodeVersion[] = "{_core.bm25_unicode_version()}"' in text
    assert f"(Unicode {_core.bm25_unicode_version()})" in text.splitlines()[0]
