"""The README's two commands are what CI runs, word for word."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_ci_runs_the_readme_commands_as_written():
    cmds = _two_commands()
    assert len(cmds) == 2, cmds
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for cmd in cmds:
        assert cmd in ci, f".ci/run does not run the README's command {cmd!r}"


def test_test_command_uses_the_constraints():
    assert "-c tests/constraints.txt" in _two_commands()[1]
    pins = (ROOT / "tests" / "constraints.txt").read_text(encoding="utf-8")
    for peer in ("sentence-transformers==", "bm25s==", "pytrec_eval-terrier==", "faiss-cpu==", "torch==2.13.0"):
        assert peer in pins, peer
