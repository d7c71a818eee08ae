"""Seeded bad-input campaign against the public API.

Rule under test: every call either succeeds with an output of the right shape (and,
for inputs that only differ in layout, the same result as the plain float32 call)
or raises ValueError / TypeError (ImportError for a missing optional dependency).
Never a crash, a hang, another exception type, or a silent result from NaN/Inf input.

The campaign runs in-process (fast, precise failure messages) and once more in a
subprocess (``test_campaign_subprocess_smoke``), so a segfault in the C++ core shows up
as one failed test instead of a dead pytest run.  Run this file as a script
(``python tests/test_robustness.py``) for the same smoke run by hand.
"""
from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

ACCEPT = (ValueError, TypeError, ImportError, FileNotFoundError)  # the last: a path that does not exist
SEED = 20261125
N, Q, D = 40, 5, 12


class Recorder:
    """Runs calls and collects rule violations (instead of stopping at the first)."""

    def __init__(self):
        self.failures = []
        self.calls = 0

    def run(self, label, fn, check=None, must_raise=False):
        self.calls += 1
        try:
            out = fn()
        except ACCEPT as e:
            if not str(e):
                self.failures.append(f"{label}: {type(e).__name__} without a message")
            return None
        except MemoryError:
            return None  # an honest answer to a request for a huge output
        except Exception as e:  # noqa: BLE001 - the point of the campaign
            self.failures.append(f"{label}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
            return None
        if must_raise:
            self.failures.append(f"{label}: succeeded on input that must be rejected")
            return None
        if check is not None:
            try:
                check(out)
            except AssertionError as e:
                self.failures.append(f"{label}: bad output: {e}")
        return out


def unaligned(a):
    """A C-contiguous copy of ``a`` that starts at an odd byte offset (numpy flags it unaligned)."""
    a = np.asarray(a)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _np(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------- input zoo
def vector_variants(rng, rows, d):
    """(label, value, kind) where kind is 'same' (same values as base, any layout),
    'ok' (valid, maybe rounded), 'bad' (must raise) or 'any' (raise or correct shape)."""
    base = rng.standard_normal((rows, d)).astype(np.float32)
    v = [("f32", base, "same"), ("f64", base.astype(np.float64), "same"), ("f16", base.astype(np.float16), "ok"),
         ("int8", (base * 10).astype(np.int8), "ok"), ("int64", (base * 10).astype(np.int64), "ok"),
         ("fortran", np.asfortranarray(base), "same"),
         ("col_stride", np.repeat(base, 2, axis=1)[:, ::2], "same"),
         ("row_stride", np.repeat(base, 2, axis=0)[::2], "same"),
         ("neg_stride", base[::-1][::-1], "same"), ("reversed", base[::-1].copy()[::-1], "same"),
         ("list", base.tolist(), "same"), ("unaligned", unaligned(base), "same"),
         ("unaligned_f16", unaligned(base.astype(np.float16)), "ok")]
    ro = base.copy()
    ro.flags.writeable = False
    v.append(("readonly", ro, "same"))
    nan = base.astype(np.float64)
    nan[rows // 2, d // 2] = np.nan
    inf = base.copy()
    inf[0, 0] = np.inf
    v += [("nan", nan, "bad"), ("inf", inf, "bad"), ("f32_overflow", np.full((rows, d), 1e39), "bad"),
          ("bool", base > 0, "bad"), ("complex", base.astype(np.complex64), "bad"),
          ("object", base.astype(object), "any"), ("str", base.astype(str), "bad"),
          ("none", None, "bad"), ("scalar0d", np.float32(1.0), "bad"), ("1d", base[0], "bad"),
          ("3d", base[:, :, None], "bad"), ("zero_cols", np.zeros((rows, 0), np.float32), "bad"),
          ("wrong_dim", rng.standard_normal((rows, d + 1)).astype(np.float32), "bad"),
          ("dict", {"a": 1}, "bad")]
    if torch is not None:
        t = torch.from_numpy(base.copy())
        v += [("torch_grad", t.clone().requires_grad_(True), "same"), ("torch_bf16", t.to(torch.bfloat16), "ok"),
              ("torch_f64", t.double(), "same"), ("torch_noncontig", torch.from_numpy(np.repeat(base, 2, 1))[:, ::2],
                                                   "same"),
              ("torch_t", t.t().contiguous().t(), "same"), ("torch_int", (t * 10).to(torch.int32), "ok"),
              ("torch_bool", t > 0, "bad"), ("torch_nan", torch.full((rows, d), float("nan")), "bad")]
    return v


K_VALUES = [("k1", 1, "ok"), ("k5", 5, "ok"), ("kN", N, "ok"), ("k>N", N + 7, "ok"), ("k0", 0, "bad"),
            ("kneg", -3, "bad"), ("kfloat", 2.5, "bad"), ("kfloat_int", 3.0, "bad"), ("kstr", "3", "bad"),
            ("kbool", True, "bad"), ("knone", None, "bad"), ("knp", np.int64(4), "ok"),
            ("khuge", 10**12, "any"), ("k2^63", 2**63, "bad"), ("k2^70", 2**70, "bad")]
METRIC_VALUES = [("ip", "ok"), ("cosine", "ok"), ("l2", "ok"), ("IP", "bad"), ("dot", "bad"), (None, "bad"),
                 (3, "bad"), ("", "bad")]


def exclude_variants(nq, n):
    return [("none", None, "ok"), ("lists", [[0, 1]] * nq, "ok"), ("padded", np.full((nq, 3), -1), "ok"),
            ("csr", (np.arange(nq + 1), np.zeros(nq, np.int64)), "ok"),
            ("oob", [[n]] * nq, "bad"), ("negative", [[-5]] * nq, "bad"), ("short", [[0]] * (nq + 1), "bad"),
            ("float_ids", [[0.5]] * nq, "bad"), ("bad_csr", (np.array([0, 5]), np.zeros(1, np.int64)), "bad"),
            ("csr_decreasing", (np.r_[0, 2, 1, np.full(nq - 2, 1)], np.zeros(1, np.int64)), "bad"),
            ("huge_uint", [np.array([2**63 + 5], np.uint64)] * nq, "bad"), ("str", "abc", "bad"),
            ("padded_uint64", np.full((nq, 2), 2**64 - 1, np.uint64), "bad"),
            ("csr_unaligned", (unaligned(np.arange(nq + 1)), unaligned(np.zeros(nq, np.int64))), "ok")]


def _topk_check(nq, k, n, ref=None):
    def check(out):
        s, i = _np(out[0]), _np(out[1])
        assert s.shape == (nq, k) and i.shape == (nq, k), f"shapes {s.shape} {i.shape}, want {(nq, k)}"
        assert i.dtype == np.int64 and ((i >= -1) & (i < n)).all(), "ids out of range"
        assert not np.isnan(s).any(), "NaN score"
        if ref is not None:
            np.testing.assert_array_equal(i, ref[1])
            np.testing.assert_array_equal(s, ref[0])
    return check


# ------------------------------------------------------------------- campaigns
def campaign_topk(rec, rng, n_random=150):
    corpus_v = vector_variants(rng, N, D)
    query_v = vector_variants(rng, Q, D)
    base_c, base_q = corpus_v[0][1], query_v[0][1]
    ref = {m: hn.topk(base_q, base_c, k=7, metric=m) for m in ("ip", "cosine", "l2")}

    def one(qlab, qv, qkind, clab, cv, ckind, klab, k, kkind, metric, mkind, xlab, ex, xkind, via):
        label = f"{via}(queries={qlab}, corpus={clab}, k={klab}, metric={metric!r}, exclude={xlab})"
        bad = "bad" in (qkind, ckind, kkind, mkind, xkind)
        anyk = "any" in (qkind, ckind, kkind)
        nq = Q if qkind != "bad" else None
        r = ref[metric] if (qkind == ckind == "same" and k == 7 and xlab == "none" and mkind == "ok") else None
        check = _topk_check(nq, int(k), N, r) if not (bad or anyk) else None

        def call():
            if via == "topk":
                return hn.topk(qv, cv, k=k, metric=metric, exclude=ex)
            return hn.DenseIndex(cv, metric=metric).search(qv, k=k, exclude=ex)
        rec.run(label, call, check, must_raise=bad and not anyk)

    xv = exclude_variants(Q, N)
    ok_k, ok_m, ok_x = K_VALUES[1], ("ip", "ok"), xv[0]
    # every corpus and query variant with otherwise valid arguments, both entry points
    for via in ("topk", "index"):
        for m in ("ip", "cosine", "l2"):
            for lab, v, kind in corpus_v:
                one(*query_v[0], lab, v, kind, "k7", 7, "ok", m, "ok", *ok_x, via)
            for lab, v, kind in query_v:
                one(lab, v, kind, *corpus_v[0], "k7", 7, "ok", m, "ok", *ok_x, via)
        for klab, k, kk in K_VALUES:
            one(*query_v[0], *corpus_v[0], klab, k, kk, "ip", "ok", *ok_x, via)
        for m, mk in METRIC_VALUES:
            one(*query_v[0], *corpus_v[0], *ok_k, m, mk, *ok_x, via)
        for x in xv:
            one(*query_v[0], *corpus_v[0], *ok_k, *ok_m, *x, via)
    # empty corpus / empty queries
    empty = np.zeros((0, D), np.float32)
    rec.run("topk(empty corpus)", lambda: hn.topk(base_q, empty, k=3), must_raise=True)
    rec.run("DenseIndex(empty)", lambda: hn.DenseIndex(empty), must_raise=True)
    rec.run("topk(empty queries)", lambda: hn.topk(empty, base_c, k=3), _topk_check(0, 3, N))
    # random combinations
    for t in range(n_random):
        q = query_v[rng.integers(len(query_v))]
        c = corpus_v[rng.integers(len(corpus_v))]
        kv = K_VALUES[rng.integers(len(K_VALUES))]
        m = METRIC_VALUES[rng.integers(len(METRIC_VALUES))]
        x = xv[rng.integers(len(xv))]
        one(*q, *c, *kv, *m, *x, "topk" if t % 2 else "index")


def campaign_index_methods(rec, rng):
    base = rng.standard_normal((N, D)).astype(np.float32)
    idx = hn.DenseIndex(base, metric="cosine")
    for lab, v, kind in vector_variants(rng, 6, D):
        if kind == "any":
            rec.run(f"DenseIndex.add({lab})", lambda v=v: idx.add(v))
        else:
            rec.run(f"DenseIndex.add({lab})", lambda v=v: idx.add(v), must_raise=kind == "bad")
    n = len(idx)
    rec.run("DenseIndex.search after adds", lambda: idx.search(base[:3], k=4), _topk_check(3, 4, n))
    rec.run("DenseIndex(backend=bogus)", lambda: hn.DenseIndex(base, backend="bogus"), must_raise=True)
    rec.run("DenseIndex(num_threads=0)", lambda: hn.DenseIndex(base, num_threads=0), must_raise=True)
    for nt in (0, -1, 1.5, "2", True, 10**9, 2**40, 2**70):
        rec.run(f"topk(num_threads={nt!r})", lambda nt=nt: hn.topk(base[:2], base, k=2, num_threads=nt),
                must_raise=True)
    for b in ("gpu", None, 1):
        rec.run(f"topk(backend={b!r})", lambda b=b: hn.topk(base[:2], base, k=2, backend=b), must_raise=True)
    if torch is not None:  # the torch path (CUDA's, forced on CPU) with the same bad arguments
        tb = torch.from_numpy(base)
        rec.run("topk(torch backend)", lambda: hn.topk(tb[:2], tb, k=N + 2, backend="torch"), _topk_check(2, N + 2, N))
        for klab, k, kk in K_VALUES:
            if kk != "ok":
                rec.run(f"topk(torch backend, k={klab})", lambda k=k: hn.topk(tb[:2], tb, k=k, backend="torch"),
                        must_raise=kk == "bad")
        for mb in (0, -1, 1.5, "x", None, float("nan")):
            rec.run(f"topk(torch backend, memory_budget={mb!r})",
                    lambda mb=mb: hn.topk(tb[:2], tb, k=3, backend="torch", memory_budget=mb), must_raise=True)
        rec.run("topk(torch backend, memory_budget=1)",
                lambda: hn.topk(tb[:2], tb, k=3, backend="torch", memory_budget=1), _topk_check(2, 3, N))
        for lab, v, kind in vector_variants(rng, 3, D):
            rec.run(f"topk(torch backend, queries={lab})", lambda v=v: hn.topk(v, tb, k=3, backend="torch"),
                    _topk_check(3, 3, N) if kind in ("same", "ok") else None, must_raise=kind == "bad")
    rec.run("set_num_threads(0)", lambda: hn.set_num_threads(0), must_raise=True)
    rec.run("set_num_threads('x')", lambda: hn.set_num_threads("x"), must_raise=True)
    rec.run("set_num_threads(10**9)", lambda: hn.set_num_threads(10**9), must_raise=True)
    # more threads than work (and than cores): fine, same result
    rec.run("topk(num_threads=64)", lambda: hn.topk(base[:3], base, k=4, num_threads=64),
            _topk_check(3, 4, N, hn.topk(base[:3], base, k=4)))


def campaign_merge(rec, rng):
    s1 = -np.sort(-rng.standard_normal((Q, 4)).astype(np.float32), axis=1)
    i1 = rng.integers(0, 100, (Q, 4))
    s2 = -np.sort(-rng.standard_normal((Q, 3)).astype(np.float32), axis=1)
    i2 = rng.integers(100, 200, (Q, 3))
    chk = lambda k: _topk_check(Q, k, 200)  # noqa: E731
    rec.run("merge ok", lambda: hn.merge_topk([s1, s2], [i1, i2], k=5), chk(5))
    rec.run("merge fortran/readonly", lambda: hn.merge_topk([np.asfortranarray(s1), s2[:, ::-1][:, ::-1]],
                                                              [i1.T.copy().T, i2], k=5), chk(5))
    # views into a byte buffer at an odd offset (what distributed.topk's gather produces)
    rec.run("merge unaligned", lambda: hn.merge_topk([unaligned(s1), s2], [unaligned(i1), i2], k=5), chk(5))
    nan = s1.copy()
    nan[1, 2] = np.nan
    nan_all = np.full((Q, 40), np.nan, np.float32)
    cases = [
        ("nan scores", [nan, s2], [i1, i2], 5, True),
        ("all nan scores", [nan_all], [rng.integers(0, 50, (Q, 40))], 10, True),
        ("mismatched lists", [s1, s2], [i1], 5, True),
        ("mismatched shapes", [s1, s2], [i1, i2[:, :2]], 5, True),
        ("mismatched rows", [s1, s2[:2]], [i1, i2[:2]], 5, True),
        ("1-d", [s1[0]], [i1[0]], 5, True),
        ("3-d", [s1[None]], [i1[None]], 5, True),
        ("empty lists", [], [], 5, True),
        ("none", None, None, 5, True),
        ("str scores", [s1.astype(str)], [i1], 5, True),
        ("float ids", [s1], [i1 + 0.5], 5, True),
        ("uint64 ids", [s1], [np.full((Q, 4), 2**64 - 1, np.uint64)], 5, True),
        ("k0", [s1], [i1], 0, True),
        ("kfloat", [s1], [i1], 1.5, True),
        ("khuge", [s1], [i1], 2**70, True),
        ("k>total", [s1, s2], [i1, i2], 50, False),
        ("empty parts", [np.zeros((Q, 0), np.float32)], [np.zeros((Q, 0), np.int64)], 3, False),
    ]
    for lab, s, i, k, bad in cases:
        rec.run(f"merge_topk({lab})", lambda s=s, i=i, k=k: hn.merge_topk(s, i, k=k),
                None if bad else chk(k), must_raise=bad)
    rec.run("merge_topk(metric='x')", lambda: hn.merge_topk([s1], [i1], k=2, metric="x"), must_raise=True)
    # infinities are legal scores (an overflowing dot product) and must order correctly
    inf = s1.copy()
    inf[:, 0] = np.inf
    rec.run("merge_topk(+inf)", lambda: hn.merge_topk([inf], [i1], k=2), chk(2))


def campaign_fuse(rec, rng):
    ids = [rng.integers(-1, 30, (Q, 6)), rng.integers(-1, 30, (Q, 4))]
    sc = [rng.standard_normal((Q, 6)).astype(np.float32), rng.standard_normal((Q, 4)).astype(np.float32)]
    runs = list(zip(sc, ids))

    def chk(depth):
        def c(out):
            s, i = _np(out[0]), _np(out[1])
            assert s.shape == (Q, depth) and i.shape == (Q, depth), f"{s.shape} {i.shape}"
            assert not np.isnan(s).any(), "NaN fused score"
        return c
    rec.run("fuse(unaligned)", lambda: hn.fuse([(unaligned(sc[0]), unaligned(ids[0]))], method="combsum"), chk(6))
    for m in ("rrf", "combsum", "combmnz"):
        for nm in ("minmax", "zscore", "none"):
            rec.run(f"fuse({m},{nm})", lambda m=m, nm=nm: hn.fuse(runs, method=m, norm=nm, depth=8), chk(8))
    nan = sc[0].copy()
    nan[:] = np.nan
    big = [np.full((Q, 6), 3e38, np.float32), np.full((Q, 4), -3e38, np.float32)]
    cases = [
        ("method", dict(runs=runs, method="borda"), True),
        ("norm", dict(runs=runs, method="combsum", norm="l2"), True),
        ("k0", dict(runs=runs, k=0), True), ("knan", dict(runs=runs, k=float("nan")), True),
        ("kstr", dict(runs=runs, k="60"), True),
        ("depth0", dict(runs=runs, depth=0), True), ("depth_float", dict(runs=runs, depth=2.5), True),
        ("weights_len", dict(runs=runs, weights=[1.0]), True),
        ("weights_nan", dict(runs=runs, weights=[1.0, float("nan")]), True),
        ("weights_str", dict(runs=runs, weights=["a", "b"]), True),
        ("nan scores", dict(runs=[(nan, ids[0])], method="combsum"), True),
        ("ids < -1", dict(runs=[ids[0] - 5]), True),
        ("float ids", dict(runs=[ids[0] + 0.5]), True),
        ("uint64 ids", dict(runs=[np.full((Q, 3), 2**64 - 1, np.uint64)]), True),
        ("1-d ids", dict(runs=[ids[0][0]]), True),
        ("row mismatch", dict(runs=[ids[0], ids[1][:2]]), True),
        ("shape mismatch", dict(runs=[(sc[0][:, :3], ids[0])], method="combsum"), True),
        ("ids only combsum", dict(runs=[ids[0]], method="combsum"), True),
        ("empty", dict(runs=[]), True),
        ("none", dict(runs=None), True),
        ("mixed", dict(runs=[ids[0], {"q": {"d": 1.0}}]), True),
        ("bad tuple", dict(runs=[(sc[0], ids[0], ids[0])]), True),
    ]
    for lab, kw, bad in cases:
        rec.run(f"fuse({lab})", lambda kw=kw: hn.fuse(**kw), must_raise=bad)
    # finite scores and weights whose weighted sum overflows (inf - inf = NaN) must not
    # reach the C++ sort as NaN
    over = [(big[0], ids[0]), (big[1], ids[0][:, :4])]
    rec.run("fuse(overflow)", lambda: hn.fuse(over, method="combsum", norm="none", weights=[1e300, 1e300],
                                              depth=5), chk(5))
    rec.run("fuse(huge depth)", lambda: hn.fuse(runs, depth=2**62), must_raise=True)


def campaign_metrics(rec, rng):
    qrels = {"q0": {"d1": 1, "d2": 2}, "q1": {"d3": 1}, "q2": {"d0": 0}}
    qids = ["q0", "q1", "q2", "qx"]
    cids = [f"d{i}" for i in range(10)]
    ids = rng.integers(-1, 10, (4, 5))

    def chk(out):
        assert set(out) == {"ndcg@10"} and isinstance(out["ndcg@10"], float)
    rec.run("evaluate ok", lambda: hn.evaluate(qrels, ids, ["ndcg@10"], query_ids=qids, corpus_ids=cids), chk)
    rec.run("evaluate dict ok", lambda: hn.evaluate(qrels, {"q0": {"d1": 1.0}}, ["ndcg@10"]), chk)
    bad_ids = [("oob", np.full((4, 5), 10)), ("neg", np.full((4, 5), -2)), ("float", ids + 0.5),
               ("1d", ids[0]), ("3d", ids[None]), ("str", ids.astype(str)), ("none", None), ("obj", ids.astype(object)),
               ("rows", ids[:2]), ("huge", np.full((4, 5), 2**62)), ("uint64 wrap", np.full((4, 5), 2**64 - 1, np.uint64)),
               ("int64 max", np.full((4, 5), np.iinfo(np.int64).max)), ("int64 min", np.full((4, 5), np.iinfo(np.int64).min))]
    for lab, v in bad_ids:
        rec.run(f"evaluate(ids={lab})", lambda v=v: hn.evaluate(qrels, v, ["ndcg@10"], query_ids=qids,
                                                                 corpus_ids=cids), must_raise=True)
    rec.run("evaluate(unaligned ids)", lambda: hn.evaluate(qrels, unaligned(ids), ["ndcg@10"], query_ids=qids,
                                                            corpus_ids=cids), chk)
    if torch is not None:
        rec.run("evaluate(torch ids)", lambda: hn.evaluate(qrels, torch.from_numpy(ids), ["ndcg@10"],
                                                           query_ids=qids, corpus_ids=cids), chk)
    bad_calls = [
        ("metric name", lambda: hn.evaluate(qrels, ids, ["ndcg@x"], query_ids=qids, corpus_ids=cids)),
        ("metric p@0", lambda: hn.evaluate(qrels, ids, ["p@0"], query_ids=qids, corpus_ids=cids)),
        ("metric p@-1", lambda: hn.evaluate(qrels, ids, ["p@-1"], query_ids=qids, corpus_ids=cids)),
        ("metric None", lambda: hn.evaluate(qrels, ids, [None], query_ids=qids, corpus_ids=cids)),
        ("metrics empty", lambda: hn.evaluate(qrels, ids, [], query_ids=qids, corpus_ids=cids)),
        ("convention", lambda: hn.evaluate(qrels, ids, "map", query_ids=qids, corpus_ids=cids, convention="x")),
        ("level float", lambda: hn.evaluate(qrels, ids, "map", relevance_level=1.5, query_ids=qids, corpus_ids=cids)),
        ("level huge", lambda: hn.evaluate(qrels, ids, "map", relevance_level=2**40, query_ids=qids, corpus_ids=cids)),
        ("no query_ids", lambda: hn.evaluate(qrels, ids, "map")),
        ("query_ids 2-d", lambda: hn.evaluate(qrels, ids, "map", query_ids=[qids], corpus_ids=cids)),
        ("corpus_ids 2-d", lambda: hn.evaluate(qrels, ids, "map", query_ids=qids, corpus_ids=[cids])),
        ("run int", lambda: hn.evaluate(qrels, 5, "map")),
        ("run None", lambda: hn.evaluate(qrels, None, "map")),
        ("run nan score", lambda: hn.evaluate(qrels, {"q0": {"d1": float("nan")}}, "map")),
        ("run str score", lambda: hn.evaluate(qrels, {"q0": {"d1": "x"}}, "map")),
        ("run list", lambda: hn.evaluate(qrels, {"q0": ["d1"]}, "map")),
        ("qrels float rel", lambda: hn.evaluate({"q0": {"d1": 1.5}}, ids, "map", query_ids=qids, corpus_ids=cids)),
        ("qrels nan rel", lambda: hn.evaluate({"q0": {"d1": float("nan")}}, {"q0": {"d1": 1.0}}, "map")),
        ("qrels huge rel", lambda: hn.evaluate({"q0": {"d1": 2**40}}, {"q0": {"d1": 1.0}}, "map")),
        ("qrels list", lambda: hn.evaluate([1, 2], {"q0": {"d1": 1.0}}, "map")),
        ("qrels None", lambda: hn.evaluate(None, {"q0": {"d1": 1.0}}, "map")),
        ("num_threads", lambda: hn.evaluate(qrels, ids, "map", query_ids=qids, corpus_ids=cids, num_threads=0)),
    ]
    for lab, fn in bad_calls:
        rec.run(f"evaluate({lab})", fn, must_raise=True)
    # duplicate corpus ids / unknown query ids are legal: just shape checks
    rec.run("evaluate(per_query)", lambda: hn.evaluate(qrels, ids, ["map", "p@3"], per_query=True, query_ids=qids,
                                                       corpus_ids=cids),
            lambda o: [None for v in o.values() if v.shape != (4,) and (_ for _ in ()).throw(AssertionError(v.shape))])


def campaign_ooc(rec, rng, tmp):
    from hardneg import ooc
    base = rng.standard_normal((N, D)).astype(np.float32)
    path = tmp / "c.npy"
    np.save(path, base)
    mm = np.load(path, mmap_mode="r")
    q = base[:3]
    ref = hn.topk(q, base, k=5)
    rec.run("topk(memmap)", lambda: hn.topk(q, mm, k=5), _topk_check(3, 5, N, ref))
    rec.run("from_npy", lambda: hn.DenseIndex.from_npy(path).search(q, k=5), _topk_check(3, 5, N, ref))
    for lab, v, kind in vector_variants(rng, 3, D):
        if kind in ("bad",):
            rec.run(f"topk(queries={lab}, memmap)", lambda v=v: hn.topk(v, mm, k=5), must_raise=True)
            rec.run(f"ooc search(queries={lab})", lambda v=v: hn.DenseIndex.from_npy(path).search(v, k=5),
                    must_raise=True)
    for klab, k, kk in K_VALUES:
        if kk == "bad":
            rec.run(f"topk(memmap, k={klab})", lambda k=k: hn.topk(q, mm, k=k), must_raise=True)
    rec.run("from_npy(block_bytes=0)", lambda: hn.DenseIndex.from_npy(path, block_bytes=0), must_raise=True)
    rec.run("from_npy(block_bytes=-1)", lambda: hn.DenseIndex.from_npy(path, block_bytes=-1), must_raise=True)
    rec.run("from_npy(block_bytes='x')", lambda: hn.DenseIndex.from_npy(path, block_bytes="x"), must_raise=True)
    rec.run("from_npy(metric='x')", lambda: hn.DenseIndex.from_npy(path, metric="x"), must_raise=True)
    for lab, arr in [("1d", base[0]), ("3d", base[None]), ("nan", np.where(base > 1, np.nan, base)),
                     ("int8", (base * 10).astype(np.int8)), ("empty", np.zeros((0, D), np.float32)),
                     ("zero_cols", np.zeros((N, 0), np.float32)), ("complex", base.astype(np.complex64)),
                     ("f64", base.astype(np.float64)), ("fortran", np.asfortranarray(base))]:
        p = tmp / f"bad_{lab}.npy"
        np.save(p, arr)
        ok = lab in ("f64", "fortran", "int8")
        rec.run(f"from_npy({lab})", lambda p=p: hn.DenseIndex.from_npy(p).search(q[:, :arr.shape[-1]] if arr.ndim == 2
                                                                                 else q, k=3),
                _topk_check(3, 3, N) if ok else None, must_raise=not ok)
        rec.run(f"topk(memmap {lab})", lambda p=p: hn.topk(q, np.load(p, mmap_mode="r"), k=3),
                _topk_check(3, 3, N) if ok else None, must_raise=not ok)
    rec.run("from_npy(missing)", lambda: hn.DenseIndex.from_npy(tmp / "nope.npy"),
            must_raise=True) if False else None  # FileNotFoundError is the right answer there
    del mm
    _ = ooc


def campaign_faiss(rec, rng):
    try:
        import faiss  # noqa: F401
    except ImportError:
        return
    base = rng.standard_normal((N, D)).astype(np.float32)
    rec.run("faiss ok", lambda: hn.DenseIndex(base, backend="faiss").search(base[:3], k=4), _topk_check(3, 4, N))
    for lab, v, kind in vector_variants(rng, 3, D):
        if kind == "bad":
            idx = hn.DenseIndex(base, backend="faiss")
            rec.run(f"faiss search({lab})", lambda v=v: idx.search(v, k=4), must_raise=True)
    for lab, v, kind in vector_variants(rng, N, D):
        if kind == "bad" and lab != "wrong_dim":
            rec.run(f"faiss corpus({lab})", lambda v=v: hn.DenseIndex(v, backend="faiss"), must_raise=True)
    idx = hn.DenseIndex(base, backend="faiss")
    for klab, k, kk in K_VALUES:
        if kk == "bad":
            rec.run(f"faiss k={klab}", lambda k=k: idx.search(base[:2], k=k), must_raise=True)
    rec.run("faiss k>N", lambda: idx.search(base[:2], k=N + 3), _topk_check(2, N + 3, N))
    rec.run("faiss exclude oob", lambda: idx.search(base[:2], k=3, exclude=[[N], [0]]), must_raise=True)
    rec.run("faiss index string", lambda: hn.DenseIndex(base, backend="faiss", index="Bogus12"), must_raise=True)
    rec.run("faiss empty", lambda: hn.DenseIndex(np.zeros((0, D), np.float32), backend="faiss"), must_raise=True)


def campaign_losses(rec, rng):
    if torch is None:
        return
    from hardneg import losses
    B, n, d = 4, 2, 8
    g = torch.Generator().manual_seed(SEED)
    q = torch.randn(B, d, generator=g, requires_grad=True)
    p = torch.randn(B, d, generator=g, requires_grad=True)
    h = torch.randn(B, n, d, generator=g)
    loss = losses.InfoNCELoss()

    def scalar(out):
        assert out.dim() == 0 and torch.isfinite(out), f"loss {out}"
    rec.run("InfoNCE ok", lambda: loss(q, p, h), scalar)
    rec.run("InfoNCE ids", lambda: loss(q, p, h, pos_ids=torch.arange(B), neg_ids=torch.arange(B * n).view(B, n)),
            scalar)
    nan = q.detach().clone()
    nan[0, 0] = float("nan")
    bad = [
        ("q numpy", lambda: loss(q.detach().numpy(), p)), ("q None", lambda: loss(None, p)),
        ("q int", lambda: loss(q.long(), p)), ("q complex", lambda: loss(q.to(torch.complex64), p)),
        ("q 1-d", lambda: loss(q[0], p[0])), ("q 3-d", lambda: loss(q[None], p[None])),
        ("empty", lambda: loss(q[:0], p[:0])), ("zero d", lambda: loss(q[:, :0], p[:, :0])),
        ("B mismatch", lambda: loss(q, p[:2])), ("d mismatch", lambda: loss(q, p[:, :4])),
        ("nan", lambda: loss(nan, p)), ("inf pos", lambda: loss(q, p.detach() * float("inf"))),
        ("hard bad shape", lambda: loss(q, p, h[:, :, :3])), ("hard B", lambda: loss(q, p, h[:2])),
        ("hard 4-d", lambda: loss(q, p, h[None])), ("hard (B*n+1, d)", lambda: loss(q, p, torch.randn(B * n + 1, d))),
        ("pos_ids short", lambda: loss(q, p, h, pos_ids=[0, 1])),
        ("pos_ids float", lambda: loss(q, p, h, pos_ids=torch.rand(B))),
        ("pos_ids str", lambda: loss(q, p, h, pos_ids=["a"] * B)),
        ("neg_ids wrong", lambda: loss(q, p, h, pos_ids=torch.arange(B), neg_ids=torch.arange(3))),
        ("neg_ids alone", lambda: loss(q, p, h, neg_ids=torch.arange(B * n))),
        ("temp 0", lambda: losses.InfoNCELoss(temperature=0)), ("temp nan", lambda: losses.InfoNCELoss(temperature=float("nan"))),
        ("temp str", lambda: losses.InfoNCELoss(temperature="x")),
        ("scale and temp", lambda: losses.InfoNCELoss(temperature=0.1, scale=10)),
        ("scale inf", lambda: losses.InfoNCELoss(scale=float("inf"))),
        ("scale > f32 max", lambda: losses.InfoNCELoss(scale=1e39)),
        ("temp tiny", lambda: losses.InfoNCELoss(temperature=1e-45)),
        ("similarity", lambda: losses.InfoNCELoss(similarity="euclid")),
        ("directions", lambda: losses.InfoNCELoss(directions=("sideways",))),
        ("margin nan", lambda: losses.InfoNCELoss(false_negative_margin=float("nan"))),
        ("margin str", lambda: losses.InfoNCELoss(false_negative_margin="x")),
        ("hardness_strength str", lambda: losses.InfoNCELoss(hardness_strength="x")),
        ("hardness_strength None", lambda: losses.InfoNCELoss(hardness_strength=None)),
        ("hardness_mode", lambda: losses.InfoNCELoss(hardness_mode="x")),
        ("memory_chunk float", lambda: losses.InfoNCELoss(memory_chunk=2.5)),
        ("memory_chunk 0", lambda: losses.InfoNCELoss(memory_chunk=0)),
        ("backend", lambda: losses.InfoNCELoss(backend="gpu")),
        ("num_threads", lambda: losses.InfoNCELoss(num_threads=0)(q, p)),
        ("scores similarity", lambda: losses.contrastive_scores(q, p, similarity="l1")),
        ("scores q None", lambda: losses.contrastive_scores(None, p)),
        ("scores nan", lambda: losses.contrastive_scores(nan, p)),
        ("memory size 0", lambda: losses.CrossBatchMemory(0, d)), ("memory size -1", lambda: losses.CrossBatchMemory(-1, d)),
        ("memory dim 0", lambda: losses.CrossBatchMemory(4, 0)), ("memory dtype", lambda: losses.CrossBatchMemory(4, d, dtype=torch.int32)),
        ("memory size float", lambda: losses.CrossBatchMemory(2.5, d)),
    ]
    for lab, fn in bad:
        rec.run(f"losses({lab})", fn, must_raise=True)
    mem = losses.CrossBatchMemory(6, d)
    for lab, fn in [("numpy", lambda: mem.enqueue(np.zeros((2, d), np.float32))),
                    ("wrong dim", lambda: mem.enqueue(torch.zeros(2, d + 1))),
                    ("1-d", lambda: mem.enqueue(torch.zeros(d))), ("f64", lambda: mem.enqueue(torch.zeros(2, d).double())),
                    ("nan", lambda: mem.enqueue(torch.full((2, d), float("nan")))),
                    ("ids len", lambda: mem.enqueue(torch.zeros(2, d), ids=[1, 2, 3])),
                    ("ids float", lambda: mem.enqueue(torch.zeros(2, d), ids=[0.5, 1.5]))]:
        rec.run(f"CrossBatchMemory.enqueue({lab})", fn, must_raise=True)
    rec.run("enqueue more than size", lambda: mem.enqueue(torch.randn(9, d), ids=torch.arange(9)))
    for sim in ("cosine", "dot"):
        lm = losses.InfoNCELoss(memory=mem, similarity=sim)
        rec.run(f"InfoNCE memory {sim}", lambda lm=lm: lm(q, p, h, pos_ids=torch.arange(B)), scalar)
        rec.run(f"InfoNCE memory {sim} bf16", lambda lm=lm: lm(q.bfloat16(), p.bfloat16()), must_raise=True)
    lm = losses.InfoNCELoss(memory=mem)
    rec.run("InfoNCE memory dim mismatch", lambda: lm(q[:, :4], p[:, :4]), must_raise=True)

    def scores_chk(out):
        logits, mask = out
        assert logits.shape == mask.shape and logits.shape[0] == B, f"{logits.shape} {mask.shape}"
    rec.run("contrastive_scores ok", lambda: losses.contrastive_scores(q, p, h, memory=mem), scores_chk)
    rec.run("contrastive_scores bf16", lambda: losses.contrastive_scores(q.bfloat16(), p.bfloat16()), scores_chk)


def campaign_distributed(rec, rng):
    if torch is None:
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # pragma: no cover
        return
    from hardneg import distributed
    base = rng.standard_normal((N, D)).astype(np.float32)
    # without an initialised process group: a clear error (RuntimeError: a missing setup
    # step, not a bad argument), not a hang
    try:
        distributed.topk(base[:2], base, k=3)
        rec.failures.append("distributed.topk without init: succeeded")
    except RuntimeError as e:
        if "process group" not in str(e):
            rec.failures.append(f"distributed.topk without init: unclear RuntimeError {e}")
    s = [torch.from_numpy(-np.sort(-rng.standard_normal((Q, 3)).astype(np.float32), axis=1))]
    i = [torch.from_numpy(rng.integers(0, 10, (Q, 3)))]
    rec.run("merge_topk_torch ok", lambda: distributed.merge_topk_torch(s, i, k=2), _topk_check(Q, 2, 10))
    rec.run("merge_topk_torch k0", lambda: distributed.merge_topk_torch(s, i, k=0), must_raise=True)
    rec.run("merge_topk_torch metric", lambda: distributed.merge_topk_torch(s, i, k=2, metric="x"), must_raise=True)
    rec.run("merge_topk_torch mismatch", lambda: distributed.merge_topk_torch(s, i * 2, k=2), must_raise=True)


def campaign_extra_bm25(rec, rng, tmp):
    try:
        from hardneg.bm25 import BM25
    except ImportError:  # the module is newer than this file's other campaigns
        return
    docs = ["the cat sat on the mat", "dogs chase cats", "a mat for a dog", "numbers 123 and 4567",
            "unicode naïve café Ελληνικά", "stopwords only: the a an", "repeated repeated repeated words"]
    nd = len(docs)
    kw = dict(stemmer=None)
    bm = BM25(**kw).index(docs)

    def chk(nq, k):
        return _topk_check(nq, k, nd)
    rec.run("bm25 ok", lambda: bm.search(["cat mat", "dog"], k=3), chk(2, 3))
    rec.run("bm25 k>N", lambda: bm.search(["cat"], k=nd + 5), chk(1, nd + 5))
    rec.run("bm25 tokens", lambda: bm.search([["cat", "mat"], []], k=2), chk(2, 2))
    rec.run("bm25 empty query", lambda: bm.search([""], k=2), chk(1, 2))
    rec.run("bm25 no queries", lambda: bm.search([], k=2), chk(0, 2))
    rec.run("bm25 bytes query", lambda: bm.search([b"cat \xff\xfe mat"], k=2), chk(1, 2))
    rec.run("bm25 numpy queries", lambda: bm.search(np.array(["cat", "dog"]), k=2), chk(2, 2))
    for klab, k, kk in K_VALUES:
        if kk == "bad":
            rec.run(f"bm25 search(k={klab})", lambda k=k: bm.search(["cat"], k=k), must_raise=True)
    for xlab, ex, xk in exclude_variants(2, nd):
        rec.run(f"bm25 search(exclude={xlab})", lambda ex=ex: bm.search(["cat", "dog"], k=3, exclude=ex),
                chk(2, 3) if xk == "ok" else None, must_raise=xk == "bad")
    bad_queries = [("str", "cat"), ("bytes", b"cat"), ("none", None), ("int", 5), ("[None]", [None]), ("[1]", [1]),
                   ("[[1]]", [[1, 2]]), ("mixed", ["cat", ["dog"]]), ("[[None]]", [[None]]), ("dict", [{"a": 1}]),
                   ("nested", [[["cat"]]]), ("[nan]", [float("nan")])]
    for lab, q in bad_queries:
        rec.run(f"bm25 search(queries={lab})", lambda q=q: bm.search(q, k=2), must_raise=True)
        rec.run(f"bm25 score(queries={lab})", lambda q=q: bm.score(q, [0]), must_raise=True)
        rec.run(f"bm25 index({lab})", lambda q=q: BM25(**kw).index(q), must_raise=True)
    for lab, texts in [("empty list", []), ("only stopwords", ["the a", "an"]), ("empty strings", ["", ""])]:
        rec.run(f"bm25 index({lab})", lambda t=texts: BM25(**kw).index(t), must_raise=True)
    rec.run("bm25 search before index", lambda: BM25(**kw).search(["cat"]), must_raise=True) if False else None
    for lab, d, bad in [("ok", [[0, 1], [2, -1]], False), ("1-d", [0, 1], False), ("oob", [[nd], [0]], True),
                        ("neg", [[-2], [0]], True), ("float", [[0.5], [1.0]], True), ("rows", [[0]], True),
                        ("3-d", np.zeros((2, 1, 1), np.int64), True), ("str", [["a"], ["b"]], True),
                        ("none", None, True), ("ragged", [[0, 1], [2]], True), ("huge", [[2**63 - 1], [0]], True),
                        ("uint64", np.array([[2**64 - 1], [0]], np.uint64), True), ("unaligned", unaligned(np.array([[0], [1]])), False)]:
        rec.run(f"bm25 score(doc_ids={lab})", lambda d=d: bm.score(["cat", "dog"], d),
                None if bad else (lambda o, d=d: None if np.asarray(o).shape[0] == 2 else (_ for _ in ()).throw(
                    AssertionError(np.asarray(o).shape))), must_raise=bad)
    for lab, kwargs in [("method", dict(method="bm26")), ("k1 neg", dict(k1=-1)), ("k1 nan", dict(k1=float("nan"))),
                        ("k1 str", dict(k1="1")), ("b>1", dict(b=1.5)), ("b inf", dict(b=float("inf"))),
                        ("delta neg", dict(delta=-0.1)), ("stopwords name", dict(stopwords="fr")),
                        ("stopwords ints", dict(stopwords=[1, 2])), ("stopwords int", dict(stopwords=3)),
                        ("stemmer", dict(stemmer="klingon")), ("stemmer int", dict(stemmer=3))]:
        rec.run(f"BM25({lab})", lambda kwargs=kwargs: BM25(**kwargs), must_raise=True)
    for k in (2**32, 2**62, 2**70):
        rec.run(f"bm25 search(k={k})", lambda k=k: bm.search(["cat"], k=k), must_raise=True)
    rec.run("bm25 num_threads=0", lambda: bm.search(["cat"], num_threads=0), must_raise=True)
    rec.run("bm25 add bad", lambda: BM25(**kw).index(docs).add([None]), must_raise=True)
    # a tampered saved index must be refused at load (the search loops trust the postings)
    path = tmp / "bm25_idx"
    bm.save(path)
    rec.run("bm25 load ok", lambda: BM25.load(path).search(["cat"], k=2), chk(1, 2))
    import json
    import shutil
    tampers = {
        "docs oob": lambda d: np.save(d / "docs.npy", np.load(d / "docs.npy") + np.uint32(1000)),
        "docs unsorted": lambda d: np.save(d / "docs.npy", np.load(d / "docs.npy")[::-1].copy()),
        "offsets past end": lambda d: np.save(d / "offsets.npy", np.load(d / "offsets.npy") * 3),
        "offsets decreasing": lambda d: np.save(d / "offsets.npy", np.r_[0, np.load(d / "offsets.npy")[:0:-1]]),
        "codes short": lambda d: np.save(d / "codes.npy", np.load(d / "codes.npy")[:-1]),
        "codes oob": lambda d: np.save(d / "codes.npy", np.load(d / "codes.npy") + np.uint16(60000)),
        "codes dtype": lambda d: np.save(d / "codes.npy", np.load(d / "codes.npy").astype(np.float64)),
        "code_len wrong": lambda d: np.save(d / "code_len.npy", np.load(d / "code_len.npy") + np.uint32(1)),
        "code_tf short": lambda d: np.save(d / "code_tf.npy", np.load(d / "code_tf.npy")[:-1]),
        "doc_len short": lambda d: np.save(d / "doc_len.npy", np.load(d / "doc_len.npy")[:-1]),
        "docs 2-d": lambda d: np.save(d / "docs.npy", np.load(d / "docs.npy")[None]),
        "vocab short": lambda d: (d / "vocabulary.json").write_text(json.dumps(json.loads(
            (d / "vocabulary.json").read_text())[:-1])),
        "vocab dup": lambda d: (d / "vocabulary.json").write_text(json.dumps(["x"] * len(json.loads(
            (d / "vocabulary.json").read_text())))),
        "meta garbage": lambda d: (d / "bm25.json").write_text("{not json"),
        "meta k1 str": lambda d: (d / "bm25.json").write_text(json.dumps(
            dict(json.loads((d / "bm25.json").read_text()), k1="x"))),
        "total_len": lambda d: (d / "bm25.json").write_text(json.dumps(
            dict(json.loads((d / "bm25.json").read_text()), total_len=1e9))),
        "docs missing": lambda d: (d / "docs.npy").unlink(),
    }
    for lab, tamper in tampers.items():
        d = tmp / f"bm25_{lab.replace(' ', '_')}"
        shutil.copytree(path, d)
        tamper(d)
        for mm in (True, False):
            rec.run(f"bm25 load({lab}, mmap={mm})", lambda d=d, mm=mm: BM25.load(d, mmap=mm).search(["cat mat"], k=2),
                    must_raise=True)


def campaign_extra_mining(rec, rng, tmp):
    try:
        from hardneg import datasets, mining
    except ImportError:
        return
    ds = datasets.load_sample("test")
    C = np.load(datasets.sample_path() / "embeddings" / "minilm-corpus.npy")
    Qa = np.load(datasets.sample_path() / "embeddings" / "minilm-queries.npy")
    base = dict(corpus_embeddings=C, query_embeddings=Qa, num_negatives=2, range_min=0, range_max=10, progress=False)

    def mine(**kw):
        args = dict(base)
        args.update(kw)
        return mining.mine_hard_negatives(ds, **args)

    def chk(n):
        def c(out):
            assert out.ids.shape == (ds.num_queries, n), out.ids.shape
            assert ((out.ids >= -1) & (out.ids < ds.num_docs)).all(), "negative ids out of range"
        return c
    rec.run("mine ok", lambda: mine(), chk(2))
    rec.run("mine bm25", lambda: mine(retriever="bm25", bm25=dict(stemmer=None)), chk(2))
    rec.run("mine hybrid", lambda: mine(retriever="hybrid", bm25=dict(stemmer=None)), chk(2))
    rec.run("mine huge range_max", lambda: mine(range_max=10**9), chk(2))
    rec.run("mine range_max 2**40", lambda: mine(range_max=2**40))
    rec.run("mine torch bf16", lambda: mine(corpus_embeddings=torch.from_numpy(C).bfloat16()) if torch else None)
    rec.run("mine npy path", lambda: mine(corpus_embeddings=str(datasets.sample_path() / "embeddings" /
                                                                    "minilm-corpus.npy")), chk(2))
    nanC = C.copy()
    nanC[3, 0] = np.nan
    nanQ = Qa.copy()
    nanQ[:, 0] = np.inf
    bad = [
        ("ds None", dict(), None), ("retriever", dict(retriever="sparse"), 0), ("sampling", dict(sampling="x"), 0),
        ("anchor", dict(positive_anchor="median"), 0), ("metric", dict(metric="l2x"), 0),
        ("num_negatives 0", dict(num_negatives=0), 0), ("num_negatives float", dict(num_negatives=2.0), 0),
        ("range_min > max", dict(range_min=20, range_max=10), 0), ("range neg", dict(range_min=-1), 0),
        ("too few positions", dict(num_negatives=50), 0), ("margin nan", dict(relative_margin=float("nan")), 0),
        ("margin str", dict(absolute_margin="0.1"), 0), ("temperature 0", dict(sampling="softmax", temperature=0), 0),
        ("seed neg", dict(seed=-1), 0), ("seed float", dict(seed=1.5), 0), ("batch 0", dict(batch_size=0), 0),
        ("threads 0", dict(num_threads=0), 0), ("rescorer int", dict(rescorer=3), 0), ("encoder int", dict(encoder=3), 0),
        ("C nan", dict(corpus_embeddings=nanC), 0), ("Q inf", dict(query_embeddings=nanQ), 0),
        ("C rows", dict(corpus_embeddings=C[:-1]), 0), ("C dim", dict(corpus_embeddings=C[:, :-1]), 0),
        ("C 1-d", dict(corpus_embeddings=C[0]), 0), ("C int", dict(corpus_embeddings=(C * 100).astype(np.int32)), 0),
        ("C str", dict(corpus_embeddings=C.astype(str)), 0), ("C txt path", dict(corpus_embeddings=str(tmp / "x.txt")), 0),
        ("Q rows", dict(query_embeddings=Qa[:3]), 0), ("no embeddings", dict(corpus_embeddings=None), 0),
        ("C complex", dict(corpus_embeddings=C.astype(np.complex64)), 0),
        ("rescorer wrong length", dict(rescorer=lambda q, d: np.zeros(1)), 0),
        ("rescorer nan", dict(rescorer=lambda q, d: np.full(len(q), np.nan)), 0),
        ("rescorer str", dict(rescorer=lambda q, d: ["x"] * len(q)), 0),
        ("encoder wrong rows", dict(corpus_embeddings=None, encoder=lambda t: np.zeros((1, 4), np.float32)), 0),
        ("encoder nan", dict(corpus_embeddings=None, query_embeddings=None,
                             encoder=lambda t: np.full((len(t), 4), np.nan, np.float32)), 0),
        ("encoder None", dict(corpus_embeddings=None, encoder=lambda t: None), 0),
        ("bm25 bad kwargs", dict(retriever="bm25", bm25=dict(k1=-1)), 0),
        ("bm25 wrong type", dict(retriever="bm25", bm25=3), 0),
    ]
    for lab, kw, _ in bad:
        if lab == "ds None":
            rec.run("mine(ds=None)", lambda: mining.mine_hard_negatives(None, **base), must_raise=True)
            continue
        rec.run(f"mine({lab})", lambda kw=kw: mine(**kw), must_raise=True)
    # save / load round trip and corrupt files
    res = mine()
    out = tmp / "neg.jsonl"
    rec.run("MinedNegatives.save bad format", lambda: res.save(out, format="parquet9"), must_raise=True)
    rec.run("MinedNegatives.save", lambda: res.save(out))
    bad_file = tmp / "bad_neg.jsonl"
    bad_file.write_text('{"query": 1}\nnot json\n')
    rec.run("load_negatives(garbage)", lambda: mining.load_negatives(bad_file, ds), must_raise=True)
    rec.run("load_negatives(ds None)", lambda: mining.load_negatives(out, None), must_raise=True)
    for lab, kw in [("qrels wrong", dict(corpus={"d": "x"}, queries={"q": "y"}, qrels={"q": {"d": "high"}})),
                    ("corpus None", dict(corpus=None, queries={"q": "y"}, qrels={})),
                    ("queries list", dict(corpus={"d": "x"}, queries=["y"], qrels={}))]:
        rec.run(f"datasets.from_dict({lab})", lambda kw=kw: datasets.from_dict(**kw), must_raise=True)
    for lab, p in [("missing", tmp / "nope"), ("file", out), ("split", None)]:
        rec.run(f"datasets.load_beir({lab})", lambda p=p: datasets.load_beir(p) if p is not None else
                datasets.load_beir(datasets.sample_path(), split="nosuch"), must_raise=True)


def run_campaign(tmp: Path, n_random: int = 150):
    rng = np.random.default_rng(SEED)
    rec = Recorder()
    campaign_topk(rec, rng, n_random)
    campaign_index_methods(rec, rng)
    campaign_merge(rec, rng)
    campaign_fuse(rec, rng)
    campaign_metrics(rec, rng)
    campaign_ooc(rec, rng, tmp)
    campaign_faiss(rec, rng)
    campaign_losses(rec, rng)
    campaign_distributed(rec, rng)
    _extra_campaigns(rec, rng, tmp)
    return rec


def _extra_campaigns(rec, rng, tmp):
    """Modules that landed later (bm25, mining, datasets): covered when present."""
    for name in sorted(n for n in globals() if n.startswith("campaign_extra_")):
        globals()[name](rec, rng, tmp)


# ------------------------------------------------------------------------ tests
def test_bad_input_campaign(tmp_path):
    rec = run_campaign(tmp_path)
    assert rec.calls > 300
    assert not rec.failures, f"{len(rec.failures)} of {rec.calls} calls broke the rule:\n" + "\n".join(rec.failures)


def test_binding_rejects_unaligned_buffers():
    """The C++ layer reads typed values: an unaligned view (odd byte offset) is a ValueError
    there (the Python layer copies such inputs first; UBSan flagged the misaligned loads)."""
    from hardneg import _core
    s = unaligned(np.zeros((2, 3), np.float32))
    i = unaligned(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="aligned"):
        _core.merge_topk([np.zeros((2, 3), np.float32)], [i], False, 2, 1)
    with pytest.raises(ValueError, match="aligned"):
        _core.topk(s, False, [(np.ones((4, 3), np.float32), False, None, 0)], "ip", 2, None, None, 1)
    # the public functions copy them and give the aligned answer
    ref = hn.merge_topk([np.zeros((2, 3), np.float32)], [np.zeros((2, 3), np.int64)], k=2)
    out = hn.merge_topk([s], [i], k=2)
    np.testing.assert_array_equal(out[1], ref[1])


@pytest.mark.parametrize("nt", [0, -1, -(2**31)])
def test_private_kernels_survive_non_positive_thread_counts(nt):
    """The public functions validate num_threads; the kernels behind them must still not
    turn a negative count into a huge one (size_t conversion) when called directly."""
    from hardneg import _core
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    ref = hn.topk(x[:5], x, k=3)
    for call in (lambda: _core.topk(x[:5], False, [(x, False, None, 0)], "ip", 3, None, None, nt),
                 lambda: _core.merge_topk([ref[0]], [ref[1]], False, 3, nt),
                 lambda: _core.fuse_ids([ref[1]], [None], [1.0], "rrf", "none", 60.0, 3, nt)):
        try:
            out = call()
        except ValueError:
            continue
        np.testing.assert_array_equal(out[1][:, :1], ref[1][:, :1])
    try:
        from hardneg.bm25 import BM25
    except ImportError:
        return
    bm = BM25(stemmer=None).index(["red cat", "blue dog", "red dog"])
    off, ids = bm._query_ids(["red dog"], 1)
    try:
        s, i = bm._core.search(off, ids, 2, None, None, nt)
    except ValueError:
        return
    assert i.tolist()[0][0] == 2


def test_concurrent_calls_match_serial():
    """The kernels release the GIL: calls from several Python threads at once (each with
    its own worker threads, sharing one index and one Qrels) give the serial results."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(SEED)
    corpus = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = rng.standard_normal((64, 24)).astype(np.float32)
    idx = hn.DenseIndex(corpus, metric="cosine")
    qrels = hn.Qrels.from_dict({f"q{i}": {f"d{j}": 1 for j in rng.integers(0, 3000, 3)} for i in range(64)})
    qids, cids = [f"q{i}" for i in range(64)], [f"d{j}" for j in range(3000)]

    def work(t):
        s, i = idx.search(queries, k=20, exclude=[[t]] * 64, num_threads=2)
        m = hn.merge_topk([s[:, :10], s[:, 10:]], [i[:, :10], i[:, 10:]], k=15, num_threads=2)
        f = hn.fuse([(s, i), (m[0], m[1])], method="combmnz", depth=25, num_threads=2)
        e = hn.evaluate(qrels, i, ["ndcg@10", "map"], per_query=True, query_ids=qids, corpus_ids=cids,
                        num_threads=2)
        return s, i, m, f, e
    serial = [work(t % 3) for t in range(6)]
    with ThreadPoolExecutor(6) as ex:
        parallel = list(ex.map(lambda t: work(t % 3), range(6)))
    for a, b in zip(serial, parallel):
        for x, y in zip(a[:2] + a[2] + a[3], b[:2] + b[2] + b[3]):
            np.testing.assert_array_equal(x, y)
        for name in a[4]:
            np.testing.assert_array_equal(a[4][name], b[4][name])


def test_campaign_subprocess_smoke(tmp_path):
    """The same campaign (fewer random cases) in a child process: a crash is a failure here."""
    r = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"child exited with {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "campaign calls:" in r.stdout


if __name__ == "__main__":
    import tempfile
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    rec = run_campaign(out, n_random=40)
    print(f"campaign calls: {rec.calls}, rule violations: {len(rec.failures)}")
    sys.exit(0)  # violations are reported by the in-process test; the child only checks for crashes
