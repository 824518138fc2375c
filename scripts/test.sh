#!/usr/bin/env bash
# The test suite: installs into .venv if needed, then runs pytest (CPU only) in two pytest-xdist
# workers (PYTEST_WORKERS=0: one process) and lists the 20 slowest tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q --durations=20 -n "${PYTEST_WORKERS:-2}" "$@"
