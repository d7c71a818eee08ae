"""Where the shared test data lives: ``../shared`` beside the repository (CI lays it there), or
``$HARDNEG_SCIFACT`` for a checkout elsewhere.  Absent in a user's fresh clone: tests skip."""
import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
if not SCIFACT.is_dir() and os.environ.get("HARDNEG_SCIFACT"):
    SCIFACT = Path(os.environ["HARDNEG_SCIFACT"])
