"""Out-of-core exact search: corpora larger than RAM, streamed block by block.

The corpus stays on disk (a ``.npy`` file or an ``np.memmap``).  Blocks of
``block_bytes`` are searched one after the other with the C++ kernel and merged
into a running top-k (:func:`hardneg.merge_topk`, same ordering rules, so the
result equals an in-memory search bit for bit: every score is computed by the
same kernel whatever the block boundaries).  After each block its pages are
released from the process with ``madvise(MADV_DONTNEED)`` (they stay in the OS
page cache, which the kernel may reclaim), and the next block is announced with
``MADV_WILLNEED`` so the disk reads ahead while the CPU computes.  Resident
memory is therefore about one block plus the outputs (Q x k x 12 bytes), not
the corpus.

An :class:`OutOfCoreIndex` also lets the low-precision screen run (``screen=True``,
the default): when its auto rule takes a search, the index keeps the screen's coded
copy of the file's rows in memory (about N x d bytes) and reads only the surviving
rows' float32 values from the file, through one mapping kept for the index's life;
the queries the screen leaves are streamed as above (:func:`_screened`).

Entry points
------------
* :meth:`hardneg.DenseIndex.from_npy` ``(path, metric, mmap=True)`` returns an
  :class:`OutOfCoreIndex` (a :class:`~hardneg.index_base.SearchIndex`, so also
  ``isinstance(index, hn.DenseIndex)``).
* :func:`hardneg.topk` on an ``np.memmap`` streams automatically.
* :func:`as_index` gives a mining loop the right index for its corpus (path or
  np.memmap -> streamed, array -> in memory).
* :func:`search_blocks` is the building block for other modules: it searches any
  iterable of ``(block, first_row)`` pairs with a running top-k.
"""
from __future__ import annotations

import mmap as _mmap
import os
import threading
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from hardneg import _core
from hardneg._arrays import _rows_ok, check_finite, is_cuda, to_caller, vectors_for_kernel
from hardneg._threads import resolve_num_threads
from hardneg.backends import index_kind
from hardneg.exact import ExactIndex, kernel_segment
from hardneg.exclude import to_csr
from hardneg.index_base import SearchIndex, check_k, check_metric, check_output, check_search_backend

DEFAULT_BLOCK_BYTES = 256 << 20
_PAGE = _mmap.PAGESIZE
_HAS_MADVISE = hasattr(_mmap.mmap, "madvise") and hasattr(_mmap, "MADV_DONTNEED")


def _check_block_bytes(block_bytes: Any) -> int:
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, (int, np.integer)) or block_bytes <= 0:
        raise ValueError(f"block_bytes must be a positive integer, got {block_bytes!r}")
    return int(block_bytes)


