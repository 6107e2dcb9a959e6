"""Schedules, parameter groups, per-parameter clipping, last-layer freezing, EMA."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ssvit.utils.lars import LARS
from ssvit.utils.params import cancel_gradients_last_layer, clip_gradients, get_params_groups
from ssvit.models import DINOHead, MultiCropWrapper, create_backbone
from ssvit.objectives import cosine_scheduler


def test_cosine_scheduler_matches_formula():
    s = cosine_scheduler(1.0, 0.1, epochs=3, niter_per_ep=4, warmup_epochs=1, start_warmup_value=0.0)
    assert len(s) == 12
    np.testing.assert_allclose(s[:4], [0, 1 / 3, 2 / 3, 1.0])
    L = 8
    expected = [0.1 + 0.45 * (1 + math.cos(math.pi * j / L)) for j in range(L)]
    np.testing.assert_allclose(s[4:], expected)
    assert s[3] == s[4] == 1.0  # the peak appears twice (QUIRK)
    assert s[-1] > 0.1  # final value never reached


def test_momentum_schedule_ends_below_one():
    m = cosine_scheduler(0.996, 1, 10, 100)
    assert m[0] == 0.996 and m[-1] < 1 and m[-1] == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi * 999 / 1000)))


def test_param_groups_quirks():
    model = MultiCropWrapper(create_backbone("vit_pico", patch_size=4, img_size=16), DINOHead(96, 10, hidden_dim=16,
                                                                                              bottleneck_dim=8))
    groups = get_params_groups(model)
    reg = {id(p) for p in groups[0]["params"]}
    noreg = {id(p) for p in groups[1]["params"]}
    named = dict(model.named_parameters())
    assert id(named["backbone.pos_embed"]) in reg and id(named["backbone.cls_token"]) in reg  # QUIRK: decayed
    assert id(named["backbone.blocks.0.norm1.weight"]) in noreg and id(named["head.mlp.0.bias"]) in noreg
    assert id(named["head.last_layer.weight_v"]) in reg
    assert id(named["head.last_layer.weight_g"]) not in reg | noreg  # frozen by norm_last_layer
    assert groups[1]["weight_decay"] == 0.0
    head = DINOHead(8, 4, norm_last_layer=False, hidden_dim=8, bottleneck_dim=4)
    reg2 = {id(p) for p in get_params_groups(head)[0]["params"]}
    assert id(head.last_layer.weight_g) in reg2  # QUIRK: 2-D weight_g is decayed when trainable


def test_clip_gradients_is_per_parameter():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    grads = [torch.full((3, 3), 2.0), torch.full((3,), 0.1), torch.full((1, 3), 10.0), torch.tensor([0.5])]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    clip_gradients(model, 3.0)
    out = [p.grad for p in model.parameters()]
    assert out[0].norm().item() == pytest.approx(3.0 / (6.0 + 1e-6) * 6.0, rel=1e-6)  # 2*3=6 -> clipped to ~3
    assert torch.equal(out[1], grads[1])  # small: untouched, bit for bit
    assert out[2].norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.equal(out[3], grads[3])


def test_cancel_gradients_last_layer():
    head = DINOHead(4, 3, norm_last_layer=False, hidden_dim=8, bottleneck_dim=4)
    head(torch.randn(2, 4)).sum().backward()
    cancel_gradients_last_layer(0, head, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is None and head.last_layer.weight_g.grad is None
    assert head.mlp[0].weight.grad is not None
    head(torch.randn(2, 4)).sum().backward()
    cancel_gradients_last_layer(1, head, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is not None


def test_lars_step_matches_formula():
    p = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = LARS([{"params": [p], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.1}], lr=0.5)
    p.grad, b.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0, 2.0])
    opt.step()
    dp = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    q = 0.001 * 5.0 / dp.norm()
    torch.testing.assert_close(p.data, torch.tensor([[3.0, 4.0]]) - 0.5 * q * dp)
    torch.testing.assert_close(b.data, torch.tensor([0.0, 0.0]))  # 1-D: no wd, no adaptation


def test_ema_update():
    from ssvit.engine.task import TrainingTask

    class M(TrainingTask):
        def __init__(self):
            super().__init__()
            self.student = nn.Linear(2, 2)
            self.teacher = nn.Linear(2, 2)

    m = M()
    t0 = m.teacher.weight.detach().clone()
    s0 = m.student.weight.detach().clone()
    m.update_teacher(0.9)
    torch.testing.assert_close(m.teacher.weight, 0.9 * t0 + 0.1 * s0)


def test_fused_adamw_setting_per_device():
    from ssvit.engine.optim import fused_adamw_wanted
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [fused_adamw_wanted(s, cpu) for s in ("auto", "true", "false")] == [False, True, False]
    assert [fused_adamw_wanted(s, gpu) for s in ("auto", "true", "false")] == [True, True, False]
    with pytest.raises(ValueError, match="--fused_adamw must be auto, true or false"):
        fused_adamw_wanted("yes", cpu)


def test_fused_adamw_on_cpu_follows_the_loop_within_rounding():
    """--fused_adamw true on CPU: PyTorch's fused kernel; over 30 steps with two groups (one without weight
    decay) and a changing lr it stays within float rounding of the per-parameter loop (the default), yet it
    is a different code path (not bit-identical)."""
    from ssvit.engine.optim import build_optimizer
    torch.manual_seed(0)
    init = [torch.randn(96, 288), torch.randn(96), torch.randn(256, 128)]

    def run(fused):
        ps = [p.clone().requires_grad_() for p in init]
        opt = build_optimizer("adamw", [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0}], fused=fused)
        assert bool(opt.defaults.get("fused")) == fused
        g = torch.Generator().manual_seed(1)
        for i in range(30):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            for j, grp in enumerate(opt.param_groups):
                grp["lr"] = 1e-3 * (1 - i / 40)
                if j == 0:
                    grp["weight_decay"] = 0.04
            opt.step()
        return ps
    loop, fused = run(False), run(True)
    for a, b, p0 in zip(loop, fused, init):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        assert not torch.equal(a, p0)
    assert any(not torch.equal(a, b) for a, b in zip(loop, fused))
