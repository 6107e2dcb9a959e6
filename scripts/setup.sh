#!/usr/bin/env bash
# Idempotent set-up: virtualenv in .venv, PyTorch from the local wheel cache/PyPI, ssvit (editable)
# with its test extras, and the Fashion-MNIST Debian package when apt is available. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch + torchvision (large download the first time)"
  "$VPY" -m pip install -q --upgrade pip
  if [ "$(uname -m)" = "aarch64" ]; then
    "$VPY" -m pip install -q torch==2.9.1 torchvision==0.24.1
  else
    "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  fi
fi
STAMP=.venv/.ssvit-installed
# re-install when pyproject changed, or when .venv's ssvit points at another checkout (a copied venv)
HERE_PKG="$(pwd -P)/ssvit/__init__.py"
VENV_PKG="$("$VPY" -c 'import os, ssvit; print(os.path.realpath(ssvit.__file__))' 2>/dev/null || true)"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$VENV_PKG" != "$HERE_PKG" ]; then
  echo "[setup] installing ssvit and its dependencies"
  "$VPY" -m pip install -q -e ".[dev]"
  touch "$STAMP"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "[setup] warning: could not install dataset-fashion-mnist; the demo will need --download true"
  else
    echo "[setup] note: /usr/share/datasets/fashion-mnist missing and apt unavailable; the demo will need --download true"
  fi
fi
