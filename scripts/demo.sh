#!/usr/bin/env bash
# Set everything up, then run the main job and its analysis.
# Until the sweep lands this verifies every split point of every model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
PP="$ROOT/.venv/bin/paretopipe"
for model in mobilenet_v2 resnet18 resnet50 vgg16 alexnet inception_v3; do
    "$PP" verify "$model" --input-size "${INPUT_SIZE:-96}"
done
