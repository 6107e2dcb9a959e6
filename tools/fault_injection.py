#!/usr/bin/env python
"""Fault injection: kill training runs at random moments and inside checkpoint writes, resume them,
and check that the result is bit-identical to an uninterrupted run (RELIABILITY.md).

Per method family (``--methods dino ibot esvit``) one uninterrupted reference run, then
``--trials`` runs, each interrupted ``--kills`` times before it is let finish. The interruption
cycles through the modes:

* ``kill9``: SIGKILL at a uniformly random moment of the run (start-up included);
* ``kill9_in_write``: SIGKILL the moment a checkpoint temp file appears (a write in progress);
* ``sigterm`` / ``sigusr1`` / ``sigusr2``: the pre-emption signals (graceful: exit 0 expected);
* ``torchrun_kill9``: a 2-rank Gloo run under torchrun, SIGKILL to one rank (the launcher tears the
  job down), resumed under torchrun and compared with a 2-rank reference.

After each trial: final student / teacher / loss state equal to the reference (``torch.equal``),
the numbered checkpoints and log.txt lines of every epoch present once, no ``*.tmp`` left.
Writes a JSON summary and prints the results table.

Example: python tools/fault_injection.py --trials 10 --json /tmp/fi.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from ssvit.utils.checkpoint import load_checkpoint  # noqa: E402

TINY = ["--dataset", "synthetic", "--synthetic_size", "96", "--arch", "vit_pico", "--patch_size", "4",
        "--global_crops_size", "32", "--local_crops_size", "16", "--local_crops_number", "2", "--out_dim", "64",
        "--head_hidden_dim", "64", "--head_bottleneck_dim", "32", "--batch_size_per_gpu", "8", "--num_workers", "0",
        "--print_freq", "1", "--tensorboard", "false", "--lr", "0.005", "--epochs", "3", "--saveckp_freq", "1",
        "--save_every_iters", "1", "--save_every_minutes", "0"]
METHOD_FLAGS = {"dino": ["--method", "dino"], "ibot": ["--method", "ibot", "--patch_out_dim", "64"],
                "esvit": ["--method", "esvit", "--use_dense_prediction", "true"]}
MODES = ["kill9", "kill9_in_write", "sigterm", "kill9", "sigusr1", "kill9_in_write", "sigusr2", "kill9",
         "kill9_in_write", "sigterm"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def command(flags, out, torchrun=False):
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                os.path.join(ROOT, "main_pretrain.py"), *flags, "--batch_size_per_gpu", "4", "--output_dir", out]
    return [sys.executable, os.path.join(ROOT, "main_pretrain.py"), *flags, "--output_dir", out]


def finish(flags, out, torchrun=False):
    p = subprocess.run(command(flags, out, torchrun), capture_output=True, text=True, env=ENV, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"run failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def interrupt(flags, out, mode, rng, duration, torchrun=False) -> dict:
    """One interrupted run; ``duration``: the uninterrupted run's wall time (kill moments are drawn in it)."""
    proc = subprocess.Popen(command(flags, out, torchrun), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV, cwd=ROOT, start_new_session=True)
    t0 = time.time()
    info = {"mode": mode}
    if mode == "kill9_in_write":
        deadline = t0 + 60
        stale = set(os.listdir(out)) if os.path.isdir(out) else set()  # left by an earlier kill
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(out) and any(f.endswith(".tmp") and f not in stale for f in os.listdir(out)):
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    elif mode == "torchrun_kill9":
        time.sleep(rng.uniform(0.3, 0.95) * duration)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if children:
            os.kill(int(rng.choice(children)), signal.SIGKILL)
            info["killed_at"] = time.time()
    else:
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        sig = {"kill9": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1,
               "sigusr2": signal.SIGUSR2}[mode]
        if proc.poll() is None:
            proc.send_signal(sig)
    try:
        text, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
    if "killed_at" in info:  # how long the launcher took to bring the job down after one rank died
        info["teardown_s"] = round(time.time() - info.pop("killed_at"), 2)
    info.update(seconds=round(time.time() - t0, 2), returncode=proc.returncode,
                tmp_after_kill=len([f for f in os.listdir(out) if f.endswith(".tmp")]) if os.path.isdir(out) else 0)
    # did it land: killed (-9), or for the stop signals a "Stopped in epoch" (else the run had ended)
    info["landed"] = proc.returncode == -9 or (torchrun and proc.returncode != 0) or "Stopped in epoch" in text
    if mode in ("sigterm", "sigusr1", "sigusr2") and proc.returncode != 0:
        info["graceful_failure"] = text[-500:]
    return info


