#!/usr/bin/env python
"""DINO's / iBOT's / EsViT's eval_linear.py: ssvit linear (``ssvit.cli.linear``), under the original script's name and flags."""
if __name__ == "__main__":
    from ssvit.cli.main import run_script
    run_script("linear")
