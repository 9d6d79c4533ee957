#!/usr/bin/env bash
# Set up everything ParetoPipe needs on a fresh Debian/Ubuntu machine:
# system packages (for the emulated testbed), a virtual environment in .venv, torch/torchvision
# pinned to the builds on this machine's disk, and the paretopipe package with its dev tools.
# Safe to run again: each step is skipped when already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PARETOPIPE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# The pin lives in requirements/torch.txt (the roles read it too); PARETOPIPE_TORCH_PIN overrides it.
TORCH_PIN="${PARETOPIPE_TORCH_PIN:-$(sed -e 's/#.*//' "$ROOT/requirements/torch.txt" | xargs)}"

log() { printf '[setup] %s\n' "$*"; }

# --- system packages -------------------------------------------------------------------------
SYSTEM_PACKAGES=(openssh-server openssh-client iproute2 iptables iputils-ping procps python3-venv rsync
                 # virtual devices (`paretopipe testbed up --kind vm`): image build and QEMU
                 mmdebstrap e2fsprogs qemu-system-x86 qemu-utils iperf3)
if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            log "missing system packages: ${missing[*]}; run this script as root (sudo) or install them"
            exit 1
        fi
        log "installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    log "no apt-get here: install ${SYSTEM_PACKAGES[*]} with your package manager"
fi

# --- virtual environment ------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "installing $TORCH_PIN (pinned; never an unpinned multi-GB download)"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_PIN
fi

STAMP="$VENV/.paretopipe-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    log "installing paretopipe (editable) with dev tools"
    "${PIP[@]}" install -e "$ROOT[dev]"
    echo "$want" >"$STAMP"
fi
log "ready: $VENV (activate with: source $VENV/bin/activate)"
