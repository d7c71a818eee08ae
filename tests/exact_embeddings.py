"""Integer embeddings whose scores are exact in float32 and distinct per query, for parity tests
where no order of summation and no tie may change a ranking (tests/test_mining.py,
tests/test_st_dropin.py)."""
import numpy as np


def integer_embeddings(rng: np.random.Generator, n: int, nq: int, d: int):
    """``(Q, C, S)``: float32 queries (nq, d + 1) and corpus (n, d + 1) with entries in [-30, 30]
    plus one column that makes ``score = n * (q . c) + doc_row``, and their float64 scores S."""
    c = rng.integers(-30, 31, size=(n, d))
    q = rng.integers(-30, 31, size=(nq, d))
    C = np.concatenate([c, np.arange(n)[:, None]], 1).astype(np.float32)
    Q = np.concatenate([q * n, np.ones((nq, 1))], 1).astype(np.float32)
    return Q, C, Q.astype(np.float64) @ C.astype(np.float64).T
