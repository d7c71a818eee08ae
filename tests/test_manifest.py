"""The manifest beside every mined file, and running it again (byte-identical; changed inputs named)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import hardneg as hn
from hardneg import datasets as hd
from hardneg.cli import main
from hardneg.manifest import dataset_fingerprint, digest_array, manifest_path, read_manifest
from hardneg.mining import mine_hard_negatives


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hardneg: error: "), (code, err)
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def sample(tmp_path):
    dst = tmp_path / "sample"
    shutil.copytree(hd.sample_path(), dst)
    return dst


@pytest.mark.parametrize("fmt,name", [("flagembedding", "a.jsonl"), ("ids", "a.jsonl.gz"),
                                      ("sentence-transformers", "a.jsonl")])
def test_cli_round_trip_is_byte_identical(capsys, tmp_path, sample, fmt, name):
    a, b = tmp_path / name, tmp_path / "again" / name  # the same name: a .gz header holds it
    b.parent.mkdir()
    code, _, err = run(capsys, "mine", "-q", "--dataset", sample, "--negatives-from", "bm25:2,dense:3",
                       "--require-positive-in-top", "3", "--sampling", "random", "--seed", "5", "--format", fmt,
                       "-o", a)
    assert code == 0, err
    m = read_manifest(manifest_path(a))
    assert m["hardneg_version"] == hn.__version__ and m["retriever"] == "bm25+dense"
    assert m["knobs"]["seed"] == 5 and m["knobs"]["negatives_from"] == {"bm25": 2, "dense": 3}
    assert m["knobs"]["require_positive_in_top"] == 3 and m["output"]["format"] == fmt
    ds = hd.load_beir(sample, "train")
    fp = dataset_fingerprint(ds)
    assert {m["dataset"][k] for k in ("corpus_sha256", "queries_sha256", "qrels_sha256")} == \
        {fp[k] for k in ("corpus_sha256", "queries_sha256", "qrels_sha256")}
    ce, qe = hd.find_embeddings(sample)
    assert m["embeddings"]["corpus"]["sha256"] == digest_array(np.load(ce))
    assert m["embeddings"]["corpus"]["path"] == str(ce)
    assert "numpy" in m["peers"] and "total" in m["timings"] and m["counts"]["records"] > 0
    code, _, err = run(capsys, "mine", "-q", "--manifest", manifest_path(a), "-o", b)
    assert code == 0, err
    assert a.read_bytes() == b.read_bytes()
    assert read_manifest(manifest_path(b))["output"]["sha256"] == m["output"]["sha256"]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_python_save_writes_a_manifest_the_cli_runs_again(capsys, tmp_path, sample):
    ds = hd.load_beir(sample, "train")
    ce, qe = hd.find_embeddings(sample)
    mined = mine_hard_negatives(ds, corpus_embeddings=str(ce), query_embeddings=str(qe), range_min=0,
                                num_negatives=3, relative_margin=0.1, progress=False)
    out = tmp_path / "py.jsonl"
    mined.save(out, format="ids")
    m = json.loads(manifest_path(out).read_text())
    assert m["knobs"]["relative_margin"] == 0.1 and m["cli"] is None
    code, _, err = run(capsys, "mine", "-q", "--manifest", manifest_path(out), "-o", tmp_path / "again.jsonl")
    assert code == 0, err
    assert out.read_bytes() == (tmp_path / "again.jsonl").read_bytes()
    # embeddings given in memory cannot be found again by the command
    mined = mine_hard_negatives(ds, corpus_embeddings=np.load(ce), query_embeddings=np.load(qe), progress=False)
    mined.save(tmp_path / "mem.jsonl")
    code, _, err = run(capsys, "mine", "-q", "--manifest", manifest_path(tmp_path / "mem.jsonl"), "-o",
                       tmp_path / "x.jsonl")
    one_line_error(code, err, "in memory")


@pytest.mark.parametrize("what", ["corpus", "queries", "qrels", "embeddings"])
def test_a_changed_input_is_named_before_anything_runs(capsys, tmp_path, sample, what):
    a = tmp_path / "a.jsonl"
    assert run(capsys, "mine", "-q", "--dataset", sample, "-o", a)[0] == 0
    if what == "corpus":
        p = sample / "corpus.jsonl"
        p.write_text(p.read_text().replace("Yeast eats", "Yeast consumes"))
    elif what == "queries":
        p = sample / "queries.jsonl"
        p.write_text(p.read_text().replace("bread doughs", "bread dough"))
    elif what == "qrels":
        p = sample / "qrels" / "train.tsv"
        lines = p.read_text().splitlines()
        p.write_text("\n".join(lines[:-1]) + "\n")
    else:
        ce, _ = hd.find_embeddings(sample)
        arr = np.load(ce)
        arr[0] = arr[1]
        np.save(ce, arr)
    b = tmp_path / "b.jsonl"
    code, _, err = run(capsys, "mine", "-q", "--manifest", manifest_path(a), "-o", b)
    one_line_error(code, err, what, "changed")
    assert not b.exists()


def test_manifest_errors_are_one_line(capsys, tmp_path, sample):
    code, _, err = run(capsys, "mine", "-q", "--manifest", tmp_path / "none.manifest.json")
    one_line_error(code, err, "not found")
    a = tmp_path / "a.jsonl"
    assert run(capsys, "mine", "-q", "--dataset", sample, "-o", a)[0] == 0
    m = json.loads(manifest_path(a).read_text())
    m["hardneg_version"] = "0.0.1"
    other = tmp_path / "other.manifest.json"
    other.write_text(json.dumps(m))
    code, _, err = run(capsys, "mine", "-q", "--manifest", other)
    one_line_error(code, err, "0.0.1", hn.__version__)
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    code, _, err = run(capsys, "mine", "-q", "--manifest", junk)
    one_line_error(code, err, "not a hardneg manifest")
    junk.write_text("{")
    code, _, err = run(capsys, "mine", "-q", "--manifest", junk)
    one_line_error(code, err, "not JSON")


def test_stdout_output_writes_no_manifest(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "mine", "-q", "--format", "ids", "-o", "-")
    assert code == 0 and out and not list(tmp_path.iterdir())
