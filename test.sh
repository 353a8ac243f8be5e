#!/usr/bin/env bash
# The test suite, on a fresh clone too: installs what is missing into .venv on its first run
# (scripts/setup_env.sh), then runs pytest. Extra arguments go to pytest (e.g. bash test.sh -x -k lot).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
exec "$PYTHON" -m pytest -q "$@"
