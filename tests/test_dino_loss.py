"""DINOLoss against values computed by hand with plain Python math."""
import math

import numpy as np
import pytest
import torch

from ssvit.objectives import DINOLoss


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def log_softmax(xs):
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def reference_loss(student, teacher, center, ncrops, t_temp, s_temp=0.1):
    """student: list over crops of list over batch of logits; teacher: list over 2 crops."""
    total, n = 0.0, 0
    for i in range(2):
        for v in range(ncrops):
            if v == i:
                continue
            per_b = []
            for b in range(len(teacher[i])):
                q = softmax([(t - c) / t_temp for t, c in zip(teacher[i][b], center)])
                ls = log_softmax([s / s_temp for s in student[v][b]])
                per_b.append(-sum(qk * lk for qk, lk in zip(q, ls)))
            total += sum(per_b) / len(per_b)
            n += 1
    return total / n


def test_constructor_signature_matches_original():
    loss = DINOLoss(8, 4, 0.04, 0.07, 3, 10)  # positional, original order
    assert loss.ncrops == 4 and loss.student_temp == 0.1 and loss.center_momentum == 0.9
    assert loss.center.shape == (1, 8) and "center" in dict(loss.named_buffers())


def test_hand_computed_value_and_center_update():
    torch.manual_seed(0)
    K, B, ncrops = 3, 2, 3
    s = torch.randn(ncrops * B, K)
    t = torch.randn(2 * B, K)
    loss_fn = DINOLoss(K, ncrops, 0.04, 0.04, 0, 5)
    loss_fn.center = torch.tensor([[0.3, -0.2, 0.1]])
    out = loss_fn(s, t, epoch=0)
    student = [s[c * B:(c + 1) * B].tolist() for c in range(ncrops)]
    teacher = [t[c * B:(c + 1) * B].tolist() for c in range(2)]
    expected = reference_loss(student, teacher, [0.3, -0.2, 0.1], ncrops, 0.04)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    # center updated after the loss: 0.9 * old + 0.1 * batch mean of teacher logits
    new_center = [0.9 * c + 0.1 * sum(col) / (2 * B) for c, col in zip([0.3, -0.2, 0.1], zip(*t.tolist()))]
    assert loss_fn.center.squeeze(0).tolist() == pytest.approx(new_center, rel=1e-5)
    # second call uses the updated center
    out2 = loss_fn(s, t, epoch=0)
    assert out2.item() == pytest.approx(reference_loss(student, teacher, new_center, ncrops, 0.04), rel=1e-5)


def test_teacher_temperature_warmup_is_per_epoch_linear():
    loss_fn = DINOLoss(4, 2, 0.04, 0.07, 4, 10)
    np.testing.assert_allclose(loss_fn.teacher_temp_schedule[:5], [0.04, 0.05, 0.06, 0.07, 0.07])
    assert len(loss_fn.teacher_temp_schedule) == 10
    torch.manual_seed(1)
    s, t = torch.randn(4, 4), torch.randn(4, 4)
    student = [s[:2].tolist(), s[2:].tolist()]
    teacher = [t[:2].tolist(), t[2:].tolist()]
    out = loss_fn(s, t, epoch=1)
    assert out.item() == pytest.approx(reference_loss(student, teacher, [0.0] * 4, 2, 0.05), rel=1e-5)


def test_gradient_only_through_student():
    torch.manual_seed(2)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    DINOLoss(5, 3, 0.04, 0.04, 0, 1)(s, t, 0).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    # d loss / d student logits = (softmax(s/T_s) * (#teachers compared) - sum q) / (T_s * B * n_terms)
    # check: per student crop, gradient rows sum to zero (softmax CE property)
    assert torch.allclose(s.grad.sum(dim=1), torch.zeros(6), atol=1e-6)


def test_same_view_pairs_are_skipped():
    # if the student equals the teacher on the same global view, only cross-view terms count:
    # making crop 0 of the student arbitrary must change the loss (it is compared with teacher view 1)
    torch.manual_seed(3)
    t = torch.randn(2, 4)
    s = torch.randn(2, 4)
    base = DINOLoss(4, 2, 0.04, 0.04, 0, 1)(s, t, 0).item()
    expected = reference_loss([[s[0].tolist()], [s[1].tolist()]], [[t[0].tolist()], [t[1].tolist()]], [0] * 4, 2, 0.04)
    assert base == pytest.approx(expected, rel=1e-5)
