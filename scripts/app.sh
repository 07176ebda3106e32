#!/usr/bin/env bash
# Set up the Python env and start the app on the shipped checkpoints (http://localhost:8501).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/refiner app "$@"
