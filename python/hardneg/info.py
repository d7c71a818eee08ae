"""What this installation of hardneg runs with."""
from __future__ import annotations

import importlib.util
from typing import Dict

from hardneg import _core
from hardneg._threads import get_num_threads
from hardneg._version import __version__

OPTIONAL = ("torch", "faiss", "bm25s", "Stemmer", "pytrec_eval", "sentence_transformers", "tqdm")


def simd_level() -> str:
    """The SIMD kernel set picked at run time ("avx512", "avx2", "neon" or "scalar").

    Override with the environment variable ``HARDNEG_SIMD`` before import.
    """
    return _core.simd_level()


def info() -> Dict[str, object]:
    """Version, SIMD level, thread count and which optional backends are importable."""
    return {
        "version": __version__,
        "simd_level": _core.simd_level(),
        "simd_levels_available": list(_core.available_simd_levels()),
        # codes of the exact search's low-precision screen this CPU runs ("int8": AVX-512 VNNI,
        # "bf16": AVX-512 BF16; docs/topk.md), best first
        "screen_codes": list(_core.screen_types()),
        # int8 codes scored on AMX tiles (Intel Sapphire Rapids and later; same results as VNNI)
        "screen_amx": bool(_core.amx_enabled()),
        "num_threads": get_num_threads(),
        "optional": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL},
    }
