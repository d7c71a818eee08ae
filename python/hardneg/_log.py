"""The ``hardneg`` logger: silent fallbacks are reported here, never swallowed.

Following the library convention it only has a ``NullHandler``; show its messages with
``logging.basicConfig(level=logging.INFO)`` or a handler on ``logging.getLogger("hardneg")``.
"""
import logging

logger = logging.getLogger("hardneg")
logger.addHandler(logging.NullHandler())


def check_simd_override(core) -> None:
    """Warn when ``HARDNEG_SIMD`` names a level this CPU or build cannot run (the best one runs)."""
    import os

    want = os.environ.get("HARDNEG_SIMD")
    if want and want != core.simd_level():
        logger.warning("HARDNEG_SIMD=%r is not available here (available: %s); running %r instead",
                       want, ", ".join(core.available_simd_levels()), core.simd_level())
