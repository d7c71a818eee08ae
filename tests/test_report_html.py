"""The HTML report: one self-contained file that parses, holds the plots and the suspects table."""
from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

from hardneg import datasets as hd
from hardneg.cli import main
from hardneg.mining import mine_hard_negatives
from hardneg.report_html import false_negative_suspects, render_html_report

from paths import SCIFACT


class Collect(HTMLParser):
    """Tags, attributes and the text of each table."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text, self.tables = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag == "table":
            self.tables.append({"class": dict(attrs).get("class"), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]["rows"]:
            self.tables[-1]["rows"][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(text):
    p = Collect()
    p.feed(text)
    p.close()
    return p


def check_self_contained(p):
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    for k, v in p.attrs:
        assert not (k in ("src", "href") and v and "//" in v), (k, v)


def sample_mined(**kw):
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    return mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, progress=False, **kw)


def test_sample_report_parses_with_plots_and_suspects(tmp_path):
    mined = sample_mined(range_min=0, num_negatives=3, relative_margin=None)
    path = tmp_path / "r.html"
    text = mined.report(html=path)
    assert "hardneg mining report" in text
    html = path.read_text(encoding="utf-8")
    p = parse(html)
    check_self_contained(p)
    assert p.tags.count("svg") == 3 and "rect" in p.tags
    sus = [t for t in p.tables if t["class"] == "suspects"]
    assert len(sus) == 1
    header, body = sus[0]["rows"][0], sus[0]["rows"][1:]
    assert header[:4] == ["query id", "query", "its positive", "suspect negative"]
    ref = false_negative_suspects(mined, 30)
    assert len(body) == len(ref) == 30
    ds = mined.dataset
    margins = [a - s for _, _, _, s, a in ref]
    assert margins == sorted(margins)
    # the smallest margin anywhere: a brute-force scan
    valid = mined.ids >= 0
    m = np.where(valid, (mined.positive_scores - mined.scores).astype(np.float64), np.inf)
    assert margins[0] == pytest.approx(float(m.min()), abs=1e-6)
    # one per query: the queries whose closest negative is closest, in that order
    per_query = m.min(axis=1)
    assert [q for q, *_ in ref] == np.argsort(per_query, kind="stable")[:30].tolist()
    j, neg, pos, _, _ = ref[0]
    assert body[0][0] == ds.query_ids[j] and body[0][1] == ds.query_texts[j]
    assert body[0][3].startswith(ds.corpus_ids[neg] + ": ") and body[0][2].startswith(ds.corpus_ids[pos] + ": ")


def test_texts_are_escaped_and_sources_shown():
    corpus = {f"d{i}": f"<script>alert({i})</script> & doc {i}" for i in range(30)}
    queries = {f"q{j}": f"<b>query</b> {j} & \"x\"" for j in range(5)}
    qrels = {f"q{j}": {f"d{j}": 1} for j in range(5)}
    ds = hd.from_dict(corpus, queries, qrels)
    rng = np.random.default_rng(0)
    C = rng.normal(size=(30, 4)).astype(np.float32)
    Q = rng.normal(size=(5, 4)).astype(np.float32)
    mined = mine_hard_negatives(ds, negatives_from={"dense": 2, "bm25": 2}, corpus_embeddings=C, query_embeddings=Q,
                                range_min=0, range_max=20, relative_margin=None, progress=False)
    html = render_html_report(mined)
    assert "<script" not in html and "&lt;script&gt;" in html
    p = parse(html)
    check_self_contained(p)
    assert any("alert(" in t for t in p.text)  # the text is there, as text
    per_source = [t for t in p.tables if t["rows"] and t["rows"][0][:1] == ["source"]]
    assert len(per_source) == 1 and [r[0] for r in per_source[0]["rows"][1:]] == ["dense", "bm25"]


def test_empty_and_degenerate_results_render():
    ds = hd.from_dict({"d0": "a", "d1": "b"}, {"q0": "a"}, {"q0": {"d0": 1}})
    mined = mine_hard_negatives(ds, corpus_embeddings=np.ones((2, 2), np.float32),
                                query_embeddings=np.ones((1, 2), np.float32), range_min=0, range_max=5,
                                num_negatives=1, relative_margin=0.05, progress=False)
    p = parse(render_html_report(mined))
    assert p.tags.count("svg") == 3


def test_cli_report_html(capsys, tmp_path):
    out = tmp_path / "n.jsonl"
    assert main(["mine", "-q", "--format", "flagembedding", "-o", str(out), "--require-positive-in-top", "2"]) == 0
    capsys.readouterr()
    html = tmp_path / "r.html"
    assert main(["report", str(out), "--html", str(html)]) == 0
    text, _ = capsys.readouterr()
    assert "hardneg mining report" in text and "positive not in the top 2" in text
    p = parse(html.read_text(encoding="utf-8"))
    assert p.tags.count("svg") == 3 and any(t["class"] == "suspects" for t in p.tables)


@pytest.mark.skipif(not (SCIFACT / "embeddings" / "minilm-corpus.npy").is_file(), reason="SciFact not available")
def test_scifact_report_under_2_mb(tmp_path):
    ds = hd.load_beir(SCIFACT, "train")
    emb = SCIFACT / "embeddings"
    mined = mine_hard_negatives(ds, corpus_embeddings=emb / "minilm-corpus.npy",
                                query_embeddings=emb / "minilm-queries.npy", progress=False)
    path = tmp_path / "scifact.html"
    mined.report(html=path)
    assert path.stat().st_size < 2 * 1024 * 1024
    p = parse(path.read_text(encoding="utf-8"))
    check_self_contained(p)
    assert p.tags.count("svg") == 3
    sus = [t for t in p.tables if t["class"] == "suspects"]
    assert len(sus) == 1 and len(sus[0]["rows"]) == 31
