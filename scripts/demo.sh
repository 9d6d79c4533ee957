#!/usr/bin/env bash
# Set everything up, then run the main job and its analysis: a sweep on the emulated testbed
# (ansible-playbook playbooks/sweep.yml), which ends with `python -m analysis.pareto`.
# A modest default that finishes in under 10 minutes on 2 cores; override with the variables
# below, e.g. MODEL=resnet18 SPLITS=all CONDITIONS=lan,wan WINDOWS=1,8 ./scripts/demo.sh. It
# covers sequential runs (window 1) and pipelined ones (window 4) at two batch sizes: with
# window 1 alone throughput is batch / latency and every split lands on one hyperbola (a
# one-point frontier); windows and batch sizes make the trade-off. Running it again resumes the
# same sweep (finished runs are skipped, failed ones rerun). Each configuration runs REPEATS
# times (default 2: a configuration measured once has unknown uncertainty), in a seeded shuffled
# order, and the devices of the chain get cores of their own (see DEMO_TOPOLOGY below).
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
REPEATS="${REPEATS:-2}"
# Seconds between the controller's progress polls of the source: each poll starts a Python on
# the source device, inside its CPU quota, while it measures; the round's end ends a poll early.
POLL_S="${POLL_S:-120}"

# Cores of their own for the chain's devices (docs/testbed.md, "Noise"): the packaged topology
# pins pi1 and pi2 round-robin and lets gpu use every core, so gpu's stage ran on the core
# pi1 measures on. Here pi1 (and the idle pi2) take core 0 and gpu the rest, when there are
# at least 2 cores.
NCPU="$(nproc)"
DEMO_TOPOLOGY="${DEMO_TOPOLOGY:-}"
if [[ -z "$DEMO_TOPOLOGY" && "$NCPU" -ge 2 ]]; then
    mkdir -p "$ROOT/build"
    DEMO_TOPOLOGY="$ROOT/build/demo-topology.yml"
    sed -e "s/^    profile: rpi4$/    profile: rpi4\n    cpuset: \"0\"/" \
        -e "s/^    profile: gpu-server$/    profile: gpu-server\n    cpuset: \"1-$((NCPU - 1))\"/" \
        "$ROOT/paretopipe/data/topology.yml" > "$DEMO_TOPOLOGY"
fi
TOPOLOGY_ARGS=()
SWEEP_TOPOLOGY=()
if [[ -n "$DEMO_TOPOLOGY" ]]; then
    TOPOLOGY_ARGS=(--topology "$DEMO_TOPOLOGY")
    SWEEP_TOPOLOGY=(-e testbed_topology="$DEMO_TOPOLOGY")
fi
DURATION="${DURATION:-0}"        # > 0: seconds of measurement per run instead of BATCHES
MIN_BATCHES="${MIN_BATCHES:-10}"
SWEEP_ID="${SWEEP_ID:-${MODEL}-${INPUT_SIZE}px-${CHAIN//,/-}}"

# The emulated testbed: network namespaces pi1, pi2 (edge) and gpu (server), each with its
# own sshd; writes inventory/emulated/hosts.yml (the sweep would also do this itself).
paretopipe testbed up "${TOPOLOGY_ARGS[@]}"

ansible-playbook playbooks/sweep.yml \
    -e model="$MODEL" -e input_size="$INPUT_SIZE" -e splits="$SPLITS" \
    -e conditions="$CONDITIONS" -e backends="$BACKENDS" -e chain="$CHAIN" \
    -e windows="$WINDOWS" -e batch_sizes="$BATCH_SIZES" \
    -e batches="$BATCHES" -e duration="$DURATION" -e warmup=3 -e min_batches="$MIN_BATCHES" \
    -e repeats="$REPEATS" -e source_runner_poll_s="$POLL_S" -e sweep_id="$SWEEP_ID" "${SWEEP_TOPOLOGY[@]}"

SWEEP="results/$SWEEP_ID"
echo
echo "results:  $SWEEP/*.json (one file per run), $SWEEP/sweep-summary.yml"
echo "analysis: $SWEEP/analysis/report.html (python -m analysis.pareto $SWEEP)"
if compgen -G "$SWEEP/analysis/plots/timeline_*.png" > /dev/null; then
    echo "timelines (runs under a trace): $(echo "$SWEEP"/analysis/plots/timeline_*.png)"
fi
echo "stop the testbed with: paretopipe testbed down (or ansible-playbook playbooks/teardown.yml)"
