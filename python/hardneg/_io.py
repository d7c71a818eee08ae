"""Small file helpers shared by the dataset and metrics readers."""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import TextIO, Union


def open_text(path: Union[str, os.PathLike]) -> TextIO:
    """Open a UTF-8 text file for reading; ``.gz`` files are decompressed on the fly."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")
