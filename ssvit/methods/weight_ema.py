"""An optional weight EMA of the student, as timm's ``ModelEma`` (``--model_ema`` /
``--model_ema_decay``): a constant decay, buffers copied, saved as the checkpoint's ``model_ema``.
Used by tasks without an EMA teacher (finetuning, SiT-v1)."""
from __future__ import annotations

import copy
import torch


class WeightEMA:
    """Mixin for a ``TrainingTask``: call ``init_weight_ema(enabled)`` after building ``student``. (No
    class-level ``ema`` default: it would shadow the submodule that ``nn.Module`` registers.)"""

    def init_weight_ema(self, enabled: bool) -> None:
        self.ema = None
        if enabled:
            self.ema = copy.deepcopy(self.student).eval()
            for p in self.ema.parameters():
                p.requires_grad = False

    @torch.no_grad()
    def update_teacher(self, momentum):
        """The engine's per-step EMA hook: the weight EMA with ``--model_ema_decay`` (``momentum`` unused)."""
        if self.ema is None:
            return
        from ..utils.params import constant_ema_update
        constant_ema_update(self.ema, self.student, self.args.model_ema_decay)

    def extra_checkpoint_state(self):
        return {"model_ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_extra_checkpoint_state(self, ckpt):
        if self.ema is not None and "model_ema" in ckpt:
            self.ema.load_state_dict(ckpt["model_ema"])
