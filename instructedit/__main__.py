"""``python -m instructedit``: the command line (see :mod:`instructedit.cli`)."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
