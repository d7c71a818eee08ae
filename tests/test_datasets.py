"""BEIR loading: order, texts, qrels formats, missing ids, errors."""
from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest

from hardneg import datasets as hd


def write_beir(root, qrels_lines, header=True, gz=False):
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"},
              {"_id": "d3", "text": "three"}]
    queries = [{"_id": "qa", "text": "alpha"}, {"_id": "qb", "text": "beta"}, {"_id": "qc", "text": "gamma"}]
    op = (lambda p: gzip.open(str(p) + ".gz", "wt", encoding="utf-8")) if gz else (lambda p: open(p, "w"))
    with op(root / "corpus.jsonl") as f:
        f.write("\n".join(json.dumps(x) for x in corpus) + "\n\n")
    with op(root / "queries.jsonl") as f:
        f.write("\n".join(json.dumps(x) for x in queries) + "\n")
    with open(root / "qrels" / "train.tsv", "w") as f:
        if header:
            f.write("query-id\tcorpus-id\tscore\n")
        f.write("\n".join(qrels_lines) + "\n")


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir_order_texts_and_qrels(tmp_path, gz):
    write_beir(tmp_path, ["qc\td1\t1", "qa\td2\t2", "qa\td3\t0"], gz=gz)
    ds = hd.load_beir(tmp_path, "train")
    assert ds.corpus_ids == ["d1", "d2", "d3"]
    assert ds.corpus_texts == ["T1 one", "two", "three"]
    assert ds.query_ids == ["qa", "qc"]  # file order, only judged queries
    assert ds.query_texts == ["alpha", "gamma"]
    assert ds.query_rows.tolist() == [0, 2]
    assert ds.qrels == {"qa": {"d2": 2, "d3": 0}, "qc": {"d1": 1}}
    assert [p.tolist() for p in ds.positives()] == [[1], [0]]  # relevance 0 is not a positive
    assert ds.missing_qrels == 0


def test_trec_qrels_and_missing_ids_warn(tmp_path):
    write_beir(tmp_path, ["qa 0 d1 1", "qa 0 nope 1", "qz 0 d2 1", "qb 0 d3 1"], header=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = hd.load_beir(tmp_path, "train")
    assert ds.missing_qrels == 2
    msg = " ".join(str(x.message) for x in w)
    assert "1 judgement(s) name documents absent" in msg and "1 judgement(s) name queries absent" in msg
    assert ds.query_ids == ["qa", "qb"]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        hd.load_beir(tmp_path / "none", "train")
    write_beir(tmp_path, ["qa\td1\t1"])
    with pytest.raises(FileNotFoundError, match="available: train"):
        hd.load_beir(tmp_path, "dev")
    with open(tmp_path / "qrels" / "bad.tsv", "w") as f:
        f.write("qa\td1\t1\nqa\td2\tx\n")
    with pytest.raises(ValueError, match="not an integer"):
        hd.load_beir(tmp_path, "bad")
    with open(tmp_path / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d1", "text": "again"}\n')
    with pytest.raises(ValueError, match="duplicate document id"):
        hd.load_beir(tmp_path, "train")


def test_from_dict_and_sample():
    ds = hd.from_dict({"a": {"title": "t", "text": "x"}, "b": "y"}, {"q": "query"}, {"q": {"b": 1}})
    assert ds.corpus_texts == ["t x", "y"] and ds.positives()[0].tolist() == [1]
    s = hd.load_sample("test")
    assert s.num_queries == 10 and s.num_docs == 200
    c, q = hd.find_embeddings(hd.sample_path())
    assert np.load(c).dtype == np.float16
