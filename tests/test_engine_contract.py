"""The engine's task contract: teacher-less tasks, trainable parameters outside the student, labels
and indices in training_step, per-group lr / wd scales, the validation hook with
checkpoint_best.pth, and symmetric checkpoint state."""
import json
import os

import pytest
import torch

import toy_methods  # noqa: F401  (registers the toy tasks)
from ssvit.cli.pretrain import get_args_parser, make_trainer
from ssvit.config import parse_with_config
from ssvit.utils.checkpoint import load_checkpoint

TOY = ["--dataset", "synthetic", "--synthetic_size", "40", "--batch_size_per_gpu", "8", "--num_workers", "0",
       "--tensorboard", "false", "--lr", "0.5", "--optimizer", "sgd", "--warmup_epochs", "0", "--min_lr", "0.5",
       "--weight_decay", "0", "--weight_decay_end", "0", "--clip_grad", "0", "--print_freq", "100"]


def trainer(tmp_path, method="toy_supervised", extra=(), name="r"):
    argv = TOY + ["--method", method, "--output_dir", str(tmp_path / name), *extra]
    return make_trainer(parse_with_config(get_args_parser(argv), argv))


def test_teacherless_task_trains_and_checkpoints_without_a_teacher(tmp_path):
    t = trainer(tmp_path, extra=["--epochs", "2"])
    assert t.momentum_schedule is None
    s0 = {k: v.clone() for k, v in t.method.student.state_dict().items()}
    t.fit()
    ck = load_checkpoint(str(tmp_path / "r" / "checkpoint.pth"))
    assert "teacher" not in ck and {"student", "toy_loss", "optimizer"} <= set(ck)
    assert any(not torch.equal(s0[k], v) for k, v in t.method.student.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "r" / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and "train_teacher_entropy" not in log[0]


def test_extra_parameter_is_optimised_and_its_gradient_cleared(tmp_path):
    t = trainer(tmp_path, extra=["--epochs", "1"])
    s = t.method.criterion.log_var
    assert any(p is s for g in t.optimizer.param_groups for p in g["params"])
    batch, labels, index = next(iter(torch.utils.data.DataLoader(t.dataset, batch_size=8)))
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(t.method.student(batch), labels).item()
    t.set_schedules(0)
    r = t.step(batch, 0, 0, 0.0, labels=labels, index=index)
    assert r.stepped and s.grad is None  # cleared after the step
    # d/ds [exp(-s) ce + s] at s = 0 is 1 - ce; SGD (first step, momentum buffer = grad):
    # s <- -lr * (1 - ce), lr = --lr x batch / 256
    lr = 0.5 * 8 / 256
    assert t.optimizer.param_groups[-1]["lr"] == pytest.approx(lr)
    assert float(s.detach()) == pytest.approx(-lr * (1 - ce), rel=1e-5)


def test_labels_and_indices_reach_training_step(tmp_path):
    t = trainer(tmp_path, extra=["--epochs", "1"])
    t.fit()
    seen = t.method.seen_labels
    assert len(seen) == 5
    idx = torch.cat([i for _, i in seen])
    assert sorted(idx.tolist()) == list(range(40))  # one epoch: every sample once
    base = t.dataset.base
    for labels, index in seen:
        assert labels.tolist() == [base[int(i)][1] for i in index]


def _scaled_groups(self, student):
    """The toy's groups with scales: [weight: lr x 0.25, own wd], [bias: lr x 2, wd x 0.5], extra."""
    weight, bias = student[1].weight, student[1].bias
    return [{"params": [weight], "lr_scale": 0.25}, {"params": [bias], "lr_scale": 2.0, "wd_scale": 0.5}] + \
        self.extra_param_groups()


def test_lr_scale_and_wd_scale_reach_the_optimizer(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_methods.ToySupervised, "param_groups", _scaled_groups)
    t = trainer(tmp_path, extra=["--epochs", "1", "--weight_decay", "0.1", "--weight_decay_end", "0.1"])
    g0, g1 = t.optimizer.param_groups[:2]
    own_wd = g0["weight_decay"]  # no wd_scale: the group keeps the optimizer's weight decay
    t.set_schedules(0)
    lr = t.lr_schedule[0]
    assert g0["lr"] == pytest.approx(0.25 * lr) and g1["lr"] == pytest.approx(2 * lr)
    assert g0["weight_decay"] == own_wd and g1["weight_decay"] == pytest.approx(0.05)
    extra = t.optimizer.param_groups[2:]  # the learned loss weight: 0-d, no decay
    assert extra and all(g["wd_scale"] == 0.0 and g["weight_decay"] == 0.0 for g in extra)


def test_group_scales_survive_a_resumed_optimizer_whose_groups_lack_them(tmp_path):
    """A checkpoint's optimizer groups replace the built ones on resume (``load_state_dict``); one
    written before the groups carried ``wd_scale`` (DINO's originals) must still get the schedule."""
    t = trainer(tmp_path, extra=["--epochs", "2", "--weight_decay", "0.1", "--weight_decay_end", "0.1"])
    assert t.optimizer.param_groups[0]["wd_scale"] == 1.0  # the default groups: DINO's rule, explicit
    t.fit()
    ck_path = tmp_path / "r" / "checkpoint.pth"
    ck = load_checkpoint(str(ck_path))
    for g in ck["optimizer"]["param_groups"]:
        g.pop("wd_scale", None)
        g["weight_decay"] = 123.0
    torch.save(ck, ck_path)
    t2 = trainer(tmp_path, extra=["--epochs", "3", "--weight_decay", "0.1", "--weight_decay_end", "0.1"])
    t2.maybe_resume()
    assert "wd_scale" not in t2.optimizer.param_groups[0]
    t2.set_schedules(2 * t2.niter_per_ep)
    assert t2.optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.1)  # scheduled
    assert t2.optimizer.param_groups[1]["weight_decay"] == 123.0  # no wd_scale: kept


