#!/usr/bin/env bash
# The test suite (what CI runs): set-up, then every test on CPU.
# Tests run in parallel worker processes (pytest-xdist), one per core up to 4: two workers on two cores
# took 0.72x the serial time (BENCHMARKS.md, "Test suite"). Extra arguments go to pytest (e.g. -k NAME,
# or -n 0 for one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKERS=$(nproc 2>/dev/null || echo 1)
[ "$WORKERS" -gt 4 ] && WORKERS=4
[ "$WORKERS" -lt 2 ] && WORKERS=0   # one core: no worker processes
# worksteal: an idle worker takes queued tests from a busy one, so a long test near the end (the GPU
# script's CPU mode) does not leave the other core idle
DIST=(); [ "$WORKERS" -gt 0 ] && DIST=(--dist worksteal)
exec .venv/bin/python -m pytest -q -n "$WORKERS" ${DIST[@]+"${DIST[@]}"} "$@"
