"""``python -m analysis`` is the same as ``python -m analysis.pareto``."""

import sys

from analysis.pareto import main

sys.exit(main())
