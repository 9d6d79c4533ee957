#!/usr/bin/env bash
# The fast tier: every test that needs no testbed, VM or playbook (those are marked slow), in
# about 3 minutes on 2 cores. Run it on every change; run ./scripts/test.sh (the whole suite)
# before a change lands. Extra arguments go to pytest.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/test.sh" -m "not slow" "$@"
