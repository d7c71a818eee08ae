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


# ---------------------------------------------------------------------------------------------- bad input


def test_from_dict_refuses_what_load_beir_refuses():
    ok_c, ok_q, ok_r = {"d1": "one", "d2": "two"}, {"q": "query"}, {"q": {"d1": 1}}
    with pytest.raises(ValueError, match=r"corpus\['d2'\] is None"):
        hd.from_dict({"d1": "one", "d2": None}, ok_q, ok_r)
    with pytest.raises(ValueError, match=r"queries\['q'\] is None"):
        hd.from_dict(ok_c, {"q": None}, ok_r)
    with pytest.raises(TypeError, match=r"corpus\['d1'\]\['text'\]"):
        hd.from_dict({"d1": {"title": "t", "text": ["a", "list"]}}, ok_q, ok_r)
    with pytest.raises(ValueError, match=r"qrels\['q'\]\['d1'\] = 1.7 is not an integer"):
        hd.from_dict(ok_c, ok_q, {"q": {"d1": 1.7}})
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"qrels\['q'\]\['d1'\]"):
            hd.from_dict(ok_c, ok_q, {"q": {"d1": bad}})
    with pytest.raises(TypeError, match=r"qrels\['q'\]\['d1'\]"):
        hd.from_dict(ok_c, ok_q, {"q": {"d1": "1"}})
    with pytest.raises(TypeError, match=r"qrels\['q'\] must be a dict"):
        hd.from_dict(ok_c, ok_q, {"q": ["d1"]})
    # what load_beir accepts stays accepted: 1.0, numpy ints, missing / None title
    ds = hd.from_dict({"d1": {"text": "one", "title": None}, "d2": "two"}, ok_q, {"q": {"d1": 1.0, "d2": np.int64(2)}})
    assert ds.qrels == {"q": {"d1": 1, "d2": 2}} and ds.corpus_texts == ["one", "two"]


def _expect_file_line(tmp_path, name, line, exc=ValueError):
    with pytest.raises(exc) as e:
        hd.load_beir(tmp_path, "train")
    msg = str(e.value)
    assert f"{name}:{line}:" in msg, msg
    return msg


def test_load_beir_bad_bytes_name_the_file_and_line(tmp_path):
    write_beir(tmp_path, ["qa\td1\t1"])
    corpus = tmp_path / "corpus.jsonl"
    good = corpus.read_bytes()
    # a Latin-1 byte on line 2
    lines = good.split(b"\n")
    lines[1] = lines[1].replace(b"two", b"tw\xe9")
    corpus.write_bytes(b"\n".join(lines))
    msg = _expect_file_line(tmp_path, "corpus.jsonl", 2)
    assert "UTF-8" in msg and "0xe9" in msg
    # deeply nested JSON on line 3
    corpus.write_bytes(good.replace(b'"three"}', b'"three", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"))
    assert "nested" in _expect_file_line(tmp_path, "corpus.jsonl", 3)
    corpus.write_bytes(good)
    # relevance inf / nan in the qrels
    for bad in ("inf", "nan", "1e400"):
        (tmp_path / "qrels" / "train.tsv").write_text(f"query-id\tcorpus-id\tscore\nqa\td1\t1\nqb\td2\t{bad}\n")
        _expect_file_line(tmp_path, "train.tsv", 3)
    (tmp_path / "qrels" / "train.tsv").write_bytes(b"qa\td1\t1\nq\xff\td2\t1\n")
    _expect_file_line(tmp_path, "train.tsv", 2)


def test_load_beir_corrupt_gzip_names_the_file(tmp_path):
    write_beir(tmp_path, ["qa\td1\t1"], gz=True)
    gz = tmp_path / "corpus.jsonl.gz"
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="corpus.jsonl.gz:.*gzip"):
        hd.load_beir(tmp_path, "train")
    gz.write_bytes(data[:12] + bytes(b ^ 0x5A for b in data[12:-8]) + data[-8:])  # garbled
    with pytest.raises(ValueError, match="corpus.jsonl.gz"):
        hd.load_beir(tmp_path, "train")


def test_dataset_owns_its_caches(tmp_path):
    ds = hd.from_dict({"a": "x", "b": "y", "c": "x"}, {"q1": "x", "q2": "z"}, {"q1": {"b": 1}, "q2": {"a": 1}})
    ti = ds.text_index()
    assert ti is ds.text_index() and ti.rows_with_text("x") == [0, 2] and ti.rows_with_text("nope") == []
    assert ti.may_contain(["x", "y", "nope"]).tolist()[:2] == [True, True]
    full = np.arange(6, dtype=np.float32).reshape(3, 2)  # one row per query of the file... here 2 split queries
    assert ds.split_query_embeddings(full[:2]) is not None
    with pytest.raises(ValueError, match="my_name has 3 rows"):
        ds.split_query_embeddings(full, "my_name")
    write_beir(tmp_path, ["qc\td1\t1", "qa\td2\t2"])
    ds2 = hd.load_beir(tmp_path, "train")
    Q = np.arange(9, dtype=np.float32).reshape(3, 3)
    a = ds2.split_query_embeddings(Q, cache_key="k")
    np.testing.assert_array_equal(a, Q[[0, 2]])
    assert ds2.split_query_embeddings(Q, cache_key="k") is a and not a.flags.writeable
    assert ds2.split_query_embeddings(Q) is not a
