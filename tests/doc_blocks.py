"""The Python blocks of the README and docs/, as runnable scripts.

A block preceded by an HTML comment ``<!-- fragment: why -->`` is shown, not run (a piece of a
larger program, e.g. code that runs under torchrun); every other ``python`` block of a file runs,
in order, in one namespace, in a scratch directory, with ``path/to/scifact`` replaced by the
shared SciFact copy.  ``python tests/doc_blocks.py README.md Quickstart`` runs one section's blocks
(CI runs the Quickstart on the plain install the README gives next to it).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"(<!--\s*fragment:[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def blocks(path: Path, section: Optional[str] = None) -> List[Tuple[str, bool]]:
    """(code, runnable) for each python block of ``path`` (of one ``## section`` when given)."""
    text = path.read_text(encoding="utf-8")
    if section is not None:
        parts = re.split(r"\n(?=## )", text)
        text = next(p for p in parts if p.startswith(f"## {section}"))
    return [(m.group(2), m.group(1) is None) for m in _FENCE.finditer(text)]


def script(path: Path, scifact: Optional[Path] = None, section: Optional[str] = None) -> str:
    code = "\n".join(c for c, run in blocks(path, section) if run)
    if scifact is not None:
        code = code.replace("path/to/scifact", str(scifact))
    return code


if __name__ == "__main__":  # python tests/doc_blocks.py FILE [SECTION]
    import os
    import tempfile

    src = script(ROOT / sys.argv[1], section=sys.argv[2] if len(sys.argv) > 2 else None)
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        exec(compile(src, sys.argv[1], "exec"), {"__name__": "__main__"})
    print(f"{sys.argv[1]}: blocks ran")
