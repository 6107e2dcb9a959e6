"""ssvit submit (ssvit/cli/submit.py): site flags without site defaults, the sbatch scripts it would submit,
flags checked before anything is queued, and any command run through the plain command's entry point
(submitit's local executor: jobs as subprocesses)."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k not in ("SSVIT_PARTITION", "SLURM_PARTITION")}
ENV.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def submit(*argv, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ssvit", "submit", *argv], capture_output=True, text=True,
                          env=env or ENV, cwd=ROOT, timeout=timeout)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def submit_here(capsys, monkeypatch, *argv, env=None):
    """``ssvit submit`` in this process (what does not start a job: dry runs, refusals)."""
    from ssvit.cli import submit as launcher
    for k in ("SSVIT_PARTITION", "SLURM_PARTITION"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    try:
        rc = launcher.cli(list(argv))
    except SystemExit as e:  # argparse's refusal of a command flag
        rc = e.code
    out = capsys.readouterr()
    return Result(rc, out.out, out.err)


def test_dry_run_prints_both_sbatch_forms_with_exactly_the_site_flags_given(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    p = submit_here(capsys, monkeypatch, "--dry_run", "--nodes", "2", "--ngpus", "4", "--partition", "gpu", "--account", "proj", "--qos", "high",
               "--constraint", "a100", "--exclude", "n7,n8", "--mem_gb", "300", "--timeout", "60",
               "--config", "configs/dino/vit_small_16_300ep.yaml", "--data_path", "/d", "--num_workers", "6",
               "--output_dir", str(out))
    assert p.returncode == 0, p.stderr
    submitit_part, plain_part = p.stdout.split("# --- the same job without submitit")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100", "--exclude=n7,n8",
                 "--mem=300GB", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=6",
                 "--time=60", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in submitit_part, line
    assert "--kill-on-bad-exit=1" in submitit_part and f"submitit.core._submit {out}" in submitit_part
    for line in ("--ntasks-per-node=1", "--cpus-per-task=24", "--requeue", "--signal=TERM@120", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in plain_part, line
    assert ("torchrun --nnodes \"$SLURM_JOB_NUM_NODES\" --nproc_per_node 4" in plain_part and
            f"-m ssvit pretrain --config configs/dino/vit_small_16_300ep.yaml --data_path /d --num_workers 6 "
            f"--output_dir {out}" in plain_part)
    assert not out.exists()  # a dry run writes nothing


def test_no_site_defaults_partition_from_the_environment_and_dinos_flags(tmp_path, capsys, monkeypatch):
    p = submit_here(capsys, monkeypatch, "--dry_run", "--output_dir", str(tmp_path / "r"),
                    env={"SSVIT_PARTITION": "site_gpu"})
    assert p.returncode == 0 and "#SBATCH --partition=site_gpu" in p.stdout
    for absent in ("--mem=", "--constraint=", "--account=", "learnfair", "/checkpoint/"):
        assert absent not in p.stdout, absent
    assert "#SBATCH --cpus-per-task=10\n" in p.stdout  # main_dino's --num_workers 10 (DINO asked for 10 CPUs)
    p = submit_here(capsys, monkeypatch, "--dry_run", "--use_volta32", "--partition", "p", "--comment", "nips",
                    "--output_dir", str(tmp_path / "r"))
    assert "#SBATCH --constraint=volta32gb" in p.stdout and "#SBATCH --comment=nips" in p.stdout
    p = submit_here(capsys, monkeypatch, "--dry_run", "--output_dir", str(tmp_path / "r"))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "give --partition" in p.stderr


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1"], "give --output_dir"),
    (["--command", "knn", "--arch", "vit_pico"], "give --log_dir"),
    (["--output_dir", "OUT", "--teacher_tmp", "0.1"], "unrecognized arguments: --teacher_tmp 0.1"),
    (["--command", "linear", "--output_dir", "OUT", "--n_last_blocks", "x"], "invalid int value: 'x'"),
])
def test_bad_input_fails_at_submission_in_one_line_and_queues_nothing(tmp_path, capsys, monkeypatch, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    p = submit_here(capsys, monkeypatch, "--cluster", "local", "--partition", "p", *argv)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_an_evaluation_runs_as_a_job(tmp_path):
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    torch.save(create_backbone("vit_pico", patch_size=4, num_classes=0, img_size=32).state_dict(), weights)
    logs, dump = tmp_path / "logs", tmp_path / "feats"
    p = submit("--command", "knn", "--cluster", "local", "--nodes", "1", "--ngpus", "1", "--log_dir", str(logs),
               "--dataset", "synthetic", "--synthetic_size", "40", "--arch", "vit_pico", "--patch_size", "4",
               "--pretrained_weights", str(weights), "--use_cuda", "false", "--num_workers", "0", "--nb_knn", "1", "5",
               "--dump_features", str(dump))
    assert p.returncode == 0 and "finished" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    log = "".join((logs / n).read_text() for n in os.listdir(logs) if n.endswith("_log.out"))
    assert "5-NN classifier result: Top1:" in log
    assert torch.load(dump / "trainfeat.pth", weights_only=True).shape == (40, 96)


def test_a_sit_finetune_job_is_checked_and_run_as_ssvit_pretrain_runs_it():
    """SiT-v1's --training-mode finetune is ssvit pretrain's redirect to the finetuning task: the job runs
    pretrain's own cli (which redirects; tests/test_sit.py runs that), and submission checks the finetuning
    task's flags (the old launcher called the engine directly and silently pretrained)."""
    from ssvit.cli import pretrain
    from ssvit.cli.arguments import parse_command_args
    from ssvit.cli.submit import Job
    argv = ["--method", "sit", "--training-mode", "finetune", "--SiT_LinearEvaluation", "1", "--data-set", "CIFAR100",
            "--output", "o"]
    assert Job("pretrain", argv).entry_point() is pretrain.cli
    args = parse_command_args("pretrain", argv)
    assert (args.method, args.sit_linear_evaluation, args.nb_classes, args.output_dir) == ("finetune", True, 100, "o")


def test_the_job_entry_point_is_the_commands_cli():
    from ssvit.cli import knn, pretrain
    from ssvit.cli.submit import Job
    assert Job("pretrain", []).entry_point() is pretrain.cli and Job("knn", []).entry_point() is knn.cli
