#!/usr/bin/env bash
# The main job: set-up, DINO pretraining on Fashion-MNIST (2 CPU cores: about 12 min, set-up aside), then k-NN vs baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m ssvit demo "$@"
