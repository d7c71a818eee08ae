"""``python -m hardneg``: the ``hardneg`` command."""
import sys

from hardneg.cli import main

if __name__ == "__main__":
    sys.exit(main())
