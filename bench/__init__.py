"""Benchmarks for bigarr: a generic harness plus ``cases_*.py`` modules.

Run ``python bench/run.py --help`` (or ``python -m bench.run --help`` from the
repository root).  The modules in this folder import each other by their
top-level names (``import harness``), exactly as they do when a script in this
folder is run directly, so importing this package puts the folder on
``sys.path``.  Always write ``from harness import case`` in a case module, never
``from bench.harness import case``: the two spellings would create two separate
case registries.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
