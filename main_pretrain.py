#!/usr/bin/env python
"""DINO's main_dino.py (and every method's own flags): ssvit pretrain (``ssvit.cli.pretrain``), under the original script's name and flags."""
if __name__ == "__main__":
    from ssvit.cli.main import run_script
    run_script("pretrain")
