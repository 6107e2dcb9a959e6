"""``ssvit submit``: any ssvit command as a Slurm job through submitit, for any site.

    ssvit submit [--command pretrain] [launcher flags] [the command's flags]
    ssvit submit --nodes 2 --ngpus 8 --partition gpu --account proj --config configs/dino/vit_small_16_300ep.yaml \\
        --data_path /data/imagenet/train --output_dir /runs/dino_vits16_300ep
    ssvit submit --command linear --nodes 1 --ngpus 8 --partition gpu --pretrained_weights ... --output_dir ...
    ssvit submit --dry_run ...    # print the sbatch script submitit would submit, and the plain srun torchrun form

DINO's ``run_with_submitit.py`` flags keep working (``--ngpus --nodes --timeout --partition --use_volta32
--comment``), without its site defaults: the partition comes from ``--partition`` or ``$SSVIT_PARTITION``
/ ``$SLURM_PARTITION`` (an error otherwise), memory and constraints are Slurm's unless given, a missing
``--output_dir`` is an error (no silent ``/checkpoint/$USER``). Each Slurm task exports the torchrun
environment (``submitit.helpers.TorchDistributedEnvironment``) and runs the command's own entry point --
the same code as ``ssvit <command>``, so SiT-v1's ``--training-mode finetune`` and RelViT's ``--mode
validation`` behave as on the command line. On pre-emption or time-out the training loop checkpoints and
rank 0 hands the stop to submitit, which requeues the job; the requeued job resumes from
``output_dir/checkpoint.pth`` (the same directory). A finished job is never requeued. The command's flags
are checked before anything is queued. ``--cluster local`` runs the job through submitit's local executor.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from typing import Optional

SUBMITTABLE = ("pretrain", "finetune", "linear", "knn", "propagate")
PARTITION_ENV = ("SSVIT_PARTITION", "SLURM_PARTITION")


class SubmitError(ValueError):
    """A launcher flag or a command flag that cannot make a job (one line, exit 2)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("ssvit submit", add_help=True, allow_abbrev=False,
                                description="run an ssvit command as a Slurm job (submitit); other flags are the "
                                            "command's")
    p.add_argument("--command", default="pretrain", choices=SUBMITTABLE, help="the ssvit command the job runs")
    p.add_argument("--nodes", default=2, type=int, help="number of nodes (DINO's default 2)")
    p.add_argument("--ngpus", "--gpus_per_node", dest="ngpus", default=8, type=int,
                   help="GPUs, and tasks, per node (DINO's default 8)")
    p.add_argument("--timeout", default=2800, type=int, help="job duration in minutes (DINO's default 2800)")
    p.add_argument("--partition", default=None, type=str,
                   help=f"Slurm partition (default: ${' / $'.join(PARTITION_ENV)}; required on Slurm)")
    p.add_argument("--account", default=None, type=str)
    p.add_argument("--qos", default=None, type=str)
    p.add_argument("--constraint", default=None, type=str, help="node features, e.g. volta32gb or 'a100|h100'")
    p.add_argument("--exclude", default=None, type=str, help="nodes to leave out")
    p.add_argument("--mem_gb", default=None, type=int, help="memory per node in GB (default: the site's)")
    p.add_argument("--cpus_per_task", default=None, type=int,
                   help="CPUs per task (default: the command's --num_workers, at least 1; DINO asked for 10)")
    p.add_argument("--use_volta32", action="store_true", help="DINO's flag: --constraint volta32gb")
    p.add_argument("--comment", default="", type=str)
    p.add_argument("--job_name", default="ssvit", type=str)
    p.add_argument("--log_dir", default=None, type=str,
                   help="where submitit writes the job's logs (default: the command's --output_dir)")
    p.add_argument("--signal_delay_s", default=120, type=int, help="seconds of warning before the time limit")
    p.add_argument("--cluster", default=None, choices=[None, "slurm", "local", "debug"],
                   help="submitit cluster (default: Slurm if present)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the sbatch script (and the plain srun torchrun form) instead of submitting")
    return p


def split_argv(argv: list) -> tuple[argparse.Namespace, list]:
    """(launcher flags, the command's flags)."""
    launcher, rest = get_args_parser().parse_known_args(argv)
    return launcher, rest


