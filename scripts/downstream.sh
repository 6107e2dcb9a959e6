#!/usr/bin/env bash
# RelViT downstream: supervised finetuning (positional embeddings on) from --model_checkpoint, as the seed's script
# (whose --drop_path_rate is passed through a misspelt variable and is always empty: here it is honoured).
# = ssvit relvit-script downstream (ssvit/cli/relvit_scripts.py); the seed's flags and defaults.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; PY="$ROOT/.venv/bin/python"; [[ -x $PY ]] || PY=python
exec "$PY" -m ssvit relvit-script downstream "$@"
