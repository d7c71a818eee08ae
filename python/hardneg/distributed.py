"""Sharded exact search over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Each rank holds one shard of the corpus: rows ``offset .. offset + n_local - 1``
of the global corpus.  Every rank passes the same queries; each computes the
top-k of its shard (the C++ kernel for numpy / CPU tensors, torch for CUDA
tensors), one ``all_gather`` exchanges the (scores, global ids) of all ranks,
and every rank merges them with :func:`hardneg.merge_topk`.  The result is the
global top-k, identical on every rank and equal to a single-process
:func:`hardneg.topk` over the concatenated corpus (ties by ascending global id,
also across shard boundaries; on the CPU path scores are bit-identical because
the kernel's score of a row does not depend on where the row sits).

Communication per query batch of Q queries: each rank sends Q x k' x 12 bytes
(float32 score + int64 id) and receives it from every other rank, where
``k' = min(k, largest shard)``; a few small metadata messages check that the
shards agree (dims, dtypes, query shape, offsets) so bad input raises the same
clear error on every rank instead of hanging.

Example (``torchrun --nproc_per_node 2 script.py``)::

    import torch.distributed as dist, numpy as np, hardneg as hn
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    corpus = np.load("corpus.npy", mmap_mode="r")
    lo, hi = r * len(corpus) // w, (r + 1) * len(corpus) // w
    scores, ids = hn.distributed.topk(queries, np.ascontiguousarray(corpus[lo:hi]), k=100, offset=lo)
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from hardneg._arrays import is_cuda, is_torch, torch_module
from hardneg.exact import ExactIndex
from hardneg.exclude import to_csr
from hardneg.index_base import SearchIndex, check_k, check_metric, check_output
from hardneg.topk import merge_topk as _merge_topk
from hardneg.topk import topk as _local_topk


def _dist():
    torch = torch_module()
    if torch is None:
        try:
            import torch  # noqa: F401  (distributed search needs torch.distributed)
        except ImportError:
            raise ImportError("hardneg.distributed needs torch: pip install 'hardneg[torch]'") from None
        torch = torch_module()
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("hardneg.distributed needs an initialised process group "
                           "(torch.distributed.init_process_group('gloo' or 'nccl'))")
    return torch, dist


def _shape_dtype(x: Any, name: str) -> Tuple[Tuple[int, ...], str]:
    if x is None:
        raise TypeError(f"{name} must be an array or tensor, got None")
    if is_torch(x):
        return tuple(int(s) for s in x.shape), str(x.dtype).replace("torch.", "")
    if isinstance(x, np.ndarray):
        return tuple(int(s) for s in x.shape), str(x.dtype)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _comm_device(torch, dist, group):
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _raise_if_any(dist, group, err: Optional[str], world: int) -> None:
    """Collective: every rank raises the first rank's error (no rank is left waiting)."""
    errs: List[Optional[str]] = [None] * world
    dist.all_gather_object(errs, err, group=group)
    for r, e in enumerate(errs):
        if e is not None:
            raise ValueError(e if e.startswith("rank ") else f"rank {r}: {e}")


def _local_exclude(ex, offset: int, n: int, nq: int):
    """Global CSR exclusions -> this shard's local CSR (ids in [offset, offset + n) only)."""
    if ex is None:
        return None
    indptr, indices = ex
    rows = np.repeat(np.arange(nq, dtype=np.int64), np.diff(indptr))
    keep = (indices >= offset) & (indices < offset + n)
    if not keep.any():
        return None
    local = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=nq), out=local[1:])
    return local, indices[keep] - offset


