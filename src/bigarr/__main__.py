"""``python -m bigarr``: the same command line as the ``bigarr`` console script."""

from __future__ import annotations

import sys

from bigarr._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
