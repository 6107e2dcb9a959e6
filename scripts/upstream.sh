#!/usr/bin/env bash
# RelViT upstream (self-supervised: relations + absolute positions, no positional embeddings), as the seed's script.
# = ssvit relvit-script upstream (ssvit/cli/relvit_scripts.py); the seed's flags and defaults.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY="$ROOT/.venv/bin/python"; [[ -x $PY ]] || PY=python
exec "$PY" -m ssvit relvit-script upstream "$@"
