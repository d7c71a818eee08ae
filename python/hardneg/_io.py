"""Small file helpers shared by the dataset and metrics readers and the writers of output files."""
from __future__ import annotations

import gzip
import io
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO, Union


def open_text(path: Union[str, os.PathLike]) -> TextIO:
    """Open a UTF-8 text file for reading; ``.gz`` files are decompressed on the fly."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _not_regular(path: Path) -> bool:
    try:
        return path.exists() and not path.is_file()
    except OSError:
        return False


@contextmanager
def _replaced_on_success(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path``: renamed onto ``path`` when the block ends without an
    error, removed when it fails (the previous file stays intact, no temporary file is left)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def atomic_binary_output(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """A binary file written to a temporary file beside ``path`` and renamed into place when the
    block ends without an error (a failure half-way leaves the previous file intact)."""
    with _replaced_on_success(Path(path)) as tmp, open(tmp, "xb") as f:
        yield f


@contextmanager
def atomic_text_output(path: Union[str, os.PathLike]) -> Iterator[TextIO]:
    """Write a UTF-8 text file (``.gz``: compressed) to a temporary file beside ``path``, renamed
    into place when the block ends without an error: a failure half-way leaves the previous
    file intact (and no temporary file behind).  Targets that are not regular files (``/dev/stdout``)
    are written directly.  ``.gz`` headers carry no time stamp: equal texts give equal bytes.
    """
    path = Path(path)
    if _not_regular(path):
        with open(path, "w", encoding="utf-8") as f:
            yield f
        return
    with _replaced_on_success(path) as tmp:
        raw = open(tmp, "xb")  # O_EXCL; the umask applies
        if path.suffix == ".gz":
            f = io.TextIOWrapper(gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw, mtime=0), encoding="utf-8")
        else:
            f = io.TextIOWrapper(raw, encoding="utf-8")
        with raw, f:
            yield f
