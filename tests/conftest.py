import os
from pathlib import Path

import numpy as np
import pytest

# ../shared beside the repository (CI lays it there); absent in a user's fresh clone.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT = SHARED / "data" / "scifact"


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