def block_rows(dim: int, itemsize: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per streamed block: ``block_bytes`` worth, a multiple of 1536 (>= 1536)."""
    rows = max(1, block_bytes // max(1, dim * itemsize))
    return max(1536, rows // 1536 * 1536)


# --------------------------------------------------------------------------- .npy files
class NpyFile:
    """Header of a ``.npy`` file and a read-only mapping of its data.

    Parameters
    ----------
    path : str or PathLike
        A 2-D, C-ordered, little-endian float32 / float16 / float64 ``.npy`` file
        (float64 is converted to float32 block by block).
    """

    def __init__(self, path: Any):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            except ValueError as e:
                raise ValueError(f"path {self.path!r} is not a valid .npy file: {e}") from None
            self.offset = f.tell()
        if len(shape) != 2:
            raise ValueError(f"path {self.path!r}: the array must be 2-D (rows, dim), got shape {shape}")
        if fortran and shape[0] > 1 and shape[1] > 1:
            raise ValueError(f"path {self.path!r}: Fortran-ordered arrays cannot be streamed by rows; "
                             "save it C-ordered (np.save(path, np.ascontiguousarray(x)))")
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise TypeError(f"path {self.path!r}: dtype must be float32, float16 or float64, got {dtype}")
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
            raise TypeError(f"path {self.path!r}: big-endian arrays are not supported")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype.newbyteorder("="))
        need = self.offset + self.shape[0] * self.shape[1] * self.dtype.itemsize
        size = os.path.getsize(self.path)
        if size < need:
            raise ValueError(f"path {self.path!r} is truncated: {size} bytes, the header needs {need}")

    def open(self) -> "_Mapping":
        return _Mapping(self.path, self.offset, self.shape, self.dtype)


class _Mapping:
    """A read-only mmap of a file region holding a (rows, dim) array."""

    def __init__(self, path: str, offset: int, shape: Tuple[int, int], dtype: np.dtype):
        self.shape, self.dtype, self.path, self.offset = shape, dtype, path, offset
        self._f = open(path, "rb")
        nbytes = shape[0] * shape[1] * dtype.itemsize
        self._start = offset - offset % _mmap.ALLOCATIONGRANULARITY
        self._delta = offset - self._start
        if nbytes == 0:
            self._mm = None
        else:
            self._mm = _mmap.mmap(self._f.fileno(), self._delta + nbytes, access=_mmap.ACCESS_READ,
                                  offset=self._start)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        d, it = self.shape[1], self.dtype.itemsize
        return np.frombuffer(self._mm, dtype=self.dtype, count=(r1 - r0) * d,
                             offset=self._delta + r0 * d * it).reshape(r1 - r0, d)

    def advise(self, r0: int, r1: int, what: str) -> None:
        if self._mm is None or not _HAS_MADVISE:
            return
        d, it = self.shape[1], self.dtype.itemsize
        _advise(self._mm, self._delta + r0 * d * it, self._delta + r1 * d * it, what)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view handed out is still alive; the GC unmaps it later
                pass
        self._f.close()


def _advise(mm: Any, b0: int, b1: int, what: str) -> None:
    """madvise the byte range [b0, b1) of ``mm`` (both ends rounded down to pages for DONTNEED,
    so the partial page shared with the next block stays mapped)."""
    if what == "dontneed":
        a0 = b0 - b0 % _PAGE
        a1 = b1 - b1 % _PAGE if b1 < len(mm) else len(mm)
        opt = _mmap.MADV_DONTNEED
    else:
        a0 = b0 - b0 % _PAGE
        a1 = min(len(mm), b1)
        opt = getattr(_mmap, "MADV_WILLNEED", None)
        if opt is None:
            return
    if a1 > a0:
        try:
            mm.madvise(opt, a0, a1 - a0)
        except (OSError, ValueError):  # advice only: never fail a search for it
            pass


class _Prefetcher:
    """Reads the next block into the page cache on a background thread (posix_fadvise
    WILLNEED releases the GIL), so disk reads overlap the kernel's compute."""

    def __init__(self, path: Optional[str]):
        self._fd = None
        self._pool = None
        self._job = None
        if path is None or not hasattr(os, "posix_fadvise"):
            return
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hardneg-prefetch")

    @property
    def active(self) -> bool:
        return self._pool is not None

    def fetch(self, offset: int, nbytes: int) -> None:
        if self._pool is None or nbytes <= 0:
            return
        if self._job is not None:
            self._job.result()  # one read-ahead at a time
        self._job = self._pool.submit(self._fadvise, offset, nbytes)

    def _fadvise(self, offset: int, nbytes: int) -> None:
        try:  # in 32 MiB steps: the kernel caps one readahead request
            step = 32 << 20
            for o in range(offset, offset + nbytes, step):
                os.posix_fadvise(self._fd, o, min(step, offset + nbytes - o), os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def close(self) -> None:
        if self._pool is not None:
            if self._job is not None:
                self._job.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- np.memmap
def _memmap_releaser(x: np.memmap):
    """(advise(r0, r1, what)) for a row-contiguous np.memmap, or None when pages cannot be released.

    Copy-on-write maps (mode "c") are never released: that would drop the caller's edits.
    """
    mm = getattr(x, "_mmap", None)
    if mm is None or not _HAS_MADVISE or getattr(x, "mode", "r") in ("c", "copyonwrite") or x.ndim != 2:
        return None
    if getattr(mm, "closed", False):
        return None
    try:
        base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data if len(mm) else 0
    except (TypeError, ValueError, BufferError):
        return None
    start = x.ctypes.data - base
    rs = x.strides[0]
    if start < 0 or x.shape[1] > 1 and x.strides[1] != x.itemsize:
        return None

    def advise(r0: int, r1: int, what: str) -> None:
        _advise(mm, start + r0 * rs, start + (r1 - 1) * rs + x.shape[1] * x.itemsize, what)

    # where row 0 lies in the file (the mapping starts at offset rounded down to the granularity)
    off = int(getattr(x, "offset", 0) or 0)
    advise.file_pos = off - off % _mmap.ALLOCATIONGRANULARITY + start
    advise.row_bytes = rs
    return advise


def memmap_blocks(x: np.memmap, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Tuple[np.ndarray, int]]:
    """Yield ``(block, first_row)`` over an np.memmap, releasing each block's pages after use."""
    n, d = x.shape
    step = block_rows(d, x.itemsize, block_bytes)
    advise = _memmap_releaser(x)
    pre = _Prefetcher(getattr(x, "filename", None) if advise is not None else None)
    try:
        if pre.active:
            pre.fetch(advise.file_pos, min(n, step) * advise.row_bytes)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            if advise is not None and r1 < n:
                r2 = min(n, r1 + step)
                if pre.active:
                    pre.fetch(advise.file_pos + r1 * advise.row_bytes, (r2 - r1) * advise.row_bytes)
                else:
                    advise(r1, r2, "willneed")
            yield x[r0:r1], r0
            if advise is not None:
                advise(r0, r1, "dontneed")
    finally:
        pre.close()


def file_blocks(m: _Mapping, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Tuple[np.ndarray, int]]:
    """Yield ``(block, first_row)`` over a mapped .npy; the next block is read ahead on a
    background thread and each block's pages are released after use."""
    n, d = m.shape
    rb = d * m.dtype.itemsize
    step = block_rows(d, m.dtype.itemsize, block_bytes)
    pre = _Prefetcher(m.path)
    try:
        if pre.active:
            pre.fetch(m.offset, min(n, step) * rb)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            if r1 < n:
                r2 = min(n, r1 + step)
                if pre.active:
                    pre.fetch(m.offset + r1 * rb, (r2 - r1) * rb)
                else:
                    m.advise(r1, r2, "willneed")
            blk = m.rows(r0, r1)
            if blk.dtype == np.float64:
                with np.errstate(over="ignore"):
                    blk = blk.astype(np.float32)
            yield blk, r0
            del blk
            m.advise(r0, r1, "dontneed")
    finally:
        pre.close()


# --------------------------------------------------------------------------- search
def search_blocks(queries: Any, blocks: Iterable[Tuple[Any, int]], num_rows: int, k: int, metric: str = "ip",
                  exclude: Any = None, num_threads: Optional[int] = None,
                  extra_segments: Optional[List[Tuple[Any, bool, Optional[np.ndarray], int]]] = None):
    """Exact top-k over corpus blocks with a merged running top-k.

    Parameters
    ----------
    queries : array (Q, d)
        numpy / CPU torch, float32 / float16 / bfloat16.
    blocks : iterable of (array (n_b, d), first_row)
        Corpus rows ``first_row .. first_row + n_b - 1``; each block is read by
        the kernel once and may be released by the iterator afterwards.
    num_rows : int
        Total corpus rows (for checking exclusion ids).
    k, metric, exclude, num_threads
        As in :func:`hardneg.topk` (exclusions are global row ids).
    extra_segments : list, optional
        In-memory kernel segments searched after the blocks.

    Returns
    -------
    (scores float32 (Q, k), ids int64 (Q, k)) in the caller's type.
    """
    check_metric(metric)
    q, qbf16, k, kk, ex, nt = _checked(queries, k, num_rows, exclude, num_threads)
    run = _stream(q, qbf16, blocks, kk, metric, ex, nt, extra_segments)
    return _finish(run, k, kk, metric, nt, queries)


def _checked(queries: Any, k: Any, num_rows: int, exclude: Any, num_threads: Optional[int]):
    """(queries as the kernel reads them, is bf16, k, the running k, exclusions as CSR or None,
    threads), with the ValueError / TypeError of :func:`hardneg.topk` for bad input."""
    k = check_k(k)
    q, qbf16 = vectors_for_kernel(queries, "queries")
    check_finite(q, qbf16, "queries")
    check_output(q.shape[0], k)
    ex = to_csr(exclude, q.shape[0], num_rows)
    # the running top-k needs no more than the corpus rows; padded to k at the end
    kk = max(1, min(k, int(num_rows)))
    return q, qbf16, k, kk, ex, resolve_num_threads(num_threads)


def _stream(q: np.ndarray, qbf16: bool, blocks: Iterable[Tuple[Any, int]], kk: int, metric: str,
            ex: Optional[Tuple[np.ndarray, np.ndarray]], nt: int,
            extra_segments: Optional[list]) -> Tuple[np.ndarray, np.ndarray]:
    """The running top-``kk`` of checked kernel queries over the blocks, then ``extra_segments``
    (numpy (Q, kk) scores and ids); ``ex``: the exclusions as a CSR pair, or None."""
    ip, ix = (None, None) if ex is None else ex
    run: Optional[Tuple[np.ndarray, np.ndarray]] = None
    d = q.shape[1]

    def step(segs):
        nonlocal run
        s, i = _core.topk(q, qbf16, segs, metric, kk, ip, ix, nt)
        run = (s, i) if run is None else _core.merge_topk([run[0], s], [run[1], i], metric == "l2", kk, nt)

    for blk, r0 in blocks:
        a, bf16 = vectors_for_kernel(blk, "corpus")
        if a.shape[1] != d:
            raise ValueError(f"queries have dimension {d} but the corpus has dimension {a.shape[1]}")
        if a.shape[0]:
            step([(a, bf16, None, int(r0))])
        del a, blk
    if extra_segments:
        step(list(extra_segments))
    if run is None:
        raise ValueError("corpus is empty: need at least one row")
    return run


def _finish(run: Tuple[np.ndarray, np.ndarray], k: int, kk: int, metric: str, nt: int, queries: Any):
    """``run`` padded from ``kk`` to ``k`` results (id -1), in the caller's type."""
    if kk < k:
        run = _core.merge_topk([run[0]], [run[1]], metric == "l2", k, nt)  # pads with id -1
    return to_caller(run[0], queries), to_caller(run[1], queries)


def _screened(q: np.ndarray, qbf16: bool, whole: Tuple[Any, bool, None, int], blocks: Callable[[], Iterable],
              kk: int, metric: str, ex: Optional[Tuple[np.ndarray, np.ndarray]], nt: int,
              extra_segments: list, cache: Any, release: Callable[[], None]) -> Tuple[np.ndarray, np.ndarray]:
    """The top-``kk`` through the low-precision screen, its coded copy in ``cache`` (memory), the
    fp32 rows read in place from ``whole`` (the mapped file) for the survivors' exact scores;
    the queries the screen leaves (all of them when it does not run: the auto rule of
    cpp/topk_screen.cpp decides) are streamed from ``blocks()``.  Same results as streaming."""
    ip, ix = (None, None) if ex is None else ex
    try:
        s, i, left = _core.topk(q, qbf16, [whole] + list(extra_segments), metric, kk, ip, ix, nt, cache, True)
    finally:
        release()  # the file's pages the copy's build and the rescoring mapped in
    for a, b in left:
        sub = None if ex is None else (ip[a:b + 1] - ip[a], ix[ip[a]:ip[b]])
        s[a:b], i[a:b] = _stream(q[a:b], qbf16, blocks(), kk, metric, sub, nt, extra_segments)
    return s, i


def topk_memmap(queries: Any, corpus: np.memmap, k: int, metric: str = "ip", exclude: Any = None,
                num_threads: Optional[int] = None, block_bytes: int = DEFAULT_BLOCK_BYTES):
    """:func:`hardneg.topk` for an ``np.memmap`` corpus: streamed, bounded resident memory."""
    block_bytes = _check_block_bytes(block_bytes)
    if corpus.ndim != 2:
        raise ValueError(f"corpus must be 2-D (rows, dim), got shape {corpus.shape}")
    if corpus.shape[0] == 0:
        raise ValueError("corpus is empty: need at least one row")
    if corpus.shape[1] == 0:
        raise ValueError("corpus must have at least one column")
    qd = queries.shape[1] if hasattr(queries, "shape") and len(queries.shape) == 2 else None
    if qd is not None and qd != corpus.shape[1]:
        raise ValueError(f"queries have dimension {qd} but the corpus has dimension {corpus.shape[1]}")
    return search_blocks(queries, memmap_blocks(corpus, block_bytes), corpus.shape[0], k, metric, exclude,
                         num_threads)


class OutOfCoreIndex(SearchIndex):
    """An exact index whose corpus stays in a ``.npy`` file (see :meth:`DenseIndex.from_npy`).

    Parameters
    ----------
    path : str, PathLike or np.memmap
        2-D C-ordered ``.npy`` of float32 / float16 (float64 converted per block),
        or a 2-D ``np.memmap`` (searched in place, pages released per block).
    metric : {"ip", "cosine", "l2"}
    num_threads : int, optional
    block_bytes : int
        Bytes of corpus searched per step (default 256 MiB); resident memory is
        about one block plus the results.
    screen : bool
        Let the low-precision screen run (default True): the index then keeps an
        int8 (or bf16) coded copy of the file's rows in memory (``codes_nbytes``:
        about N x d bytes, built by the first search the screen's auto rule takes:
        256 queries or more, or the index's third search), screens against it and
        reads only the surviving rows' float32 values from the file for their
        exact scores.  Results are the same either way; False streams every search.

    Notes
    -----
    :meth:`add` keeps the appended rows in memory (ids continue after the file's rows).
    ``backend="torch"`` is not available for a streamed index.  A screened search
    reads the file through one mapping kept for the index's life (the copy is tied
    to its address); the pages it maps in (the whole file while the copy is built,
    then the rescored rows) are released when the search returns.  Float64 files,
    and corpora whose copy would exceed 1 GiB, are always streamed.
    """

    def __init__(self, path: Any, metric: str = "ip", num_threads: Optional[int] = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES, screen: bool = True):
        super().__init__(metric, num_threads)
        self.block_bytes = _check_block_bytes(block_bytes)
        if not isinstance(screen, (bool, np.bool_)):
            raise TypeError(f"screen must be True or False, got {screen!r}")
        self.screen = bool(screen)
        self._codes = _core.ScreenCache()  # the screen's coded copy (memory), built by a screened search
        self._map: Optional[_Mapping] = None  # the whole file, mapped once for the screen
        self._whole_seg: Optional[Tuple[Any, bool, None, int]] = None
        self._lock = threading.Lock()  # searches from several threads map the file once
        self._memmap = None
        if isinstance(path, np.memmap):
            if path.ndim != 2:
                raise ValueError(f"corpus must be 2-D (rows, dim), got shape {path.shape}")
            self._memmap = path
            self._file = _MemmapInfo(path)
        else:
            self._file = NpyFile(path)
        self._segments: List[Tuple[Any, bool, Optional[np.ndarray], int]] = []  # rows added in memory
        self._set_dim(self._file.shape[1], "corpus")
        self._file_rows = self._file.shape[0]
        self._size = self._file_rows
        if self._size == 0:
            raise ValueError("corpus is empty: a DenseIndex needs at least one row")

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the rows added with :meth:`add`, their norms and the screen's
        coded copy (the file's float32 rows stay on disk)."""
        return sum(a.nbytes + (0 if nr is None else nr.nbytes) for a, _, nr, _ in self._segments) + self.codes_nbytes

    @property
    def codes_nbytes(self) -> int:
        """Bytes of the screen's coded copy of the corpus in memory (0 until a search screens)."""
        return int(self._codes.nbytes)

    def __repr__(self) -> str:
        return (f"OutOfCoreIndex(path={self.path!r}, n={self._size}, dim={self._dim}, metric={self.metric!r}, "
                f"block_bytes={self.block_bytes}, screen={self.screen})")

    def __getstate__(self) -> dict:
        # pickled without the mapping and the coded copy (both rebuilt by the next screened search)
        state = self.__dict__.copy()
        for key in ("_codes", "_map", "_whole_seg", "_lock"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._codes = _core.ScreenCache()
        self._map = None
        self._whole_seg = None
        self._lock = threading.Lock()

    def _whole(self) -> Optional[Tuple[Any, bool, None, int]]:
        """The file's rows as one kernel segment read in place (mapped once and kept: the coded
        copy is keyed by the rows' address), or None when the screen cannot run here."""
        if self._whole_seg is not None:
            return self._whole_seg
        if not self.screen or _core.screen_mode() == 0 or not _core.screen_available():
            return None
        with self._lock:
            if self._whole_seg is None:
                self._whole_seg = self._map_whole()
            return self._whole_seg

    def _map_whole(self) -> Optional[Tuple[Any, bool, None, int]]:
        if self._memmap is not None:
            rows = np.asarray(self._memmap)
        elif self._file.dtype in (np.float32, np.float16):
            if self._map is None:
                self._map = self._file.open()
            rows = self._map.rows(0, self._file_rows)
        else:
            return None  # float64: converted block by block, streamed
        if rows.dtype not in (np.float32, np.float16) or _rows_ok(rows) is not rows:
            return None  # reading it in place would need a copy of the whole file
        return (rows, False, None, 0)

    def _release(self) -> None:
        """Gives the file's pages a search mapped in back to the OS (page cache)."""
        if self._memmap is not None:
            advise = _memmap_releaser(self._memmap)
            if advise is not None and self._file_rows:
                advise(0, self._file_rows, "dontneed")
        elif self._map is not None:
            self._map.advise(0, self._file_rows, "dontneed")

    def _blocks(self) -> Iterator[Tuple[np.ndarray, int]]:
        if self._memmap is not None:
            yield from memmap_blocks(self._memmap, self.block_bytes)
        elif self._map is not None:
            yield from file_blocks(self._map, self.block_bytes)
        else:
            m = self._file.open()
            try:
                yield from file_blocks(m, self.block_bytes)
            finally:
                m.close()

    def add(self, vectors: Any) -> "OutOfCoreIndex":
        """Append rows (M, d), kept in memory; ids continue after the current size. Returns self."""
        seg = kernel_segment(vectors, "vectors", self.metric, self._size)
        if seg is None:
            self._set_dim(vectors_for_kernel(vectors, "vectors")[0].shape[1], "vectors")
            return self
        self._set_dim(seg[0].shape[1], "vectors")
        self._segments.append(seg)
        self._size += seg[0].shape[0]
        return self

    def search(self, queries: Any, k: int = 10, exclude: Any = None, num_threads: Optional[int] = None,
               backend: str = "auto", memory_budget: int = 0):
        """Top-k corpus rows for each query, streaming the file; see :meth:`ExactIndex.search`."""
        check_search_backend(backend)
        if backend == "torch" or is_cuda(queries):
            raise ValueError("backend: an out-of-core index searches on the CPU (backend='auto' or 'cpp', "
                             "CPU queries)")
        self._check_query_dim(queries)
        q, qbf16, k, kk, ex, nt = _checked(queries, k, self._size, exclude,
                                           num_threads if num_threads is not None else self.num_threads)
        whole = self._whole()
        if whole is None:
            run = _stream(q, qbf16, self._blocks(), kk, self.metric, ex, nt, self._segments)
        else:
            run = _screened(q, qbf16, whole, self._blocks, kk, self.metric, ex, nt, self._segments, self._codes,
                            self._release)
        return _finish(run, k, kk, self.metric, nt, queries)


class _MemmapInfo:
    def __init__(self, x: np.memmap):
        self.path = getattr(x, "filename", None)
        self.shape = (int(x.shape[0]), int(x.shape[1]))


def as_index(corpus: Any, metric: str = "ip", num_threads: Optional[int] = None,
             block_bytes: int = DEFAULT_BLOCK_BYTES):
    """The index a caller (e.g. a mining loop) should search ``corpus`` with.

    A ``.npy`` path or an ``np.memmap`` gives a streamed :class:`OutOfCoreIndex`
    (bounded resident memory); anything else an in-memory :class:`~hardneg.DenseIndex`.
    An index object (anything with ``search``) is returned as is.
    """
    if hasattr(corpus, "search") and callable(corpus.search):
        return corpus
    if index_kind(corpus, "exact", stream_files=True) == "out_of_core":
        return OutOfCoreIndex(corpus, metric, num_threads, block_bytes)
    return ExactIndex(corpus, metric, num_threads)