def test_validation_hook_tracks_the_best_and_writes_checkpoint_best(tmp_path):
    t = trainer(tmp_path, "toy_validated", ["--epochs", "4", "--val_freq", "1"])
    t.fit()
    out = tmp_path / "r"
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["val_acc"] for r in log] == [0.5, 0.9, 0.7, 0.95]
    assert [r["best_acc"] for r in log] == [0.5, 0.9, 0.9, 0.95]
    best = load_checkpoint(str(out / "checkpoint_best.pth"))
    assert best["epoch"] == 4 and best["best_metric"] == {"name": "acc", "value": 0.95}


def test_validation_every_val_freq_epochs_and_at_the_last(tmp_path):
    t = trainer(tmp_path, "toy_validated", ["--epochs", "3", "--val_freq", "2"])
    t.fit()
    log = [json.loads(line) for line in (tmp_path / "r" / "log.txt").read_text().splitlines()]
    assert ["val_acc" in r for r in log] == [False, True, True]
    best = load_checkpoint(str(tmp_path / "r" / "checkpoint_best.pth"))
    assert best["epoch"] == 2  # epoch 1 (0.9) beats epoch 2 (0.7)


def test_best_metric_and_extra_state_survive_a_resume(tmp_path):
    t = trainer(tmp_path, "toy_validated", ["--epochs", "2"])
    t.fit()
    assert t.method.steps_done == 10
    t2 = trainer(tmp_path, "toy_validated", ["--epochs", "3"])
    t2.maybe_resume()
    assert t2.best == 0.9 and t2.method.steps_done == 10  # extra_checkpoint_state restored
    t2.fit()
    log = [json.loads(line) for line in (tmp_path / "r" / "log.txt").read_text().splitlines()
           if "resume_changes" not in line]
    assert log[-1]["best_acc"] == 0.9 and log[-1]["val_acc"] == 0.7


def test_extra_parameter_gradients_are_averaged_over_ranks(tmp_path):
    """2 Gloo ranks see different data: the learned loss weight (outside the DDP student) must
    still end equal on both, as the student does."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "ddp"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(root, "tests", "ddp_worker.py"), *TOY, "--method", "toy_supervised",
                        "--epochs", "1", "--batch_size_per_gpu", "4", "--output_dir", str(out)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r0, r1 = torch.load(out / "rank0.pth"), torch.load(out / "rank1.pth")
    assert r0["criterion"]["log_var"] != 0 and torch.equal(r0["criterion"]["log_var"], r1["criterion"]["log_var"])
    for k in r0["student"]:
        assert torch.equal(r0["student"][k], r1["student"][k]), k


DINO_TINY = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
             "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
             "--epochs", "3", "--patch_out_dim", "32"]


def test_numbered_checkpoint_rules_dino_every_epoch_ibot_not_at_epoch0():
    from method_helpers import build_method
    dino, _ = build_method(["--method", "dino", *DINO_TINY[:-2]])
    ibot, _ = build_method(["--method", "ibot", *DINO_TINY])
    assert [dino.numbered_checkpoint(e, 1) for e in range(3)] == [True, True, True]
    assert [ibot.numbered_checkpoint(e, 1) for e in range(3)] == [False, True, True]
    assert [dino.numbered_checkpoint(e, 2) for e in range(3)] == [True, False, True]
    assert not dino.numbered_checkpoint(0, 0)


def test_the_step_freezes_the_last_layer_during_freeze_last_layer_epochs():
    from method_helpers import build_method
    from ssvit.engine.optim import build_optimizer
    from ssvit.engine.step import TrainStep
    torch.manual_seed(0)
    m, _ = build_method(["--method", "dino", *DINO_TINY[:-2], "--freeze_last_layer", "1", "--norm_last_layer",
                         "false"])
    opt = build_optimizer("adamw", m.param_groups(m.student))
    for g in opt.param_groups:
        g["lr"] = 1e-2
    step = TrainStep(m, m.student, opt, device=torch.device("cpu"))
    batch = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    last = m.student.head.last_layer
    v0, mlp0 = last.weight_v.detach().clone(), m.student.head.mlp[0].weight.detach().clone()
    step(batch, 0, 0, 0.9)  # epoch 0 < freeze_last_layer: the prototypes stay
    assert torch.equal(last.weight_v, v0) and not torch.equal(m.student.head.mlp[0].weight, mlp0)
    step(batch, 1, 1, 0.9)  # epoch 1: they train
    assert not torch.equal(last.weight_v, v0)


def test_fused_adamw_flag_reaches_the_engine_optimizer(tmp_path):
    extra = ["--optimizer", "adamw", "--epochs", "1"]
    assert not trainer(tmp_path, extra=extra, name="a").optimizer.defaults.get("fused")  # auto on CPU: the loop
    t = trainer(tmp_path, extra=extra + ["--fused_adamw", "true"], name="b")
    assert t.optimizer.defaults.get("fused") is True
    t.fit()  # trains and checkpoints with the fused CPU kernel
    ck = load_checkpoint(str(tmp_path / "b" / "checkpoint.pth"))
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())


# ------------------------------------------------------------------ stop signals and the end of a run
class _SignalAt:
    """Wraps a trainer's step: sends ``sig`` to this process during iteration ``it`` of ``epoch``."""

    def __init__(self, t, epoch, it, sig):
        self.step, self.at, self.sig = t.step, (epoch, it), sig

    def __call__(self, batch, epoch, i, *a, **kw):
        if (epoch, i) == self.at:
            os.kill(os.getpid(), self.sig)
        return self.step(batch, epoch, i, *a, **kw)


