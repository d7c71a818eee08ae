"""Property-based tests of the public entry points against independent references.

- top-k (ip, cosine, l2; exclusions; huge and tiny rows) against float64 numpy brute force;
- BM25 (five variants) against bm25s on the same tokens;
- ``evaluate`` against pytrec_eval;
- ``InfoNCELoss`` against a float64 torch-autograd loss;
- garbage into every entry point, in a child process: a TypeError/ValueError or a result, never a
  crash, a hang or another exception.

Profiles: the default runs in CI in well under a minute or two; ``HARDNEG_FUZZ=long`` (optionally
``HARDNEG_FUZZ_EXAMPLES=N``) is the long profile, e.g. for an hour:
``python tests/fuzz_long.py --minutes 60`` (tests/fuzz_long.py cycles through the tests).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hardneg as hn  # noqa: E402

LONG = os.environ.get("HARDNEG_FUZZ") == "long"
settings.register_profile("hardneg-ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("hardneg-long", max_examples=int(os.environ.get("HARDNEG_FUZZ_EXAMPLES", "20000")),
                          deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = settings.get_profile("hardneg-long" if LONG else "hardneg-ci")


# ---------------------------------------------------------------------------------------------- top-k

@st.composite
def dense_case(draw):
    n = draw(st.integers(0, 60))
    q = draw(st.integers(1, 5))
    d = draw(st.integers(1, 12))
    k = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**31))
    kind = draw(st.sampled_from(["gauss", "ints", "dups", "scaled"]))
    rng = np.random.default_rng(seed)
    if kind == "ints":  # exact float32 arithmetic, many ties
        C = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
        Q = rng.integers(-3, 4, size=(q, d)).astype(np.float32)
    elif kind == "dups":  # identical rows: equal scores, ties by id
        base = rng.standard_normal((max(1, n // 4), d)).astype(np.float32)
        C = base[rng.integers(0, base.shape[0], size=n)] if n else np.zeros((0, d), np.float32)
        Q = rng.standard_normal((q, d)).astype(np.float32)
    else:
        C = rng.standard_normal((n, d)).astype(np.float32)
        Q = rng.standard_normal((q, d)).astype(np.float32)
    if kind == "scaled":  # per-row magnitudes over the whole float32 range
        C *= (10.0 ** rng.uniform(-25, 25, size=(n, 1))).astype(np.float32)
        Q *= (10.0 ** rng.uniform(-25, 25, size=(q, 1))).astype(np.float32)
    metric = draw(st.sampled_from(["ip", "cosine", "l2"] if kind != "scaled" else ["cosine"]))
    excl = [sorted(set(rng.integers(0, max(1, n), size=int(rng.integers(0, 4))).tolist())) if n else []
            for _ in range(q)]
    return Q, C, k, metric, excl


def _reference(Q, C, metric, excl):
    Q64, C64 = Q.astype(np.float64), C.astype(np.float64)
    if metric == "cosine":
        qn = np.linalg.norm(Q64 / np.abs(Q64).max(axis=1, keepdims=True).clip(1e-300), axis=1, keepdims=True)
        Qs = Q64 / np.abs(Q64).max(axis=1, keepdims=True).clip(1e-300) / np.where(qn > 0, qn, 1)
        cm = np.abs(C64).max(axis=1, keepdims=True).clip(1e-300) if C.shape[0] else np.ones((0, 1))
        cn = np.linalg.norm(C64 / cm, axis=1, keepdims=True)
        Cs = C64 / cm / np.where(cn > 0, cn, 1)
        S = Qs @ Cs.T
    elif metric == "ip":
        S = Q64 @ C64.T
    else:
        S = (Q64 ** 2).sum(1)[:, None] - 2 * Q64 @ C64.T + (C64 ** 2).sum(1)[None, :]
    for j, ex in enumerate(excl):
        S[j, ex] = np.nan
    return S


@PROFILE
@given(dense_case())
def test_topk_matches_numpy(case):
    Q, C, k, metric, excl = case
    if metric == "l2" or metric == "ip":
        assume(np.isfinite(Q.astype(np.float64) @ C.astype(np.float64).T).all())
    if C.shape[0] == 0:  # an empty corpus is refused, naming it
        with pytest.raises(ValueError, match="corpus"):
            hn.topk(Q, C, k=k, metric=metric, exclude=excl)
        return
    s, i = hn.topk(Q, C, k=k, metric=metric, exclude=excl)
    S = _reference(Q, C, metric, excl)
    n = C.shape[0]
    assert s.shape == i.shape == (Q.shape[0], k)
    for j in range(Q.shape[0]):
        ok = [x for x in range(n) if not np.isnan(S[j, x])]
        got = [int(x) for x in i[j] if x >= 0]
        assert len(got) == min(k, len(ok)), (j, got)
        assert len(set(got)) == len(got) and not set(got) & set(excl[j])
        assert np.all(i[j, len(got):] == -1)
        ref = S[j, got]
        tol = 1e-4 * (1 + np.abs(S[j, ok]).max()) if ok else 0
        assert np.allclose(s[j, :len(got)], ref, rtol=1e-4, atol=tol), (metric, s[j], ref)
        # nothing left out scores better than the last one kept (beyond rounding)
        if got and len(got) < len(ok):
            rest = [x for x in ok if x not in set(got)]
            worst = S[j, got[-1]]
            best_rest = (S[j, rest].min() if metric == "l2" else S[j, rest].max())
            assert (best_rest >= worst - tol) if metric == "l2" else (best_rest <= worst + tol)
        if metric == "cosine" and got:
            assert np.all(np.abs(s[j, :len(got)]) <= 1 + 1e-5)


# ---------------------------------------------------------------------------------------------- BM25

@st.composite
def bm25_case(draw):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(draw(st.integers(1, 30)))]
    n = draw(st.integers(1, 40))
    docs = [[vocab[int(t)] for t in rng.integers(0, len(vocab), size=int(rng.integers(0, 15)))] for _ in range(n)]
    queries = [[vocab[int(t)] for t in rng.integers(0, len(vocab), size=int(rng.integers(1, 5)))] for _ in range(3)]
    method = draw(st.sampled_from(["robertson", "lucene", "atire", "bm25l", "bm25+"]))
    k1 = draw(st.sampled_from([0.5, 1.2, 1.5, 2.0]))
    b = draw(st.sampled_from([0.0, 0.3, 0.75, 1.0]))
    delta = draw(st.sampled_from([0.25, 0.5, 1.0]))
    return docs, queries, method, k1, b, delta


@PROFILE
@given(bm25_case())
def test_bm25_matches_bm25s(case):
    bm25s = pytest.importorskip("bm25s")
    docs, queries, method, k1, b, delta = case
    assume(any(docs))
    bm = hn.BM25(method=method, k1=k1, b=b, delta=delta, stopwords=None, stemmer=None)
    bm.index([" ".join(d) for d in docs])
    ref = bm25s.BM25(method=method, k1=k1, b=b, delta=delta)
    ref.index(docs, show_progress=False)
    n = len(docs)
    ours = bm.score([" ".join(q) for q in queries], np.tile(np.arange(n), (len(queries), 1)))
    for j, q in enumerate(queries):
        known = [t for t in q if t in ref.vocab_dict]
        want = ref.get_scores(known).astype(np.float64) if known else np.zeros(n)
        np.testing.assert_allclose(ours[j], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- metrics

@st.composite
def eval_case(draw):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(draw(st.integers(1, 30)))]
    qrels, run = {}, {}
    for qi in range(draw(st.integers(1, 8))):
        q = f"q{qi}"
        judged = rng.choice(docs, size=int(rng.integers(1, len(docs) + 1)), replace=False)
        qrels[q] = {str(d): int(rng.choice([0, 1, 1, 2, 3])) for d in judged}
        ret = rng.choice(docs, size=int(rng.integers(0, len(docs) + 1)), replace=False)
        tie = rng.random() < 0.5
        run[q] = {str(d): float(rng.integers(0, 4)) if tie else float(rng.random()) for d in ret}
    return qrels, run


@PROFILE
@given(eval_case())
def test_evaluate_matches_pytrec_eval(case):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = case
    names = {"ndcg@10": "ndcg_cut_10", "recall@5": "recall_5", "p@5": "P_5", "map": "map",
             "recip_rank": "recip_rank", "ndcg": "ndcg"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.5", "P.5", "map", "recip_rank",
                                                 "ndcg"}).evaluate(run)
    ours = hn.evaluate(qrels, run, list(names), per_query=True)
    for name, tname in names.items():
        for i, q in enumerate(run):
            if q in ref:
                assert ours[name][i] == pytest.approx(ref[q][tname], abs=1e-9), (name, q)


# ---------------------------------------------------------------------------------------------- losses

@st.composite
def loss_case(draw):
    B = draw(st.integers(1, 6))
    n = draw(st.integers(0, 3))
    d = draw(st.integers(1, 8))
    similarity = draw(st.sampled_from(["cosine", "dot"]))
    scale = draw(st.sampled_from([1.0, 20.0]))
    magnitude = draw(st.sampled_from([1.0, 1e-20, 1e19] if similarity == "cosine" else [1.0, 0.1]))
    seed = draw(st.integers(0, 2**31))
    return B, n, d, similarity, scale, magnitude, seed


@PROFILE
@given(loss_case())
def test_infonce_matches_float64_autograd(case):
    torch = pytest.importorskip("torch")
    B, n, d, similarity, scale, magnitude, seed = case
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, d, generator=g) * magnitude).requires_grad_(True)
    p = (torch.randn(B, d, generator=g) * magnitude).requires_grad_(True)
    neg = (torch.randn(B, n, d, generator=g) * magnitude).requires_grad_(True) if n else None
    loss_fn = hn.InfoNCELoss(similarity=similarity, scale=scale)
    loss = loss_fn(q, p, neg) if neg is not None else loss_fn(q, p)
    loss.backward()

    def ref_loss(q, p, neg):
        q, p = q.double(), p.double()
        cands = p if neg is None else torch.cat([p, neg.double().reshape(-1, d)])
        if similarity == "cosine":
            def unit(x):
                m = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
                y = x / m
                return y / y.norm(dim=1, keepdim=True).clamp_min(1e-300)
            s = unit(q) @ unit(cands).T
        else:
            s = q @ cands.T
        return torch.nn.functional.cross_entropy(s * scale, torch.arange(B))

    q2, p2 = q.detach().clone().requires_grad_(True), p.detach().clone().requires_grad_(True)
    n2 = neg.detach().clone().requires_grad_(True) if neg is not None else None
    ref = ref_loss(q2, p2, n2)
    ref.backward()
    assert math.isfinite(float(loss.detach()))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-5)
    for a, b_ in ((q, q2), (p, p2)) + (((neg, n2),) if neg is not None else ()):
        ga, gb = a.grad.double(), b_.grad.double()
        # float32 rounding of the logits (times scale), over gradients that scale as 1 / |row|
        rows = torch.cat([q2.detach().double(), p2.detach().double()]
                         + ([n2.detach().double().reshape(-1, d)] if n2 is not None else []))
        tol = 1e-4 * float(gb.abs().max()) + 1e-5 * scale / float(rows.norm(dim=1).min().clamp_min(1e-300))
        assert torch.allclose(ga, gb, rtol=1e-3, atol=tol)


# ---------------------------------------------------------------------------------------------- garbage

_GARBAGE_CHILD = textwrap.dedent(r'''
    import math, random, resource, sys, warnings
    # a bounded address space: an allocation sized by a bad argument fails here as MemoryError
    # (a finding) instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import numpy as np
    import hardneg as hn
    warnings.simplefilter("ignore")
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    rnd = random.Random(seed)

    def arr():
        kind = rnd.choice(["f32", "f64", "f16", "int", "bool", "obj", "complex", "nan", "inf", "0d", "1d", "3d",
                           "empty", "fortran", "strided", "readonly", "list", "none", "str", "huge"])
        shape = (rnd.randint(0, 4), rnd.randint(0, 5))
        a = np.random.default_rng(rnd.randint(0, 10**6)).standard_normal(shape)
        if kind == "f32": return a.astype(np.float32)
        if kind == "f64": return a
        if kind == "f16": return a.astype(np.float16)
        if kind == "int": return (a * 10).astype(np.int64)
        if kind == "bool": return a > 0
        if kind == "obj": return a.astype(object)
        if kind == "complex": return a.astype(np.complex64)
        if kind == "nan": b = a.astype(np.float32); b.flat[:1] = np.nan; return b
        if kind == "inf": b = a.astype(np.float32); b.flat[:1] = np.inf; return b
        if kind == "0d": return np.float32(1.0)
        if kind == "1d": return a.ravel().astype(np.float32)
        if kind == "3d": return a.astype(np.float32)[None]
        if kind == "empty": return np.zeros((0, shape[1]), np.float32)
        if kind == "fortran": return np.asfortranarray(a.astype(np.float32))
        if kind == "strided": return a.astype(np.float32)[:, ::2]
        if kind == "readonly": b = a.astype(np.float32); b.flags.writeable = False; return b
        if kind == "list": return a.tolist()
        if kind == "none": return None
        if kind == "str": return "abc"
        return (a * 3e38).astype(np.float32)

    def scalar():
        return rnd.choice([-1, 0, 1, 2, 5, 10**12, 2**31, 2**63, 1.5, float("nan"), float("inf"), None, True, "3",
                           np.int64(3), np.float32(2.0)])

    def text():
        return rnd.choice(["", "a b c", None, 3, "ü" * 50, "\x00x", b"bytes", ["x"], "fox dog"])

    def metric():
        return rnd.choice(["ip", "cosine", "l2", "IP", "", None, 3, "ndcg@10", "ndcg@99999999999999999999",
                           "p@0", "recall@-1", "map", "hits@3", "mrr@x"])

    calls = [
        lambda: hn.topk(arr(), arr(), k=scalar(), metric=metric()),
        lambda: hn.topk(arr(), arr(), k=scalar(), exclude=rnd.choice([[[0]], [[-5]], [[10**12]], "x", [[None]], None])),
        lambda: hn.DenseIndex(arr(), metric=metric()).search(arr(), k=scalar()),
        lambda: hn.BM25(k1=scalar(), b=scalar(), delta=scalar(), method=rnd.choice(["lucene", "bm25l", "bm25+", "x"])).index([text() for _ in range(3)]),
        lambda: hn.BM25(stemmer=None).index(["a b", "b c"]) or None,
        lambda: (lambda bm: (bm.index(["fox dog", "cat"]), bm.search([text()], k=scalar())))(hn.BM25(stemmer=None)),
        lambda: hn.evaluate({"q": {"d": scalar()}}, {"q": {"d": scalar()}}, [metric()]),
        lambda: hn.evaluate({"q": {"d": 1}}, np.array([[0, scalar()]]), ["ndcg@10"], query_ids=["q"], corpus_ids=["d", "d"]),
        lambda: hn.fuse([{"q": {"d": scalar()}}, {"q": {"e": scalar()}}], method=rnd.choice(["rrf", "combsum", "x"])),
        lambda: hn.datasets.from_dict({"d": text()}, {"q": text()}, {"q": {"d": scalar()}}),
        lambda: hn.mine_hard_negatives(hn.datasets.from_dict({"d0": "a", "d1": "b", "d2": "c"}, {"q": "a"}, {"q": {"d0": 1}}),
                                       corpus_embeddings=arr(), query_embeddings=arr(), num_negatives=scalar(),
                                       range_min=scalar(), range_max=scalar(), progress=False),
    ]
    bad = []
    for i in range(count):
        which = rnd.randrange(len(calls))
        fn = calls[which]
        try:
            fn()
        except (TypeError, ValueError, KeyError, IndexError, LookupError, OverflowError):
            # KeyError/IndexError/OverflowError only count when they name something; report the rest
            e = sys.exc_info()[1]
            if not isinstance(e, (TypeError, ValueError)):
                bad.append(f"call {which}: {type(e).__name__}: {e}")
        except (ImportError, FileNotFoundError):  # a path that names no file (a string as an array)
            pass
        except Exception as e:  # anything else (MemoryError included) is a finding
            bad.append(f"call {which}: {type(e).__name__}: {str(e)[:300]}")
    print("\n".join(sorted(set(bad))[:30]))
    sys.exit(1 if bad else 0)
''')


_SEED_BASE = int(os.environ.get("HARDNEG_FUZZ_SEED_BASE", "0"))


@pytest.mark.parametrize("seed", range(_SEED_BASE, _SEED_BASE + (3 if not LONG else 20)))
def test_garbage_in_a_child_process(seed):
    count = 150 if not LONG else 2000
    r = subprocess.run([sys.executable, "-c", _GARBAGE_CHILD, str(seed), str(count)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"seed {seed}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
