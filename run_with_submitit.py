#!/usr/bin/env python
"""DINO's run_with_submitit.py (its --nodes --ngpus --timeout --partition --use_volta32 --comment, then main_dino's flags): ssvit submit (``ssvit.cli.submit``), under the original script's name."""
if __name__ == "__main__":
    from ssvit.cli.main import run_script
    run_script("submit")
