#!/usr/bin/env bash
# Set everything up, then run the main job and its analysis: a sweep on the emulated testbed
# (ansible-playbook playbooks/sweep.yml), which ends with `python -m analysis.pareto`.
# A modest default that finishes in under 10 minutes on 2 cores; override with the variables
# below, e.g. MODEL=resnet18 SPLITS=all CONDITIONS=lan,wan WINDOWS=1,8 ./scripts/demo.sh. It
# covers sequential runs (window 1) and pipelined ones (window 4) at two batch sizes: with
# window 1 alone throughput is batch / latency and every split lands on one hyperbola (a
# one-point frontier); windows and batch sizes make the trade-off. Running it again resumes the
# same sweep (finished runs are skipped, failed ones rerun).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

MODEL="${MODEL:-mobilenet_v2}"
INPUT_SIZE="${INPUT_SIZE:-96}"
SPLITS="${SPLITS:-0,8,16,23}"
WINDOWS="${WINDOWS:-1,4}"
BATCH_SIZES="${BATCH_SIZES:-1,8}"
CONDITIONS="${CONDITIONS:-lan,wifi}"
BACKENDS="${BACKENDS:-tcp}"
CHAIN="${CHAIN:-pi1,gpu}"
BATCHES="${BATCHES:-20}"
DURATION="${DURATION:-0}"        # > 0: seconds of measurement per run instead of BATCHES
MIN_BATCHES="${MIN_BATCHES:-10}"
SWEEP_ID="${SWEEP_ID:-${MODEL}-${INPUT_SIZE}px-${CHAIN//,/-}}"

# The emulated testbed: network namespaces pi1, pi2 (edge) and gpu (server), each with its
# own sshd; writes inventory/emulated/hosts.yml (the sweep would also do this itself).
paretopipe testbed up

ansible-playbook playbooks/sweep.yml \
    -e model="$MODEL" -e input_size="$INPUT_SIZE" -e splits="$SPLITS" \
    -e conditions="$CONDITIONS" -e backends="$BACKENDS" -e chain="$CHAIN" \
    -e windows="$WINDOWS" -e batch_sizes="$BATCH_SIZES" \
    -e batches="$BATCHES" -e duration="$DURATION" -e warmup=3 -e min_batches="$MIN_BATCHES" \
    -e sweep_id="$SWEEP_ID"

SWEEP="results/$SWEEP_ID"
echo
echo "results:  $SWEEP/*.json (one file per run), $SWEEP/sweep-summary.yml"
echo "analysis: $SWEEP/analysis/report.html (python -m analysis.pareto $SWEEP)"
if compgen -G "$SWEEP/analysis/plots/timeline_*.png" > /dev/null; then
    echo "timelines (runs under a trace): $(echo "$SWEEP"/analysis/plots/timeline_*.png)"
fi
echo "stop the testbed with: paretopipe testbed down (or ansible-playbook playbooks/teardown.yml)"
