#!/usr/bin/env bash
# RelViT downstream-only: supervised + relations + absolute positions from scratch, as the seed's script
# (its default --patch_trans is "None").
# = ssvit relvit-script downstream-only (ssvit/cli/relvit_scripts.py); the seed's flags and defaults.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY="$ROOT/.venv/bin/python"; [[ -x $PY ]] || PY=python
exec "$PY" -m ssvit relvit-script downstream-only "$@"