def same_state(a, b, loss_key) -> bool:
    for key in ("student", "teacher"):
        if a[key].keys() != b[key].keys() or any(not torch.equal(a[key][k], b[key][k]) for k in a[key]):
            return False
    return all(torch.equal(a[loss_key][k], b[loss_key][k]) for k in a[loss_key])


def check_dir(out, epochs) -> dict:
    files = os.listdir(out)
    logs = [json.loads(line) for line in open(os.path.join(out, "log.txt")) if line.strip()]
    epoch_lines = [r["epoch"] for r in logs if "resume_changes" not in r]
    return {"tmp_left": len([f for f in files if f.endswith(".tmp")]),
            "numbered_ok": all(f"checkpoint{e:04}.pth" in files for e in range(1, epochs)),
            "log_ok": epoch_lines == list(range(epochs))}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["dino", "ibot", "esvit"])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kills", type=int, default=2, help="interruptions per trial before it is let finish")
    ap.add_argument("--torchrun_trials", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    root = tempfile.mkdtemp(prefix="ssvit_fi_")
    rows, trials = [], []
    families = [(m, False) for m in a.methods] + ([("dino", True)] if a.torchrun_trials else [])
    for method, torchrun in families:
        flags = TINY + METHOD_FLAGS[method]
        loss_key = {"dino": "dino_loss", "ibot": "ibot_loss", "esvit": "dino_loss"}[method]
        name = f"{method} (torchrun 2 ranks)" if torchrun else method
        ref_dir = os.path.join(root, f"ref_{method}_{int(torchrun)}")
        t_ref = time.time()
        finish(flags, ref_dir, torchrun)
        duration = time.time() - t_ref
        ref = load_checkpoint(os.path.join(ref_dir, "checkpoint.pth"))
        n_trials = a.torchrun_trials if torchrun else a.trials
        stats = {"family": name, "run_seconds": round(duration, 1), "trials": 0, "interruptions": 0, "bit_identical": 0, "tmp_left": 0,
                 "numbered_ok": 0, "log_ok": 0, "graceful_ok": 0, "graceful": 0, "landed": 0}
        for t in range(n_trials):
            out = os.path.join(root, f"{method}_{int(torchrun)}_{t}")
            events = []
            for k in range(a.kills):
                mode = "torchrun_kill9" if torchrun else MODES[(t * a.kills + k) % len(MODES)]
                ev = interrupt(flags, out, mode, rng, duration, torchrun)
                events.append(ev)
                stats["landed"] += int(ev["landed"])
                if mode.startswith("sig"):
                    stats["graceful"] += 1
                    stats["graceful_ok"] += int(ev["returncode"] == 0)
            finish(flags, out, torchrun)
            got = load_checkpoint(os.path.join(out, "checkpoint.pth"))
            ok = same_state(ref, got, loss_key)
            d = check_dir(out, 3)
            stats["trials"] += 1
            stats["interruptions"] += len(events)
            stats["bit_identical"] += int(ok)
            stats["tmp_left"] += d["tmp_left"]
            stats["numbered_ok"] += int(d["numbered_ok"])
            stats["log_ok"] += int(d["log_ok"])
            trials.append({"family": name, "trial": t, "events": events, "bit_identical": ok, **d})
            print(f"{name} trial {t}: {[e['mode'] + '@' + str(e['seconds']) + 's rc=' + str(e['returncode']) for e in events]}"
                  f" -> bit-identical {ok}, {d}", flush=True)
        downs = sorted(e["teardown_s"] for tr in trials if tr["family"] == name for e in tr["events"]
                       if "teardown_s" in e)
        if downs:
            stats["teardown_s"] = {"median": downs[len(downs) // 2], "max": downs[-1], "n": len(downs)}
        rows.append(stats)
    print("\n| family | run (s) | trials | interruptions (landed before the end) | bit-identical resumes | "
          "stop signals exit 0 | numbered ckpts complete | log.txt complete | partial files left |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        print(f"| {s['family']} | {s['run_seconds']} | {s['trials']} | {s['interruptions']} ({s['landed']}) | "
              f"{s['bit_identical']}/{s['trials']} | "
              f"{s['graceful_ok']}/{s['graceful']} | {s['numbered_ok']}/{s['trials']} | {s['log_ok']}/{s['trials']} | "
              f"{s['tmp_left']} |")
    for s in rows:
        if "teardown_s" in s:
            t = s["teardown_s"]
            print(f"{s['family']}: job down {t['median']} s (median), {t['max']} s (max) after a rank's SIGKILL, "
                  f"{t['n']} kills")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "trials": trials}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
