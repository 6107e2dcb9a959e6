"""End-to-end training on CPU: checkpoint layout, exact kill-and-resume, DDP (Gloo), configs, bad input."""
import argparse
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssvit.utils.checkpoint import load_checkpoint, save_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "synthetic", "--synthetic_size", "48", "--arch", "vit_pico", "--patch_size", "4",
        "--global_crops_size", "32", "--local_crops_size", "16", "--local_crops_number", "2", "--out_dim", "64",
        "--head_hidden_dim", "64", "--head_bottleneck_dim", "32", "--batch_size_per_gpu", "8", "--num_workers", "0",
        "--print_freq", "1", "--tensorboard", "false", "--drop_path_rate", "0.1", "--lr", "0.005"]


def run(args, check=True, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *args], capture_output=True,
                       text=True, env=env, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def run_in_process(args, capsys):
    """``main_pretrain.main(args)`` in this process, as ``run`` gives it: (returncode, stdout, stderr).
    For bad-input checks that stop before training (a subprocess costs seconds of imports each);
    the process-level behaviour is covered by the subprocess tests."""
    import types
    from ssvit.cli import pretrain as main_pretrain
    capsys.readouterr()
    try:
        code = main_pretrain.main(list(args))
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def assert_same_weights(a, b):
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"


