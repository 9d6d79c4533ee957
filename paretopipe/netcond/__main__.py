"""``python -m paretopipe.netcond``: see :mod:`paretopipe.netcond.cli`."""

import sys

from paretopipe.netcond.cli import main

if __name__ == "__main__":
    sys.exit(main())
