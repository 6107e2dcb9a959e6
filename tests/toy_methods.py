"""Toy tasks on the engine's contract (registered on import): a supervised teacher-less task with a
learned loss weight outside the student, and one with a validation metric."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssvit.engine.schedules import linear_scaled_cosine
from ssvit.engine.task import TrainingTask
from ssvit.methods import register_method


class _Tensor8:
    """PIL image -> (1, 8, 8) float tensor (grey, resized): cheap and deterministic."""

    def __call__(self, img):
        x = torch.tensor(np.array(img.convert("L").resize((8, 8))), dtype=torch.float32)
        return x[None] / 255.0


@register_method("toy_supervised")
class ToySupervised(TrainingTask):
    """Cross entropy of a linear classifier on 8x8 grey pixels, weighted by a learned uncertainty
    ``exp(-s) * CE + s`` with ``s`` a parameter of the criterion (outside the student)."""
    has_ema_teacher = False
    loss_key = "toy_loss"

    def __init__(self, args):
        super().__init__()
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.teacher = None
        self.criterion = nn.Module()
        self.criterion.log_var = nn.Parameter(torch.zeros(()))
        self.seen_labels = []
        self.steps_done = 0

    def build_transform(self, args):
        return _Tensor8()

    def schedules(self, args, niter_per_ep, bs_total):
        return linear_scaled_cosine(args, niter_per_ep, bs_total)

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        self.seen_labels.append((labels.clone(), index.clone()))
        ce = F.cross_entropy(student(batch), labels)
        s = self.criterion.log_var
        self.steps_done += 1
        return torch.exp(-s) * ce + s, {"ce": ce.item()}

    def extra_checkpoint_state(self):
        return {"toy_steps_done": self.steps_done}

    def load_extra_checkpoint_state(self, ckpt):
        self.steps_done = int(ckpt["toy_steps_done"])


@register_method("toy_validated")
class ToyValidated(ToySupervised):
    """The toy task with a scripted validation metric per epoch (0.5, 0.9, 0.7, ...)."""
    best_metric = "acc"
    SCRIPT = [0.5, 0.9, 0.7, 0.95, 0.1]

    def validate(self, epoch):
        return {"acc": self.SCRIPT[epoch % len(self.SCRIPT)], "epoch_seen": epoch}
