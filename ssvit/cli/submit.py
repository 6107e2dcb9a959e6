"""Slurm launcher via submitit, as DINO's ``run_with_submitit.py``: every ``main_pretrain.py`` flag plus
``--ngpus 8 --nodes 2 --timeout 2800 --partition learnfair --use_volta32 --comment ''``.

Each Slurm task exports the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
with ``submitit.helpers.TorchDistributedEnvironment`` and runs the shared trainer. On pre-emption or
time-out submitit calls ``checkpoint()``: the job is requeued and resumes from
``output_dir/checkpoint.pth`` (Slurm's SIGUSR1/SIGTERM also makes the trainer write a mid-epoch
checkpoint first). ``--cluster local`` runs the same job through submitit's local executor (tests).
"""
from __future__ import annotations

import argparse
import os
import sys


from ssvit.cli.pretrain import get_args_parser
from ssvit.config import parse_with_config


def submitit_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("submitit")
    g.add_argument("--ngpus", default=8, type=int, help="GPUs (tasks) per node")
    g.add_argument("--nodes", default=2, type=int, help="number of nodes")
    g.add_argument("--timeout", default=2800, type=int, help="job duration in minutes")
    g.add_argument("--partition", default="learnfair", type=str)
    g.add_argument("--use_volta32", action="store_true", help="ask for 32 GB V100s")
    g.add_argument("--comment", default="", type=str)
    g.add_argument("--cluster", default=None, choices=[None, "slurm", "local", "debug"],
                   help="submitit cluster (default: auto-detect Slurm)")


def requeue_on_rank0(signum: int) -> None:
    """The ranks agreed to stop before the last epoch (a time-out, a pre-emption, a SIGTERM on any
    rank): rank 0 hands the stop to submitit's requeue handler whichever signal came and on whichever
    rank (submitit's own handler only requeues for its USR signal, and only where it was received).
    The handler checkpoints ``Trainer.checkpoint()``'s resubmission, requeues and exits the task; the
    other ranks return. Never called for a finished run."""
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


class Trainer:
    """Picklable job: runs pretraining in each task; ``checkpoint()`` requeues on pre-emption."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self):
        import submitit
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
        from ssvit.engine.trainer import Trainer as Engine
        job_env = submitit.JobEnvironment()
        self.args.output_dir = self.args.output_dir.replace("%j", str(job_env.job_id))
        from ssvit.methods import get_method
        engine = Engine(self.args, get_method(self.args.method))
        engine.fit(on_interrupt=requeue_on_rank0)
        if not engine.interrupted:
            from ssvit.utils.shutdown import finish
            finish()

    def checkpoint(self):
        import submitit
        print("Requeuing ", self.args)
        return submitit.helpers.DelayedSubmission(type(self)(self.args))


def main(argv=None):
    import submitit
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser(argv)
    submitit_args(parser)
    args = parse_with_config(parser, argv)
    if args.output_dir in ("", "."):
        args.output_dir = os.path.join("/checkpoint", os.environ.get("USER", "user"), "experiments", "%j")
    folder = args.output_dir.replace("%j", "submitit_logs")
    executor = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=30, cluster=args.cluster)
    kwargs = {"slurm_constraint": "volta32gb"} if args.use_volta32 else {}
    if args.comment:
        kwargs["slurm_comment"] = args.comment
    # --kill-on-bad-exit: a rank that fails ends the whole step at once instead of leaving its peers
    # blocked in a collective until --dist_timeout
    kwargs["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    executor.update_parameters(mem_gb=40 * args.ngpus, gpus_per_node=args.ngpus, tasks_per_node=args.ngpus,
                               cpus_per_task=10, nodes=args.nodes, timeout_min=args.timeout,
                               slurm_partition=args.partition, slurm_signal_delay_s=120, name="ssvit", **kwargs)
    if executor.cluster != "slurm":  # local/debug executors: no GPUs requested unless present
        executor.update_parameters(gpus_per_node=0 if args.device == "cpu" else args.ngpus)
    args.dist_url = "env://"
    job = executor.submit(Trainer(args))
    print(f"Submitted job_id: {job.job_id}")
    print(f"Logs and checkpoints will be saved at: {args.output_dir}")
    if executor.cluster != "slurm":  # local runs: wait, so that the exit status is the job's
        job.results()  # every task's (the job fails if one of them did)
        print(f"Job {job.job_id} finished")
    return job


def cli(argv=None) -> int:
    main(argv)
    return 0
