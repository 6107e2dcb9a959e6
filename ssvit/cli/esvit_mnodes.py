"""``ssvit esvit-mnodes``: EsViT's ``main_esvit_mnodes.py`` -- one node's share of a multi-node run.

As the original: ``--num_nodes`` (from ``$OMPI_COMM_WORLD_SIZE`` when set), ``--num_gpus_per_node``,
``--node_rank`` (from ``$OMPI_COMM_WORLD_RANK``), ``$MASTER_ADDR`` / ``$MASTER_PORT``; it launches
``torchrun --nproc_per_node G --nnodes N --node_rank R --master_addr A --master_port P`` on
``ssvit pretrain --method esvit`` with the original's fixed subset of flags (data_path, output_dir,
batch_size_per_gpu, arch, zip_mode, epochs, teacher_temp, warmup_teacher_temp_epochs, norm_last_layer,
cfg, use_dense_prediction, use_mixup, num_mixup_views, dataset, tsv_mode, sampler, warmup_epochs,
pretrained_weights_ckpt, aug-opt); every other flag of main_esvit.py keeps its default. Only the flags
given are passed on (main_pretrain's defaults are main_esvit's). QUIRK kept as an error: with one node the
original builds its command from undefined ``master_addr`` / ``master_port`` (NameError); here that is a
one-line error pointing to the single-node command.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional

#: (flag, takes a value) forwarded to main_esvit.py, in the original's order
FORWARDED = ("--data_path", "--output_dir", "--batch_size_per_gpu", "--arch", "--zip_mode", "--epochs",
             "--teacher_temp", "--warmup_teacher_temp_epochs", "--norm_last_layer", "--cfg",
             "--use_dense_prediction", "--use_mixup", "--num_mixup_views", "--dataset", "--tsv_mode", "--sampler",
             "--warmup_epochs", "--pretrained_weights_ckpt", "--aug-opt")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("ssvit esvit-mnodes (EsViT main_esvit_mnodes.py)")
    p.add_argument("--num_nodes", default=1, type=int, help="nodes (default: $OMPI_COMM_WORLD_SIZE, else 1)")
    p.add_argument("--num_gpus_per_node", default=8, type=int)
    p.add_argument("--node_rank", default=0, type=int, help="this node (default: $OMPI_COMM_WORLD_RANK, else 0)")
    for flag in FORWARDED:
        p.add_argument(flag, dest="fwd_" + flag.lstrip("-").replace("-", "_"), default=None, type=str)
    return p


def torchrun_command(args: argparse.Namespace, environ=None) -> list[str]:
    env = os.environ if environ is None else environ
    nodes = int(env["OMPI_COMM_WORLD_SIZE"]) if "OMPI_COMM_WORLD_SIZE" in env else args.num_nodes
    rank = int(env["OMPI_COMM_WORLD_RANK"]) if "OMPI_COMM_WORLD_RANK" in env else args.node_rank
    if nodes == 1:
        raise ValueError("main_esvit_mnodes.py with one node fails in the original (its command uses undefined "
                         "master_addr / master_port): run 'torchrun --nproc_per_node G main_pretrain.py --method esvit "
                         "...' on one node")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise ValueError(f"set {' and '.join(missing)} (the address / port of node 0), as main_esvit_mnodes.py reads them")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.num_gpus_per_node),
           "--nnodes", str(nodes), "--node_rank", str(rank), "--master_addr", env["MASTER_ADDR"],
           "--master_port", env["MASTER_PORT"], "-m", "ssvit", "pretrain", "--method", "esvit"]
    for flag in FORWARDED:
        value = getattr(args, "fwd_" + flag.lstrip("-").replace("-", "_"))
        if value is not None:
            cmd += [flag, value]
    return cmd


def main(argv: Optional[list] = None) -> int:
    args = get_args_parser().parse_args(argv)
    cmd = torchrun_command(args)
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def cli(argv: Optional[list] = None) -> int:
    from ssvit.cli import exit_status
    status = {}

    def run():
        status["rc"] = main(argv)
    rc = exit_status(run, (ValueError,), "ssvit esvit-mnodes")
    return rc or status.get("rc", 0)
