#!/usr/bin/env bash
# Set up everything (Python env, and Chromium for the browser tests) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Chromium for the browser tests and static figure export..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
      echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "warning: chromium not found and cannot be installed here; browser tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
