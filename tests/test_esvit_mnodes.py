"""ssvit esvit-mnodes: EsViT's main_esvit_mnodes.py flags -> one node's torchrun of ssvit pretrain --method esvit."""
import os
import subprocess
import sys

from ssvit.cli.esvit_mnodes import get_args_parser, torchrun_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = ["--num_nodes", "2", "--num_gpus_per_node", "16", "--data_path", "/d/train", "--output_dir", "/o",
          "--batch_size_per_gpu", "16", "--arch", "swin_small", "--zip_mode", "True", "--epochs", "300",
          "--teacher_temp", "0.07", "--warmup_epochs", "10", "--warmup_teacher_temp_epochs", "30",
          "--norm_last_layer", "false", "--cfg", "configs/esvit/swin_small_patch4_window14_224.yaml",
          "--use_dense_prediction", "True", "--pretrained_weights_ckpt", "/o/checkpoint0200.pth"]


def test_the_readme_multi_node_command_becomes_torchrun_of_ssvit_pretrain():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "OMPI_COMM_WORLD_RANK": "1"}
    cmd = torchrun_command(get_args_parser().parse_args(README), env)
    assert cmd[1:] [:14] == ["-m", "torch.distributed.run", "--nproc_per_node", "16", "--nnodes", "2", "--node_rank", "1",
                            "--master_addr", "10.0.0.1", "--master_port", "29500", "-m", "ssvit"]
    rest = cmd[15:]
    assert rest[:3] == ["pretrain", "--method", "esvit"]
    pairs = dict(zip(rest[3::2], rest[4::2]))  # forwarded in the original's order, only those given
    assert list(pairs) == ["--data_path", "--output_dir", "--batch_size_per_gpu", "--arch", "--zip_mode", "--epochs",
                           "--teacher_temp", "--warmup_teacher_temp_epochs", "--norm_last_layer", "--cfg",
                           "--use_dense_prediction", "--warmup_epochs", "--pretrained_weights_ckpt"]
    assert pairs["--batch_size_per_gpu"] == "16" and pairs["--pretrained_weights_ckpt"] == "/o/checkpoint0200.pth"
    # OpenMPI's world size decides the node count, as the original
    cmd = torchrun_command(get_args_parser().parse_args(README), {**env, "OMPI_COMM_WORLD_SIZE": "4"})
    assert cmd[cmd.index("--nnodes") + 1] == "4"
    # the forwarded flags parse as ssvit pretrain's (and --zip_mode is then refused there in one line)
    from ssvit.cli.arguments import parse_command_args
    fwd = [x if x != "True" or rest[i - 1] != "--zip_mode" else "false" for i, x in enumerate(rest)]
    a = parse_command_args("pretrain", fwd[1:])
    assert (a.method, a.arch, a.batch_size_per_gpu, a.teacher_temp, a.norm_last_layer) == ("esvit", "swin_small", 16, 0.07, False)


def test_one_node_and_a_missing_master_address_are_one_line_errors():
    for argv, env, msg in ((["--num_gpus_per_node", "2"], {"MASTER_ADDR": "a", "MASTER_PORT": "1"}, "with one node fails"),
                           (["--num_nodes", "2"], {}, "set MASTER_ADDR and MASTER_PORT")):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "OMPI_"))} | env | {"PYTHONPATH": ROOT}
        r = subprocess.run([sys.executable, "-m", "ssvit", "esvit-mnodes", *argv], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
