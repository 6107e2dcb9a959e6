#!/usr/bin/env python
"""DINO's eval_knn.py: ssvit knn (``ssvit.cli.knn``), under the original script's name and flags."""
if __name__ == "__main__":
    from ssvit.cli.main import run_script
    run_script("knn")
