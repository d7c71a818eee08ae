import numpy as np
import pytest

from paths import SCIFACT, SHARED  # noqa: F401  (re-exported for the test modules)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


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
