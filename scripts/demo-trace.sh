#!/usr/bin/env bash
# A link that moves, beside one that does not: a sweep on the emulated testbed under the
# packaged trace steps-2-50 (50 and 2 Mbit/s alternating every 10 s, 5 ms delay) and under the
# constant wifi (50 Mbit/s, 5 ms ± 1 ms), then the analysis, whose report has a timeline per
# configuration group: the trace's capacity, each batch's latency and the throughput over time.
#
# The trace is replayed between the two devices of the hop in both directions, from each run's
# first counted batch (after warm-up), so every run of a configuration sees the same link at the
# same point of its batches (docs/testbed.md, "Conditions that move"). Each run lasts DURATION
# seconds of measurement: 20 s sees one 50 Mbit/s and one 2 Mbit/s step. The default (an early
# and a late split, windows 1 and 4, batch 8: 8 runs) is sized for under 10 minutes on 2 cores;
# override with the variables below. Running it again resumes the same sweep.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

MODEL="${MODEL:-mobilenet_v2}"
INPUT_SIZE="${INPUT_SIZE:-96}"
SPLITS="${SPLITS:-0,16}"
WINDOWS="${WINDOWS:-1,4}"
BATCH_SIZES="${BATCH_SIZES:-8}"
CONDITIONS="${CONDITIONS:-wifi,steps-2-50}"
CHAIN="${CHAIN:-pi1,gpu}"
DURATION="${DURATION:-20}"
SWEEP_ID="${SWEEP_ID:-trace-${MODEL}-${INPUT_SIZE}px-${CHAIN//,/-}}"

paretopipe testbed up

ansible-playbook playbooks/sweep.yml \
    -e model="$MODEL" -e input_size="$INPUT_SIZE" -e splits="$SPLITS" \
    -e conditions="$CONDITIONS" -e backends=tcp -e chain="$CHAIN" \
    -e windows="$WINDOWS" -e batch_sizes="$BATCH_SIZES" \
    -e duration="$DURATION" -e warmup=3 -e min_batches=5 -e sweep_id="$SWEEP_ID"

SWEEP="results/$SWEEP_ID"
echo
echo "results:   $SWEEP/*.json (per batch: trace_send_s, trace_recv_s, trace_capacity_mbit)"
echo "analysis:  $SWEEP/analysis/report.html"
echo "timelines: $(ls "$SWEEP"/analysis/plots/timeline_*.png 2>/dev/null | tr '\n' ' ')"
echo "stop the testbed with: paretopipe testbed down"
