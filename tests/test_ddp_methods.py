"""Every method, and the evaluations, under DDP: a 2-rank Gloo ``torchrun`` run whose ranks end with
bit-identical parameters (student, teacher and the loss state), and -- where the method's numerics
do not depend on how the global batch is split -- the same weights as one process that sees the
whole global batch (the same images per step: rank r of R takes positions r, r+R, ... of the
sampler's permutation, and every per-image draw is seeded by the image's index).

Where the split matters, the method is only checked for staying in sync (the reason is given with
its row): a contrastive / relation term across the images of a batch, BatchNorm statistics (per
process under Gloo), a per-batch mixup draw.
"""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
COMMON = ["--dataset", "synthetic", "--synthetic_size", "16", "--num_workers", "0", "--tensorboard", "false",
          "--print_freq", "100", "--epochs", "1", "--save_every_minutes", "0"]
# the 1-process comparison uses SGD: AdamW's first updates are about lr * sign(gradient), so a gradient that
# is zero up to float rounding (summed in another order on 2 ranks) can flip an update by 2 * lr
SGD = ["--optimizer", "sgd", "--lr", "2.0", "--warmup_epochs", "0", "--min_lr", "0.05"]
VIT = ["--arch", "vit_pico", "--patch_size", "4", "--drop_path_rate", "0"]
HEAD = ["--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16"]
CROPS = ["--global_crops_size", "16", "--local_crops_size", "8", "--local_crops_number", "2"]
MULTISTAGE = ["--method", "esvit", "--global_crops_size", "64", "--out_dim", "32", "--head_hidden_dim", "32",
              "--head_bottleneck_dim", "16", "--local_crops_number", "2", "--local_crops_size", "32",
              "--use_dense_prediction", "true", "--drop_path_rate", "0"]
RELVIT = ["--method", "relvit", "--task", "upstream", "--use_relations", "--use_abs_positions", "--model_size",
          "pico", "--patch_size", "8", "--patch_trans", "none", "--dropout", "0", "--drop_path_rate", "0"]

# name -> (flags, per-rank batch flag, per-rank batch, compare with one process?)
METHODS = {
    "dino": (["--method", "dino", *VIT, *HEAD, *CROPS, *SGD], "--batch_size_per_gpu", 4, True),
    "ibot": (["--method", "ibot", *VIT, *HEAD, *CROPS, "--patch_out_dim", "32", "--drop_path", "0", *SGD],
             "--batch_size_per_gpu", 4, True),
    # SERE's relations are between the images of a rank's batch: the split changes the loss
    "ibot_sere": (["--method", "ibot_sere", *VIT, *HEAD, *CROPS, "--patch_out_dim", "32", "--drop_path", "0",
                   "--overlap_size", "3", "3", "--sere_channel_sizes", "4", "2"], "--batch_size_per_gpu", 4, False),
    "dino_sere": (["--method", "dino_sere", *VIT, *HEAD, *CROPS, "--overlap_size", "3", "3",
                   "--sere_channel_sizes", "4", "2"], "--batch_size_per_gpu", 4, False),
    "esvit_vit": (["--method", "esvit", *VIT, *HEAD, "--global_crops_size", "32", "--local_crops_size", "16",
                   "--local_crops_number", "2", *SGD], "--batch_size_per_gpu", 4, True),
    "esvit_swin": ([*MULTISTAGE, "--arch", "swin_pico", *SGD], "--batch_size_per_gpu", 2, True),
    # CvT's convolutional projections hold BatchNorm: batch statistics per process under Gloo
    "esvit_cvt": ([*MULTISTAGE, "--arch", "cvt_pico"], "--batch_size_per_gpu", 2, False),
    "esvit_vil": ([*MULTISTAGE, "--arch", "vil_pico", *SGD], "--batch_size_per_gpu", 2, True),
    # SiT-v1's contrastive term takes its negatives among the images of the rank's batch
    "sit": (["--method", "sit", "--arch", "sit_pico", "--patch_size", "4", "--input-size", "16", "--no-repeated-aug",
             "--drop-path", "0"], "--batch-size", 4, False),
    # SiT-v2's heads hold BatchNorm: batch statistics per process under Gloo
    "sit_v2": (["--method", "sit_v2", *VIT, "--global_crops_size", "16", "--cls_hidden_dim", "64"],
               "--batch_size_per_gpu", 4, False),
    "relvit": ([*RELVIT, *SGD], "--batch_size", 4, True),
    "relvit_megapatch": ([*RELVIT, "--mega_patches", "--side_megapatches", "3", *SGD], "--batch_size", 4, True),
    "finetune": (["--method", "finetune", *VIT, "--input_size", "16", "--nb_classes", "10", "--aa", "none",
                  "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0.1", *SGD], "--batch_size", 4, True),
}


def _torchrun(script, args, nproc=2, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), os.path.join(ROOT, script), *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)


def _one_process(script, args, timeout=300):
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def _states(rank_file):
    r = torch.load(rank_file)
    out = {f"student.{k}": v for k, v in r["student"].items()}
    out.update({f"teacher.{k}": v for k, v in r["teacher"].items()})
    out.update({f"criterion.{k}": v for k, v in r["criterion"].items()})
    return out


