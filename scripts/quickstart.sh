#!/usr/bin/env bash
# The main job: installs into .venv if needed, then runs the quickstart experiment on the bundled
# scikit-learn digits (no download) and prints the result table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/ssl-backdoor experiment -c configs/experiments/quickstart.yaml "$@"
