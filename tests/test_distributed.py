"""hardneg.distributed.topk over gloo: 2 and 3 processes on this machine (torch.multiprocessing spawn)
must give exactly the single-process hn.topk result on every rank: uneven and empty shards, ties across
shard boundaries, global-id exclusions, explicit out-of-order offsets, padding; bad input raises on
every rank (no hang)."""
import os
import pickle

import numpy as np
import pytest

import hardneg as hn

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

D = 16


def _corpus(n=257, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)).astype(np.float32)
    X = np.round(X * 4) / 4  # coarse values: many exact score ties
    X[100:110] = X[5]  # duplicates of row 5 spanning shard boundaries
    X[200] = X[5]
    Q = rng.standard_normal((9, D)).astype(np.float32)
    Q[0] = X[5]
    Q[1] = 0  # all scores tie
    return X, Q


def _cases(world):
    """(name, sizes, offsets-or-None, kwargs) run on every rank."""
    n = 257
    X, Q = _corpus(n)
    even = [n * r // world for r in range(world + 1)]
    uneven = [0, 3, 101] + ([n] if world == 2 else [104, n])
    uneven = uneven[:world] + [n]
    ex = [[5, 100, 105, 200], [], [0, n - 1], list(range(0, n, 2)), [], [], [3], [], [256]]
    cases = []
    for metric in ("ip", "cosine", "l2"):
        cases.append((f"even-{metric}", even, None, dict(k=12, metric=metric)))
        cases.append((f"uneven-ex-{metric}", uneven, None, dict(k=15, metric=metric, exclude=ex)))
    cases.append(("k-gt-n", uneven, None, dict(k=n + 5, metric="ip", exclude=ex)))
    # rank r holds the (world-1-r)-th piece: offsets not in rank order
    cases.append(("reversed", even, "reversed", dict(k=20, metric="ip")))
    # one empty shard
    empty = [0, 0] + [n * r // (world - 1) for r in range(1, world)]
    cases.append(("empty-shard", empty[:world] + [n], None, dict(k=7, metric="l2", exclude=ex)))
    return X, Q, cases


def _worker(rank, world, store, out_dir):
    import torch.distributed as dist

    import hardneg as hn

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    X, Q, cases = _cases(world)
    res = {}
    for name, bounds, mode, kw in cases:
        piece = world - 1 - rank if mode == "reversed" else rank
        lo, hi = bounds[piece], bounds[piece + 1]
        off = lo if mode == "reversed" else None
        res[name] = hn.distributed.topk(Q, X[lo:hi], offset=off, **kw)
    # torch in -> torch out
    lo, hi = 257 * rank // world, 257 * (rank + 1) // world
    s, i = hn.distributed.topk(torch.from_numpy(Q), torch.from_numpy(X[lo:hi]), k=5)
    res["torch"] = (type(s).__name__, s.numpy(), i.numpy())
    # DistributedIndex is the same collective
    res["index"] = hn.distributed.DistributedIndex(X[lo:hi], metric="cosine").search(Q, k=6)
    # a CPU shard's index keeps the screen's coded copy between its searches (forced here)
    start = hn._core.screen_mode()
    hn._core.set_screen_mode(2)
    try:
        di = hn.distributed.DistributedIndex(X[lo:hi], metric="ip")
        ex = [[0, 5, 100], [256]] + [[]] * (len(Q) - 2)
        res["index-screen"] = [di.search(Q, k=9, exclude=ex) for _ in range(2)]
        res["index-codes"] = di.nbytes > X[lo:hi].nbytes or not hn._core.screen_available()
    finally:
        hn._core.set_screen_mode(start)
    # queries broadcast from the last rank; the others pass None
    res["src"] = hn.distributed.topk(Q if rank == world - 1 else None, X[lo:hi], k=8, metric="l2", src=world - 1)
    tm = {}
    hn.distributed.topk(Q, X[lo:hi], k=10, timings=tm)
    res["timings"] = tm
    # bad input: every rank must raise (a hang would time the test out)
    errors = {}
    bad = {
        "dims": lambda: hn.distributed.topk(Q if rank else Q[:, :8], X[lo:hi] if rank else X[lo:hi, :8], k=3),
        "dtypes": lambda: hn.distributed.topk(Q, X[lo:hi].astype(np.float16) if rank == 0 else X[lo:hi], k=3),
        "world-gt-n": lambda: hn.distributed.topk(Q, X[rank:rank + 1] if rank == 0 else X[:0], k=3),
        "overlap": lambda: hn.distributed.topk(Q, X[lo:hi], k=3, offset=0),
        "bad-exclude": lambda: hn.distributed.topk(Q, X[lo:hi], k=3, exclude=[[1000]] * len(Q)),
        "nan": lambda: hn.distributed.topk(Q, np.full_like(X[lo:hi], np.nan) if rank == world - 1 else X[lo:hi], k=3),
    }
    for key, fn in bad.items():
        try:
            fn()
            errors[key] = None
        except (ValueError, TypeError) as e:
            errors[key] = f"{type(e).__name__}: {e}"
    res["errors"] = errors
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(res, f)
    dist.barrier()
    # Skip gloo's teardown: its threads can abort the process at exit after the
    # results are written (seen with the losses' gloo test), failing the test for nothing.
    os._exit(0)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equals_single_process(world, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    out = []
    for r in range(world):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            out.append(pickle.load(f))
    X, Q, cases = _cases(world)
    for name, _, _, kw in cases:
        ref_s, ref_i = hn.topk(Q, X, **kw)
        for r in range(world):
            s, i = out[r][name]
            np.testing.assert_array_equal(i, ref_i, err_msg=f"{name} rank {r}")
            np.testing.assert_array_equal(s, ref_s, err_msg=f"{name} rank {r}")
    # the tie-heavy query really crosses shard boundaries
    s, i = hn.topk(Q, X, k=12)
    assert {5, 100, 109, 200} <= set(i[0].tolist())
    ref = hn.topk(Q, X, k=5)
    ref_c = hn.topk(Q, X, k=6, metric="cosine")
    ref_l2 = hn.topk(Q, X, k=8, metric="l2")
    for r in range(world):
        np.testing.assert_array_equal(out[r]["src"][1], ref_l2[1])
        np.testing.assert_array_equal(out[r]["src"][0], ref_l2[0])
        kind, s, i = out[r]["torch"]
        assert kind == "Tensor"
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(out[r]["index"][1], ref_c[1])
        ref_ex = hn.topk(Q, X, k=9, exclude=[[0, 5, 100], [256]] + [[]] * (len(Q) - 2))
        for s, i in out[r]["index-screen"]:
            np.testing.assert_array_equal(i, ref_ex[1])
            np.testing.assert_array_equal(s, ref_ex[0])
        assert out[r]["index-codes"]
        assert set(out[r]["timings"]) >= {"local", "comm", "merge", "check"}
        errs = out[r]["errors"]
        assert all(errs[key] is not None for key in errs), errs
        assert "dimension" in errs["dims"]
        assert "dtype" in errs["dtypes"]
        assert "world size" in errs["world-gt-n"]
        assert "overlap" in errs["overlap"]
        assert "exclude" in errs["bad-exclude"]
        assert "NaN" in errs["nan"]


def test_local_exclude_translation():
    from hardneg.distributed import _local_exclude
    from hardneg.exclude import to_csr

    ex = to_csr([[0, 5, 9, 12], [], [10, 11]], 3, 20)
    ip, ix = _local_exclude(ex, 5, 6, 3)  # shard rows 5..10
    assert ip.tolist() == [0, 2, 2, 3] and ix.tolist() == [0, 4, 5]
    assert _local_exclude(ex, 13, 5, 3) is None


def test_needs_process_group():
    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="process group"):
        hn.distributed.topk(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), k=1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_merge_equals_cpp_merge(metric):
    from hardneg.distributed import merge_topk_torch

    rng = np.random.default_rng(2)
    parts_s, parts_i = [], []
    for p, kp in enumerate([5, 5, 5]):
        s = np.round(rng.standard_normal((40, kp)), 1).astype(np.float32)
        s = np.sort(s, axis=1) if metric == "l2" else -np.sort(-s, axis=1)
        i = rng.permutation(1000)[: 40 * kp].reshape(40, kp).astype(np.int64) + p * 1000
        i[rng.random((40, kp)) < 0.2] = -1  # padding anywhere
        s[i < 0] = np.inf if metric == "l2" else -np.inf
        parts_s.append(s)
        parts_i.append(i)
    parts_s[1][:, :2] = parts_s[0][:, :2]  # ties across parts
    for k in (3, 20):
        rs, ri = hn.merge_topk(parts_s, parts_i, k, metric)
        ts, ti = merge_topk_torch([torch.from_numpy(x) for x in parts_s], [torch.from_numpy(x) for x in parts_i], k,
                                  metric)
        np.testing.assert_array_equal(ti.numpy(), ri)
        np.testing.assert_array_equal(ts.numpy(), rs)
