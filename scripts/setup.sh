#!/usr/bin/env bash
# Create .venv and install the project (editable, with every extra) and its dependencies. Idempotent: does
# nothing when requirements.txt, pyproject.toml and setup.py have not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.refiner-installed
want=$(cat requirements.txt pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # One resolve: the project's own metadata (pyproject.toml) with the same lower bounds from requirements.txt.
  .venv/bin/python -m pip install -q -r requirements.txt -e ".[hf,export,dev]"
  echo "$want" > "$stamp"
fi
