"""Every Python block of the README and docs/ runs as written (tests/doc_blocks.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import ROOT, blocks, script
from paths import SCIFACT

FILES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("name", FILES)
def test_python_blocks_run(name, tmp_path):
    path = ROOT / name
    if not any(run for _, run in blocks(path)):
        pytest.skip("no runnable python block")
    code = script(path, SCIFACT)
    if "path/to/scifact" in script(path) and not SCIFACT.is_dir():
        pytest.skip("needs ../shared/data/scifact")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, f"{name}:\n{r.stderr[-4000:]}"


def test_fragments_say_why():
    for name in FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.strip().startswith("<!-- fragment"):
                assert len(line.split(":", 1)[-1].strip(" ->")) > 5, (name, line)
