"""``python -m paretopipe.plan make|run|wait``: the Ansible roles' entry points (:mod:`paretopipe.plan.roles`)."""

import sys

from paretopipe.runtime.cores import quiet_waiting
from paretopipe.threads import exit_code

quiet_waiting()  # before torch is imported: idle OpenMP threads sleep (docs/performance.md)

from paretopipe.plan.roles import main  # noqa: E402 (after quiet_waiting)

sys.exit(exit_code(main()))