def _broadcast_queries(torch, dist, group, queries, local_shard, src, rank, world):
    """Queries of rank ``src`` on every rank (a collective; errors raise on every rank)."""
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    err, meta = None, None
    if rank == src:
        try:
            shape, dtype = _shape_dtype(queries, "queries")
            if len(shape) != 2:
                raise ValueError(f"queries must be 2-D (rows, dim), got shape {shape}")
            if dtype not in ("float32", "float16", "bfloat16", "float64"):
                raise TypeError(f"queries must be float32, float16, bfloat16 or float64, got {dtype}")
            meta = (shape, dtype)
        except (TypeError, ValueError) as e:
            err = f"rank {rank}: {e}"
    box = [(err, meta)]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src) if group is not None else src,
                               group=group)
    err, meta = box[0]
    if err is not None:
        raise ValueError(err)
    shape, dtype = meta
    dev = _comm_device(torch, dist, group)
    if rank == src:
        t = queries if is_torch(queries) else torch.from_numpy(np.ascontiguousarray(queries))
        t = t.detach().to(dev).contiguous()
    else:
        t = torch.empty(shape, dtype=getattr(torch, dtype), device=dev)
    dist.broadcast(t, src=dist.get_global_rank(group, src) if group is not None else src, group=group)
    if rank == src:
        return queries
    if is_torch(local_shard):
        return t.to(local_shard.device)
    t = t.cpu()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def topk(queries: Any, local_shard: Any, k: int = 10, offset: Optional[int] = None, metric: str = "ip",
         exclude: Any = None, group: Any = None, num_threads: Optional[int] = None, backend: str = "auto",
         timings: Optional[Dict[str, float]] = None, src: Optional[int] = None):
    """Global exact top-k over a corpus sharded by rows across the ranks of ``group``.

    Collective: every rank of the group must call it with the same queries, k,
    metric and exclusions.

    Parameters
    ----------
    queries : array (Q, d)
        The same queries on every rank (numpy, CPU or CUDA tensor).
    local_shard : array (n_r, d)
        This rank's corpus rows (may be empty, ``(0, d)``); numpy / CPU tensor
        (C++ kernel) or a CUDA tensor (torch path, NCCL).  All shards must have
        the same dimension and dtype.  ``np.memmap`` shards are streamed.
    k : int
        Results per query (global).
    offset : int, optional
        Global id of this shard's first row.  Default: the shards are laid out
        in rank order (offset = rows of the lower ranks).  Shards must not overlap.
    metric : {"ip", "cosine", "l2"}
    exclude : optional
        Per-query ids to skip, in GLOBAL ids (list of lists, -1 padded array or
        CSR pair); each rank keeps the ones inside its shard.
    group : ProcessGroup, optional
        Default: the world group.
    num_threads, backend
        For the local search, see :func:`hardneg.topk`.
    timings : dict, optional
        Filled with seconds spent in ``"local"`` (shard search), ``"comm"``
        (all_gather), ``"merge"`` and ``"check"`` (metadata exchange).
    src : int, optional
        Broadcast the queries from this rank (group rank); the other ranks may
        pass ``queries=None`` and get numpy results (torch on the shard's
        device when their shard is a tensor).

    Returns
    -------
    scores float32 (Q, k), ids int64 (Q, k)
        Global result, identical on every rank, in the queries' type and device.
        Padded with id -1 and score -inf (+inf for "l2") when fewer than k rows
        are eligible.
    """
    return _collective_topk(queries, local_shard, k=k, offset=offset, metric=metric, exclude=exclude, group=group,
                            num_threads=num_threads, backend=backend, timings=timings, src=src)


def _collective_topk(queries, local_shard, *, k, offset, metric, exclude, group, num_threads, backend="auto",
                     timings=None, src=None, local_index=None):
    """:func:`topk`; ``local_index``: an index over ``local_shard`` (its rows in the same order)
    whose ``search`` does the local search, keeping state between calls (the screen's coded
    copy of :class:`DistributedIndex`'s shard), or None for the one-shot :func:`hardneg.topk`."""
    torch, dist = _dist()
    t0 = time.perf_counter()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if src is not None:
        queries = _broadcast_queries(torch, dist, group, queries, local_shard, src, rank, world)
    lay = _agree(dist, group, rank, world, queries, local_shard, k, offset, metric)
    k = lay.k
    _add_time(timings, "check", t0)

    t1 = time.perf_counter()
    s_t, i_t, dev = _search_shard(torch, dist, group, rank, world, queries, local_shard, exclude, metric,
                                  num_threads, backend, lay, local_index)
    _add_time(timings, "local", t1)

    t2 = time.perf_counter()
    bufs = _gather(torch, dist, group, world, s_t, i_t)
    if timings is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    _add_time(timings, "comm", t2)

    t3 = time.perf_counter()
    scores, ids = _merge(torch, bufs, lay, k, metric, dev, num_threads)
    if timings is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    _add_time(timings, "merge", t3)
    return _to_queries_type(torch, queries, scores, ids)


class _Layout(NamedTuple):
    """What the ranks agreed on: global k, queries, and where each shard sits in the id space."""

    k: int
    nq: int
    kk: int          # per-shard depth: k capped by the largest shard
    num_ids: int     # size of the global id space (gaps between shards allowed)
    my_off: int
    my_n: int


