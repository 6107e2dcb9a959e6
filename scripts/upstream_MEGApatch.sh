#!/usr/bin/env bash
# RelViT upstream on megapatches (--side_megapatches N, default 5), as the seed's script.
# = ssvit relvit-script upstream_MEGApatch (ssvit/cli/relvit_scripts.py); the seed's flags and defaults.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY="$ROOT/.venv/bin/python"; [[ -x $PY ]] || PY=python
exec "$PY" -m ssvit relvit-script upstream_MEGApatch "$@"
