#!/usr/bin/env bash
# The test suite (what CI runs): set-up, then every test on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