def _add_time(timings: Optional[Dict[str, float]], key: str, since: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - since


def _local_meta(queries: Any, local_shard: Any, k: Any, offset: Any, metric: str) -> Tuple:
    """This rank's checked inputs as a tuple every rank can compare (raises TypeError / ValueError)."""
    check_metric(metric)
    k = check_k(k)
    qshape, _ = _shape_dtype(queries, "queries")
    sshape, sdtype = _shape_dtype(local_shard, "local_shard")
    if len(qshape) != 2:
        raise ValueError(f"queries must be 2-D (rows, dim), got shape {qshape}")
    if len(sshape) != 2:
        raise ValueError(f"local_shard must be 2-D (rows, dim), got shape {sshape}")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, np.integer))
                               or offset < 0):
        raise ValueError(f"offset must be a non-negative integer (global id of the shard's first row), "
                         f"got {offset!r}")
    if is_cuda(queries) != is_cuda(local_shard):
        raise ValueError("queries and local_shard must be on the same device (mixed devices)")
    check_output(qshape[0], k)
    return (sshape[0], sshape[1], sdtype, qshape, None if offset is None else int(offset), k, metric)


def _agree(dist, group, rank: int, world: int, queries, local_shard, k, offset, metric: str) -> _Layout:
    """Check the inputs locally, then one metadata exchange so every rank agrees or all raise."""
    err: Optional[str] = None
    meta: Tuple = ()
    try:
        meta = _local_meta(queries, local_shard, k, offset, metric)
    except (TypeError, ValueError) as e:
        err = f"rank {rank}: {e}"
    metas: List[Any] = [None] * world
    dist.all_gather_object(metas, (err, meta), group=group)
    for e, _ in metas:
        if e is not None:
            raise ValueError(e)
    metas = [m for _, m in metas]
    sizes = [m[0] for m in metas]
    if len({m[1] for m in metas}) > 1:
        raise ValueError(f"local_shard: shards have different dimensions {[m[1] for m in metas]} (by rank)")
    if len({m[2] for m in metas}) > 1:
        raise ValueError(f"local_shard: shards have different dtypes {[m[2] for m in metas]} (by rank)")
    if len({m[3] for m in metas}) > 1:
        raise ValueError(f"queries: ranks passed different query shapes {[m[3] for m in metas]}; "
                         "every rank must pass the same queries")
    if len({(m[5], m[6]) for m in metas}) > 1:
        raise ValueError("k and metric must be the same on every rank")
    if metas[0][3][1] != metas[0][1]:
        raise ValueError(f"queries have dimension {metas[0][3][1]} but the shards have dimension {metas[0][1]}")
    total = sum(sizes)
    if total == 0:
        raise ValueError("corpus is empty: every shard has 0 rows")
    if world > total:
        raise ValueError(f"world size {world} is larger than the corpus ({total} rows): "
                         "use fewer ranks or a larger corpus")
    offs = _offsets(sizes, [m[4] for m in metas])
    k = metas[0][5]
    return _Layout(k=k, nq=metas[0][3][0], kk=max(1, min(k, max(sizes))),
                   num_ids=max(o + n for o, n in zip(offs, sizes)), my_off=offs[rank], my_n=sizes[rank])


def _offsets(sizes: List[int], given: List[Optional[int]]) -> List[int]:
    """Each shard's first global id: the given ones (checked for overlap) or rank order."""
    if all(o is None for o in given):
        return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
    if any(o is None for o in given):
        raise ValueError("offset must be given on every rank or on none")
    end = 0
    for r in sorted(range(len(sizes)), key=lambda r: (given[r], sizes[r])):
        if sizes[r] and given[r] < end:
            raise ValueError(f"offset: shard of rank {r} (rows {given[r]}..{given[r] + sizes[r] - 1}) overlaps "
                             "another shard")
        end = max(end, given[r] + sizes[r])
    return [int(o) for o in given]