def test_checkpoint_layout_logs_and_config(tmp_path):
    out = tmp_path / "run"
    run(TINY + ["--epochs", "2", "--saveckp_freq", "1", "--output_dir", str(out)])
    files = set(os.listdir(out))
    assert {"checkpoint.pth", "checkpoint0000.pth", "checkpoint0001.pth", "log.txt", "config.yaml"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= set(ck)
    assert ck["epoch"] == 2 and ck["iter_in_epoch"] == 0 and isinstance(ck["args"], argparse.Namespace)
    assert all(k.startswith("module.") for k in ck["student"])
    assert "module.backbone.cls_token" in ck["student"] and "module.head.last_layer.weight_v" in ck["student"]
    assert "backbone.cls_token" in ck["teacher"] and "head.mlp.0.weight" in ck["teacher"]
    assert ck["dino_loss"]["center"].shape == (1, 64)
    assert len(ck["optimizer"]["param_groups"]) == 2 and ck["optimizer"]["param_groups"][1]["weight_decay"] == 0
    import json
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert {"train_loss", "train_lr", "train_wd"} <= set(lines[0])
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["arch"] == "vit_pico"


def test_kill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    common = TINY + ["--epochs", "2", "--save_every_iters", "1"]
    run(common + ["--output_dir", str(ref)])

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *common, "--output_dir",
                             str(killed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in proc.stdout:  # SIGKILL once epoch 1 is under way (a mid-epoch checkpoint exists)
        seen.append(line)
        if "Epoch: [1/2]  [2/6]" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    mid = load_checkpoint(str(killed / "checkpoint.pth"))
    assert mid["epoch"] == 1 and 1 <= mid["iter_in_epoch"] < 6
    p = run(common + ["--output_dir", str(killed)])
    assert "Resumed from" in p.stdout and "epoch 1, iteration" in p.stdout
    a, b = load_checkpoint(str(ref / "checkpoint.pth")), load_checkpoint(str(killed / "checkpoint.pth"))
    assert_same_weights(a, b)
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    # re-running a finished run trains nothing and changes nothing
    run(common + ["--output_dir", str(killed)])
    assert_same_weights(b, load_checkpoint(str(killed / "checkpoint.pth")))


def test_sigterm_checkpoints_and_exits(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *TINY, "--epochs", "3",
                             "--output_dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    for line in proc.stdout:
        if "Epoch: [0/3]  [1/6]" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0, rest
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert ck["epoch"] == 0 and ck["iter_in_epoch"] >= 2 and "Stopped in epoch 0" in rest


def test_ddp_gloo_two_ranks_end_identical(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(ROOT, "tests", "ddp_worker.py"), *TINY, "--batch_size_per_gpu", "4",
                        "--epochs", "1", "--output_dir", str(out)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pth"), torch.load(out / "rank1.pth")
    assert r0["world_size"] == 2
    init = torch.load(out / "rank0.pth")  # noqa: F841
    assert_same_weights(r0, r1)
    assert torch.equal(r0["center"], r1["center"])
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert torch.equal(ck["student"]["module.backbone.cls_token"], r0["student"]["backbone.cls_token"])
    # the weights moved away from the initialisation (training happened on both ranks' data)
    assert ck["epoch"] == 1 and "Data loaded: there are 48 images." in p.stdout


def test_resume_from_original_dino_layout(tmp_path):
    """A checkpoint.pth in the original layout (no ssvit extras) resumes at its epoch."""
    src = tmp_path / "src"
    run(TINY + ["--epochs", "1", "--output_dir", str(src)])
    ck = load_checkpoint(str(src / "checkpoint.pth"))
    original = {k: ck[k] for k in ("student", "teacher", "optimizer", "epoch", "args", "dino_loss")}
    dst = tmp_path / "dst"
    os.makedirs(dst)
    save_atomic(original, str(dst / "checkpoint.pth"))
    p = run(TINY + ["--epochs", "2", "--output_dir", str(dst)])
    assert "Resumed from" in p.stdout and "epoch 1, iteration 0" in p.stdout
    assert "Epoch: [0/2]" not in p.stdout and "Epoch: [1/2]" in p.stdout


def test_short_run_clamps_warmup(tmp_path):
    p = run(TINY + ["--epochs", "1", "--output_dir", str(tmp_path / "r")])  # default --warmup_epochs 10
    assert "--warmup_epochs 10 exceeds --epochs 1: clamped to 1" in p.stderr


def test_yaml_config_defaults_and_cli_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nout_dim: 32\nmomentum_teacher: 0.99\n")
    out = tmp_path / "r"
    run(TINY + ["--config", str(cfg), "--out_dim", "48", "--output_dir", str(out)])
    import yaml
    merged = yaml.safe_load((out / "config.yaml").read_text())
    assert merged["epochs"] == 1 and merged["out_dim"] == 48 and merged["momentum_teacher"] == 0.99
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    p = run(TINY + ["--config", str(bad), "--output_dir", str(out)], check=False)
    assert p.returncode == 2 and "unknown keys" in p.stderr and "epochz" in p.stderr


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--global_crops_scale", "0.9", "0.2"], "--global_crops_scale takes two values"),
    (["--local_crops_size", "2"], "--local_crops_size (2) must be at least --patch_size (4)"),
    (["--norm_last_layer", "maybe"], "invalid value for a boolean flag"),
    (["--arch", "vit_huge"], "unknown architecture 'vit_huge'"),
    (["--batch_size_per_gpu", "100"], "fewer than one batch"),
])
def test_bad_flag_values_are_clear_errors(tmp_path, flags, message, capsys):
    p = run_in_process(TINY + ["--epochs", "1", "--output_dir", str(tmp_path / "r")] + flags, capsys)
    assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_bad_flag_value_in_a_real_process_is_one_line_exit_2(tmp_path):
    p = run(TINY + ["--epochs", "1", "--output_dir", str(tmp_path / "r"), "--norm_last_layer", "maybe"], check=False)
    assert p.returncode == 2 and "invalid value for a boolean flag" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (tmp_path / "r" / "checkpoint.pth").exists()


def test_missing_data_path_is_a_clear_error(tmp_path):
    p = run(["--dataset", "imagefolder", "--data_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"),
             "--arch", "vit_pico", "--num_workers", "0"], check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr


def test_wrong_architecture_checkpoint_is_reported_and_kept(tmp_path):
    out = tmp_path / "r"
    run(TINY + ["--epochs", "1", "--output_dir", str(out)])
    before = (out / "checkpoint.pth").read_bytes()
    args = [a if a != "vit_pico" else "vit_tiny" for a in TINY]
    p = run(args + ["--epochs", "2", "--output_dir", str(out)], check=False)
    assert p.returncode == 2 and "checkpoint does not fit the student" in p.stderr
    assert "shape mismatches" in p.stderr or "unexpected keys" in p.stderr
    assert (out / "checkpoint.pth").read_bytes() == before  # nothing lost


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "r"
    os.makedirs(out)
    (out / "checkpoint.pth").write_bytes(b"PK\x03\x04 truncated")
    p = run(TINY + ["--epochs", "1", "--output_dir", str(out)], check=False)
    assert p.returncode == 2 and "cannot load checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_submitit_launcher_runs_the_job_with_local_executor(tmp_path):
    out = tmp_path / "sub"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "ssvit", "submit", "--cluster", "local",
                        "--nodes", "1", "--ngpus", "1", "--device", "cpu", *TINY, "--epochs", "1", "--output_dir",
                        str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0 and "finished" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert ck["epoch"] == 1 and "module.backbone.cls_token" in ck["student"]


def test_yaml_values_are_checked_and_converted_like_flags(tmp_path, capsys):
    """argparse only converts / checks command-line values: a YAML choice outside the list is a one-line
    error, and YAML's booleans for a three-way flag (--fused_adamw) read as the flag's words."""
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fused_adamw: true\naugmentation: batched\n")
    args = parse_with_config(get_args_parser([]), ["--config", str(cfg)])
    assert args.fused_adamw == "true" and args.augmentation == "batched"
    args = parse_with_config(get_args_parser([]), ["--config", str(cfg), "--fused_adamw", "auto"])
    assert args.fused_adamw == "auto"  # the command line wins
    for text, message in (("augmentation: bogus\n", "'augmentation' in"), ("fused_adamw: maybe\n", "fused_adamw")):
        cfg.write_text(text)
        with pytest.raises(SystemExit) as e:
            parse_with_config(get_args_parser([]), ["--config", str(cfg)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err, err
