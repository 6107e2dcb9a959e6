#!/usr/bin/env python
"""MAE's main_finetune.py: ssvit finetune (``ssvit.cli.finetune``), under the original script's name and flags."""
if __name__ == "__main__":
    from ssvit.cli.main import run_script
    run_script("finetune")
