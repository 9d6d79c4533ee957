#!/usr/bin/env bash
# A link that moves, beside one that does not: scripts/demo.sh's sweep on the emulated testbed
# under the packaged trace steps-2-50 (50 and 2 Mbit/s alternating every 10 s, 5 ms delay) and
# under the constant wifi (50 Mbit/s, 5 ms ± 1 ms), then the analysis, whose report has a
# timeline per configuration group: the trace's capacity, each batch's latency and the
# throughput over time. Per batch, the result files carry trace_send_s, trace_recv_s and
# trace_capacity_mbit.
#
# The trace is replayed between the two devices of the hop in both directions, from each run's
# first counted batch (after warm-up), so every run of a configuration sees the same link at the
# same point of its batches (docs/testbed.md, "Conditions that move"). Each run lasts DURATION
# seconds of measurement: 20 s sees one 50 Mbit/s and one 2 Mbit/s step. The default (an early
# and a late split, windows 1 and 4, batch 8: 8 runs) is sized for under 10 minutes on 2 cores;
# override any of demo.sh's variables. It measures each configuration once (REPEATS=1, against
# demo.sh's 2) to stay within 10 minutes, so its report calls every membership unknown; give
# REPEATS=2 for intervals. Running it again resumes the same sweep.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${MODEL:-mobilenet_v2}" INPUT_SIZE="${INPUT_SIZE:-96}" CHAIN="${CHAIN:-pi1,gpu}"
export MODEL INPUT_SIZE CHAIN
export SPLITS="${SPLITS:-0,16}" WINDOWS="${WINDOWS:-1,4}" BATCH_SIZES="${BATCH_SIZES:-8}"
export CONDITIONS="${CONDITIONS:-wifi,steps-2-50}" DURATION="${DURATION:-20}" MIN_BATCHES="${MIN_BATCHES:-5}"
export REPEATS="${REPEATS:-1}"
export SWEEP_ID="${SWEEP_ID:-trace-${MODEL}-${INPUT_SIZE}px-${CHAIN//,/-}}"
exec "$ROOT/scripts/demo.sh"