#: BatchNorm statistics are per process under Gloo (SyncBatchNorm needs GPUs): DDP broadcasts rank 0's
#: before every forward, so they differ after the last one; rank 0's are the ones saved
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _assert_equal(a, b, what):
    assert a.keys() == b.keys(), what
    differ = [k for k in a if a[k].is_floating_point() and not k.endswith(BN_STATS) and not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def _assert_close(a, b, init, what, rel=1e-3, atol=1e-6):
    """Each tensor of ``a`` within ``rel`` x (how far it moved from ``init``) + ``atol`` of ``b``."""
    assert a.keys() == b.keys(), what
    far = []
    for k in a:
        if not a[k].is_floating_point() or k.endswith("num_batches_tracked"):
            continue
        moved = float((a[k] - init[k]).abs().max()) if k in init else 0.0
        diff = float((a[k] - b[k]).abs().max())
        if diff > rel * moved + atol:
            far.append(f"{k} (|diff| {diff:.3g}, moved {moved:.3g})")
    assert not far, f"{what}: {len(far)} tensors differ, e.g. {far[:3]}"


@pytest.mark.parametrize("name", list(METHODS))
def test_method_under_two_gloo_ranks_stays_in_sync_and_equals_one_process(tmp_path, name):
    flags, batch_flag, per_rank, comparable = METHODS[name]
    out2 = tmp_path / "ddp"
    p = _torchrun("tests/ddp_worker.py", [*COMMON, *flags, batch_flag, str(per_rank), "--output_dir", str(out2)])
    assert p.returncode == 0, (p.stdout[-2500:], p.stderr[-2500:])
    r0, r1 = _states(out2 / "rank0.pth"), _states(out2 / "rank1.pth")
    assert torch.load(out2 / "rank0.pth")["world_size"] == 2
    _assert_equal(r0, r1, f"{name}: rank 0 vs rank 1")
    if not comparable:
        return
    out1 = tmp_path / "one"
    q = _one_process("tests/ddp_worker.py", [*COMMON, *flags, batch_flag, str(2 * per_rank), "--output_dir", str(out1)])
    assert q.returncode == 0, (q.stdout[-2500:], q.stderr[-2500:])
    assert torch.load(out1 / "rank0.pth")["world_size"] == 1
    init = {f"{net}.{k}": v for net in ("student", "teacher") for k, v in torch.load(out2 / "rank0.pth")["init"][net].items()}
    assert max(float((r0[k] - v).abs().max()) for k, v in init.items() if v.is_floating_point()) > 1e-3, "nothing trained"
    _assert_close(r0, _states(out1 / "rank0.pth"), init, f"{name}: 2 ranks x {per_rank} vs 1 x {2 * per_rank}")


LINEAR = ["--arch", "vit_pico", "--patch_size", "4", "--dataset", "synthetic", "--synthetic_size", "32",
          "--num_labels", "10", "--num_workers", "0", "--lr", "0.5", "--print_freq", "0", "--epochs", "2"]


def _weights(tmp_path):
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save({"teacher": create_backbone("vit_pico", patch_size=4, img_size=32).state_dict()}, path)
    return str(path)


def _accuracy(p):
    return [line for line in p.stdout.splitlines() if line.startswith(("* Acc@1", "Accuracy"))][-2:]


def test_eval_linear_trains_under_two_ranks_and_evaluates_as_one_process(tmp_path):
    """The linear head trains under DDP (its crops come from each process's own generator, as in the
    original, so its weights depend on the split); its evaluation, reduced over the ranks, gives
    the one-process accuracy."""
    flags = [*LINEAR, "--pretrained_weights", _weights(tmp_path)]
    p = _torchrun("eval_linear.py", [*flags, "--batch_size_per_gpu", "4", "--output_dir", str(tmp_path / "ddp")])
    assert p.returncode == 0, (p.stdout[-2500:], p.stderr[-2500:])
    head = str(tmp_path / "ddp" / "checkpoint.pth.tar")
    two = _torchrun("eval_linear.py", [*flags, "--batch_size_per_gpu", "4", "--evaluate", "--pretrained_linear", head])
    one = _one_process("eval_linear.py", [*flags, "--batch_size_per_gpu", "8", "--evaluate", "--pretrained_linear", head])
    assert two.returncode == 0 and one.returncode == 0, (two.stderr[-2500:], one.stderr[-2500:])
    assert _accuracy(two) == _accuracy(one) and _accuracy(one)[1].startswith("Accuracy of the network on the 10 test")
    assert "Training of the supervised linear classifier on frozen features completed." in p.stdout


KNN = ["--arch", "vit_pico", "--patch_size", "4", "--dataset", "synthetic", "--synthetic_size", "40",
       "--num_workers", "0", "--nb_knn", "3", "5", "--batch_size_per_gpu", "4", "--eval_size", "32"]


def _knn_lines(text):
    return [line for line in text.splitlines() if "-NN classifier result" in line]


def test_eval_knn_under_two_ranks_gives_the_one_process_result_and_no_rank_waits(tmp_path):
    flags = [*KNN, "--pretrained_weights", _weights(tmp_path)]
    p = _torchrun("eval_knn.py", flags)
    assert p.returncode == 0, (p.stdout[-2500:], p.stderr[-2500:])
    q = _one_process("eval_knn.py", flags)
    assert q.returncode == 0, (q.stdout[-2500:], q.stderr[-2500:])
    two = [line.split(" (")[0] for line in _knn_lines(p.stdout)]
    one = [line.split(" (")[0] for line in _knn_lines(q.stdout)]
    assert len(two) == 2 and two == one
