"""Progress bars for long loops: tqdm when installed and asked for, else a no-op."""
from __future__ import annotations

import sys
from typing import Any


class _Null:
    """The interface of a tqdm bar that does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "q") -> Any:
    """A tqdm bar on stderr (rate and ETA, in ``unit``) when tqdm is installed and ``enabled``; else a no-op."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is optional
            pass
    return _Null()