def _log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "r" / "log.txt").read_text().splitlines()]


def test_a_stop_during_the_last_epoch_end_finishes_the_job_and_hands_on_nothing(tmp_path):
    """SIGTERM in the last step of the last epoch: the run is complete (validated, saved, not interrupted)
    and neither on_interrupt nor a previous handler runs: a finished job is never requeued."""
    import signal
    t = trainer(tmp_path, "toy_validated", ["--epochs", "2"])
    t.step = _SignalAt(t, 1, t.niter_per_ep - 1, signal.SIGTERM)
    calls = []
    t.fit(on_interrupt=calls.append)
    assert not t.interrupted and calls == []
    assert [r["epoch"] for r in _log(tmp_path)] == [0, 1] and "val_acc" in _log(tmp_path)[1]
    assert load_checkpoint(str(tmp_path / "r" / "checkpoint.pth"))["epoch"] == 2


def test_a_stop_at_an_epoch_end_is_honoured_before_the_validation(tmp_path):
    """SIGUSR1 in epoch 0's last step of 3 epochs: epoch 0 is saved without running the validation
    (which could outlast Slurm's grace period) and on_interrupt gets the signal."""
    import signal
    t = trainer(tmp_path, "toy_validated", ["--epochs", "3"])
    validated = []
    t.method.validate = lambda epoch: validated.append(epoch) or {"acc": 0.5}
    t.step = _SignalAt(t, 0, t.niter_per_ep - 1, signal.SIGUSR1)
    calls = []
    t.fit(on_interrupt=calls.append)
    assert t.interrupted and calls == [signal.SIGUSR1] and validated == []
    log = _log(tmp_path)
    assert [r["epoch"] for r in log] == [0] and log[0]["validation_skipped"] == "stop signal"
    ck = load_checkpoint(str(tmp_path / "r" / "checkpoint.pth"))
    assert (ck["epoch"], ck["iter_in_epoch"]) == (1, 0)


def test_a_mid_epoch_stop_hands_the_agreed_signal_to_on_interrupt(tmp_path):
    import signal
    t = trainer(tmp_path, "toy_supervised", ["--epochs", "2"])
    t.step = _SignalAt(t, 1, 1, signal.SIGTERM)
    calls = []
    t.fit(on_interrupt=calls.append)
    assert t.interrupted and calls == [signal.SIGTERM] and t.stop_signal == signal.SIGTERM
    ck = load_checkpoint(str(tmp_path / "r" / "checkpoint.pth"))
    assert (ck["epoch"], ck["iter_in_epoch"]) == (1, 3)


def test_weighted_mean_weights_each_batch_by_its_samples_and_restores_the_mode():
    from ssvit.engine.validation import weighted_mean
    model = torch.nn.Linear(2, 1)
    model.train()
    seen = []

    def batch_metrics(m, item, device):
        seen.append(m.training)
        x, = item
        return x.shape[0], {"v": float(x.mean()), "n2": 2.0}
    loader = [(torch.full((3, 1), 1.0),), (torch.full((1, 1), 5.0),)]
    out = weighted_mean(model, loader, batch_metrics, keys=("v", "n2", "unused"))
    assert out == {"v": (3 * 1.0 + 1 * 5.0) / 4, "n2": 2.0, "unused": 0.0}  # not the mean of batch means (3.0)
    assert seen == [False, False] and model.training