def _search_shard(torch, dist, group, rank: int, world: int, queries, local_shard, exclude, metric: str,
                  num_threads, backend, lay: _Layout, local_index=None):
    """This shard's top ``lay.kk`` in global ids, as torch tensors on the communication device.

    Errors are shared, so that the other ranks raise too instead of hanging in the gather.
    """
    s_loc = i_loc = None
    err = None
    try:
        ex = to_csr(exclude, lay.nq, lay.num_ids)
        if lay.my_n:
            lex = _local_exclude(ex, lay.my_off, lay.my_n, lay.nq)
            if local_index is not None:
                s_loc, i_loc = local_index.search(queries, k=lay.kk, exclude=lex, num_threads=num_threads,
                                                  backend=backend)
            else:
                s_loc, i_loc = _local_topk(queries, local_shard, k=lay.kk, metric=metric, exclude=lex,
                                           num_threads=num_threads, backend=backend)
    except Exception as e:  # shared below
        err = f"rank {rank}: {type(e).__name__}: {e}"
    dev = _comm_device(torch, dist, group)
    flag = torch.tensor([0 if err is None else 1], dtype=torch.int32, device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if int(flag.item()):
        _raise_if_any(dist, group, err, world)
    if s_loc is None:
        pad = float("inf") if metric == "l2" else float("-inf")
        s_t = torch.full((lay.nq, lay.kk), pad, dtype=torch.float32, device=dev)
        i_t = torch.full((lay.nq, lay.kk), -1, dtype=torch.int64, device=dev)
        return s_t, i_t, dev
    s_t = s_loc if is_torch(s_loc) else torch.from_numpy(s_loc)
    i_t = i_loc if is_torch(i_loc) else torch.from_numpy(i_loc)
    s_t = s_t.to(device=dev, dtype=torch.float32)
    i_t = i_t.to(device=dev, dtype=torch.int64)
    return s_t, torch.where(i_t >= 0, i_t + lay.my_off, i_t), dev


def _gather(torch, dist, group, world: int, s_t, i_t) -> List[Any]:
    """One all_gather of packed (scores, ids) bytes: one buffer per rank."""
    packed = torch.cat([s_t.contiguous().view(torch.uint8).reshape(-1),
                        i_t.contiguous().view(torch.uint8).reshape(-1)])
    bufs = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(bufs, packed, group=group)
    return bufs


def _merge(torch, bufs: List[Any], lay: _Layout, k: int, metric: str, dev, num_threads):
    """The global top k from the gathered parts: C++ merge_topk on the CPU, torch on a GPU."""
    ns = lay.nq * lay.kk * 4
    if dev.type == "cuda":
        ps = [b[:ns].view(torch.float32).reshape(lay.nq, lay.kk) for b in bufs]
        pi = [b[ns:].view(torch.int64).reshape(lay.nq, lay.kk) for b in bufs]
        return merge_topk_torch(ps, pi, k, metric)
    ps, pi = [], []
    for b in bufs:
        a = b.numpy()
        ps.append(a[:ns].view(np.float32).reshape(lay.nq, lay.kk))
        pi.append(a[ns:].view(np.int64).reshape(lay.nq, lay.kk))
    return _merge_topk(ps, pi, k, metric, num_threads=num_threads)


def _to_queries_type(torch, queries, scores, ids):
    """Results in the queries' type and device (numpy when the queries were numpy or None)."""
    if is_torch(scores):
        if is_torch(queries):
            return scores.to(queries.device), ids.to(queries.device)
        return scores.cpu().numpy(), ids.cpu().numpy()
    if is_torch(queries):
        return torch.from_numpy(scores).to(queries.device), torch.from_numpy(ids).to(queries.device)
    return scores, ids


def merge_topk_torch(scores: List[Any], ids: List[Any], k: int, metric: str = "ip"):
    """:func:`hardneg.merge_topk` in torch (for results that live on a GPU): same rules.

    Parts are (Q, k_i) tensors with global ids (< 0 is padding); returns the best k
    by score (ascending for "l2"), ties by ascending id, padded with -1 / -inf (+inf).
    """
    check_metric(metric)
    k = check_k(k)
    torch = torch_module()
    if torch is None:
        raise ImportError("merge_topk_torch needs torch")
    if len(scores) != len(ids) or not len(scores):
        raise ValueError(f"scores and ids must be lists of the same positive length, got {len(scores)} and {len(ids)}")
    for p, (x, y) in enumerate(zip(scores, ids)):
        if not (is_torch(x) and is_torch(y)):
            raise TypeError(f"scores[{p}] and ids[{p}] must be torch tensors")
        if x.dim() != 2 or x.shape != y.shape or x.shape[0] != scores[0].shape[0]:
            raise ValueError(f"scores[{p}] {tuple(x.shape)} and ids[{p}] {tuple(y.shape)} must be (Q, k_i) "
                             "with the same Q for every part")
    s = torch.cat([x.to(torch.float32) for x in scores], dim=1)
    i = torch.cat([x.to(torch.int64) for x in ids], dim=1)
    largest = metric != "l2"
    pad = float("-inf") if largest else float("inf")
    # stable sorts, least significant key first: id ascending, then score, then valid first
    o = torch.sort(i, dim=1, stable=True).indices
    s, i = torch.gather(s, 1, o), torch.gather(i, 1, o)
    o = torch.sort(s, dim=1, descending=largest, stable=True).indices
    s, i = torch.gather(s, 1, o), torch.gather(i, 1, o)
    o = torch.sort((i >= 0).to(torch.int8), dim=1, descending=True, stable=True).indices
    s, i = torch.gather(s, 1, o)[:, :k], torch.gather(i, 1, o)[:, :k]
    if s.shape[1] < k:
        s = torch.cat([s, s.new_full((s.shape[0], k - s.shape[1]), pad)], dim=1)
        i = torch.cat([i, i.new_full((i.shape[0], k - i.shape[1]), -1)], dim=1)
    valid = i >= 0
    return torch.where(valid, s, torch.full_like(s, pad)), i


class DistributedIndex(SearchIndex):
    """A sharded corpus (a :class:`~hardneg.index_base.SearchIndex`): ``search`` is the collective :func:`topk`.

    Anything that accepts an index object with ``search(queries, k, exclude=...)``,
    ``len()``, ``dim`` and ``metric`` (e.g. a mining loop) can use it unchanged.
    Construction and ``search`` are collective: every rank calls them, with the
    same arguments (except its own shard and offset).  ``add`` is not supported
    (the shard layout is fixed at construction).
    """

    def __init__(self, local_shard: Any, metric: str = "ip", offset: Optional[int] = None, group: Any = None,
                 num_threads: Optional[int] = None):
        super().__init__(metric, num_threads)
        torch, dist = _dist()
        self.local_shard, self.group = local_shard, group
        shape, _ = _shape_dtype(local_shard, "local_shard")
        if len(shape) != 2:
            raise ValueError(f"local_shard must be 2-D (rows, dim), got shape {shape}")
        world = dist.get_world_size(group)
        info: List[Any] = [None] * world
        dist.all_gather_object(info, (shape[0], None if offset is None else int(offset)), group=group)
        sizes = [s for s, _ in info]
        offs = [o for _, o in info]
        if all(o is None for o in offs):
            offs = [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        self.offset = offs[dist.get_rank(group)] if offset is None else int(offset)
        self._size = max(o + s for o, s in zip(offs, sizes)) if offs and not any(o is None for o in offs) \
            else sum(sizes)
        self._dim = shape[1]
        # a CPU shard is searched through an in-memory index of its own, which keeps the screen's
        # coded copy between searches (the miner's batches, refreshes) as a DenseIndex does
        self._local = None
        if shape[0] and not is_cuda(local_shard):
            self._local = ExactIndex(local_shard, metric, num_threads)

    @property
    def nbytes(self) -> int:
        """Bytes of this rank's shard and of the screen's coded copy of it (0 until a search screens)."""
        x = self.local_shard
        n = int(x.numel()) * int(x.element_size()) if is_torch(x) else int(np.asarray(x).nbytes)
        return n + (self._local.codes_nbytes if self._local is not None else 0)

    def add(self, vectors: Any) -> "DistributedIndex":
        raise NotImplementedError("a DistributedIndex cannot grow: build a new one over the enlarged shards")

    def search(self, queries: Any, k: int = 10, exclude: Any = None, num_threads: Optional[int] = None, **_: Any):
        return _collective_topk(queries, self.local_shard, k=k, offset=self.offset, metric=self.metric,
                                exclude=exclude, group=self.group,
                                num_threads=num_threads if num_threads is not None else self.num_threads,
                                local_index=self._local)


def mine_hard_negatives(*args: Any, local_shard: Any, offset: Optional[int] = None, group: Any = None,
                        metric: str = "cosine", **kwargs: Any):
    """Sharded mining: :func:`hardneg.mine_hard_negatives` with the dense search done by :func:`topk`.

    Thin hook: the mining module receives ``index=DistributedIndex(local_shard, ...)``
    and runs unchanged on every rank (same arguments everywhere); every rank gets
    the same mined result.  Needs a ``hardneg.mining`` whose
    ``mine_hard_negatives`` accepts an ``index`` keyword.
    """
    try:
        from hardneg import mining
    except ImportError:
        raise ImportError("hardneg.distributed.mine_hard_negatives needs hardneg.mining, "
                          "which this build does not include") from None
    import inspect

    fn = mining.mine_hard_negatives
    if "index" not in inspect.signature(fn).parameters:
        raise NotImplementedError("hardneg.mining.mine_hard_negatives does not accept index=...; "
                                  "distributed mining needs that hook")
    index = DistributedIndex(local_shard, metric=metric, offset=offset, group=group)
    return fn(*args, index=index, **kwargs)
