#!/usr/bin/env bash
# The fast tier: every test that needs no testbed, VM or playbook (those are marked slow), on two
# pytest-xdist workers, a test file's tests on one worker (so its module fixtures are shared).
# Run it on every change; run ./scripts/test.sh (the whole suite) before a change lands.
# Extra arguments go to pytest (`-n 0`: one process). docs/tests.md says which tier when.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/test.sh" -m "not slow" -n 2 --dist loadfile "$@"