def resolve_partition(launcher: argparse.Namespace, environ=None) -> Optional[str]:
    env = os.environ if environ is None else environ
    return launcher.partition or next((env[k] for k in PARTITION_ENV if env.get(k)), None)


def job_folder(launcher: argparse.Namespace, command: str, argv: list, args: argparse.Namespace) -> str:
    from ssvit.cli.arguments import given
    if launcher.log_dir:
        return launcher.log_dir
    if hasattr(args, "output_dir") and given(argv, "--output_dir", "--output", config_key="output_dir"):
        return args.output_dir
    if hasattr(args, "output_dir"):
        raise SubmitError(f"give --output_dir: a queued '{command}' job needs a folder of its own for its checkpoints "
                          "and logs (a requeued job resumes from it)")
    raise SubmitError(f"give --log_dir: 'ssvit {command}' has no --output_dir, and the job's logs need a folder")


def slurm_parameters(launcher: argparse.Namespace, args: argparse.Namespace, partition: Optional[str]) -> dict:
    """sbatch parameters in submitit's ``SlurmExecutor`` names: only what was asked for, no site defaults."""
    cpus = launcher.cpus_per_task or max(1, int(getattr(args, "num_workers", 1) or 1))
    params = dict(job_name=launcher.job_name, nodes=launcher.nodes, ntasks_per_node=launcher.ngpus,
                  gpus_per_node=launcher.ngpus, cpus_per_task=cpus, time=launcher.timeout,
                  signal_delay_s=launcher.signal_delay_s,
                  # a rank that fails ends the whole step at once instead of leaving its peers blocked in a
                  # collective until --dist_timeout
                  srun_args=["--kill-on-bad-exit=1"])
    constraint = launcher.constraint or ("volta32gb" if launcher.use_volta32 else None)
    for key, value in (("partition", partition), ("account", launcher.account), ("qos", launcher.qos),
                       ("constraint", constraint), ("exclude", launcher.exclude), ("comment", launcher.comment or None),
                       ("mem", f"{launcher.mem_gb}GB" if launcher.mem_gb else None)):
        if value is not None:
            params[key] = value
    return params


#: SlurmExecutor parameter -> AutoExecutor's generic name (the others are AutoExecutor's ``slurm_*``)
GENERIC_PARAMETERS = {"time": "timeout_min", "job_name": "name", "nodes": "nodes", "ntasks_per_node": "tasks_per_node",
                      "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task"}


def auto_executor_parameters(params: dict, mem_gb: Optional[int]) -> dict:
    """``slurm_parameters``' values under ``submitit.AutoExecutor``'s names (memory as its ``mem_gb``)."""
    out = {GENERIC_PARAMETERS.get(k, "slurm_" + k): v for k, v in params.items() if k != "mem"}
    if mem_gb:
        out["mem_gb"] = mem_gb
    return out


def sbatch_scripts(launcher, command: str, argv: list, folder: str, params: dict) -> str:
    """The sbatch script submitit submits for this job, then the same job without submitit (one task per
    node running torchrun; Slurm's ``--requeue`` and the run's own resume do what submitit's requeue does)."""
    from submitit.slurm import slurm
    submitit_job = slurm._make_sbatch_string(command=f"{shlex.quote(sys.executable)} -u -m submitit.core._submit "
                                                     f"{shlex.quote(folder)}", folder=folder, **params)
    # torchrun forwards SIGTERM to its workers (the run checkpoints and exits 0); --requeue lets Slurm requeue
    # a pre-empted job, which resumes from output_dir -- a time-out is not requeued without submitit
    plain = dict(params, ntasks_per_node=1, cpus_per_task=params["cpus_per_task"] * launcher.ngpus,
                 additional_parameters={"requeue": True, "signal": f"TERM@{launcher.signal_delay_s}"}, use_srun=False)
    plain.pop("srun_args")
    body = ("MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"srun --kill-on-bad-exit=1 torchrun --nnodes \"$SLURM_JOB_NUM_NODES\" --nproc_per_node {launcher.ngpus} "
            "--rdzv_id \"$SLURM_JOB_ID\" --rdzv_backend c10d --rdzv_endpoint \"$MASTER_ADDR:29500\" "
            f"-m ssvit {command} {' '.join(shlex.quote(a) for a in argv)}")
    plain_job = slurm._make_sbatch_string(command=body, folder=folder, **plain)
    plain_job = plain_job.replace("export SUBMITIT_EXECUTOR=slurm\n", "")
    return (f"# --- submitted by ssvit submit (submitit)\n{submitit_job}\n"
            f"# --- the same job without submitit (sbatch this part; a pre-emption requeues it, a time-out does not)\n"
            f"{plain_job}")


