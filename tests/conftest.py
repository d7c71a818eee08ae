import inspect
from importlib import metadata

import numpy as np
import pytest

from paths import SCIFACT, SHARED  # noqa: F401  (re-exported for the test modules)

from hardneg import _core

# Names in a test's source that mean it compares against a peer -> the peer's distribution.
# Such tests get the `peer` mark (the forward check reruns them against the newest releases) and
# a failure names the peer versions it ran against.
PEERS = {
    "sentence_transformers": "sentence-transformers",
    "st_mine": "sentence-transformers",
    "bm25s": "bm25s",
    "pytrec_eval": "pytrec-eval-terrier",
    "faiss": "faiss-cpu",
    "ranx": "ranx",
    "ir_measures": "ir-measures",
    "rank_bm25": "rank-bm25",
}


def _peers_of(item) -> list:
    fn = getattr(item, "function", None)
    try:
        src = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        return []
    return sorted({dist for key, dist in PEERS.items() if key in src})


def pytest_collection_modifyitems(config, items):
    for item in items:
        peers = _peers_of(item)
        if peers:
            item.add_marker(pytest.mark.peer)
            item.stash[_PEERS_KEY] = peers


_PEERS_KEY = pytest.StashKey[list]()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    peers = item.stash.get(_PEERS_KEY, None)
    if rep.failed and peers:
        text = ", ".join(f"{p} {_version(p)}" for p in peers)
        if hasattr(rep.longrepr, "addsection"):
            rep.longrepr.addsection("peer versions", f"compared against {text} (pins: tests/constraints.txt)")
        else:
            rep.sections.append(("peer versions", f"compared against {text}"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=list(_core.available_simd_levels()))
def level(request):
    """Each SIMD level this CPU runs, set for the test and restored after it."""
    start = _core.simd_level()
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(start)


@pytest.fixture
def scifact_path():
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip("../shared/data/scifact is not available")
    return SCIFACT


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