def requeue_on_rank0(signum: int) -> None:
    """The ranks agreed to stop before the last epoch (a time-out, a pre-emption, a SIGTERM on any
    rank): rank 0 hands the stop to submitit's requeue handler whichever signal came and on whichever
    rank (submitit's own handler only requeues for its USR signal, and only where it was received).
    The handler checkpoints ``Job.checkpoint()``'s resubmission, requeues and exits the task; the other
    ranks return. Never called for a finished run."""
    import signal

    import submitit
    from ssvit.utils.distributed import get_rank
    from ssvit.utils.shutdown import finish
    finish()  # every rank has its checkpoint state written; tear the process group down first
    if get_rank() != 0:
        return
    env = submitit.JobEnvironment()
    usr_sig = env._usr_sig() if hasattr(env, "_usr_sig") else signal.SIGUSR2
    handler = signal.getsignal(usr_sig)
    name = signal.Signals(signum).name if signum else "stop"
    if not callable(handler):  # not started by submitit's job runner (e.g. called directly)
        raise RuntimeError(f"{name}: the run stopped before its end but submitit's requeue handler is not installed")
    print(f"{name} received: requeuing the job through submitit")
    handler(usr_sig, None)


class Job:
    """Picklable submitit job: ``ssvit <command> argv`` in each task; ``checkpoint()`` requeues it."""

    def __init__(self, command: str, argv: list):
        self.command, self.argv = command, list(argv)

    def entry_point(self):
        """The command's own ``cli`` (what ``ssvit <command>`` runs)."""
        from ssvit.cli.main import COMMANDS
        return importlib.import_module(COMMANDS[self.command].module).cli

    def __call__(self):
        import submitit
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
        from ssvit.engine.signals import set_launcher_stop_handler
        set_launcher_stop_handler(requeue_on_rank0)
        status = self.entry_point()(self.argv)
        if status:
            raise RuntimeError(f"ssvit {self.command} ended with exit status {status} (see the log above)")
        return status

    def checkpoint(self):
        import submitit
        print(f"Requeuing ssvit {self.command} {' '.join(self.argv)}")
        return submitit.helpers.DelayedSubmission(type(self)(self.command, self.argv))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    launcher, rest = split_argv(argv)
    from ssvit.cli.arguments import parse_command_args
    args = parse_command_args(launcher.command, rest)  # a bad flag fails here, not in the queue
    folder = job_folder(launcher, launcher.command, rest, args)
    partition = resolve_partition(launcher)
    params = slurm_parameters(launcher, args, partition)
    if launcher.dry_run:
        if not partition:
            raise SubmitError(f"give --partition (or set ${' / $'.join(PARTITION_ENV)}): ssvit has no site default")
        print(sbatch_scripts(launcher, launcher.command, rest, folder, params))
        return None
    import submitit
    executor = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=30, cluster=launcher.cluster)
    if executor.cluster == "slurm" and not partition:
        raise SubmitError(f"give --partition (or set ${' / $'.join(PARTITION_ENV)}): ssvit has no site default")
    executor.update_parameters(**auto_executor_parameters(params, launcher.mem_gb))
    if executor.cluster != "slurm":  # local/debug executors: no GPUs requested unless present
        executor.update_parameters(gpus_per_node=0 if getattr(args, "device", "auto") == "cpu" else launcher.ngpus)
    job = executor.submit(Job(launcher.command, rest))
    print(f"Submitted job_id: {job.job_id}")
    print(f"Logs and checkpoints will be saved at: {folder}")
    if executor.cluster != "slurm":  # local runs: wait, so that the exit status is the job's
        job.results()  # every task's (the job fails if one of them did)
        print(f"Job {job.job_id} finished")
    return job


def cli(argv=None) -> int:
    from ssvit.cli import exit_status
    return exit_status(lambda: main(argv), (SubmitError, ValueError, OSError), "ssvit submit")
