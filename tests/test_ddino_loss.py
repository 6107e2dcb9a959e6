"""EsViT's DDINOLoss (view + region level) and DINOLoss's mixup variant against hand computations."""
import math

import pytest
import torch

from ssvit.objectives import DDINOLoss, DINOLoss, match_regions


def softmax(x):
    e = [math.exp(v - max(x)) for v in x]
    return [v / sum(e) for v in e]


def log_softmax(x):
    m = max(x)
    lse = m + math.log(sum(math.exp(v - m) for v in x))
    return [v - lse for v in x]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def reference_ddino(s_cls, s_reg, s_fea, t_cls, t_reg, t_fea, B, n_t, sizes, center, center_grid, temp, st=0.1):
    """Plain-Python DDINO: loops over pairs, images and tokens (lists of lists)."""
    ncrops = len(sizes)
    # per-crop row offsets of the student token rows
    offs = [0]
    for n in sizes:
        offs.append(offs[-1] + n * B)
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(ncrops):
            if v == i:
                continue
            pair = 0.0
            for b in range(B):
                q = softmax([(t - c) / temp for t, c in zip(t_cls[i * B + b], center)])
                ls = log_softmax([x / st for x in s_cls[v * B + b]])
                view = -sum(a * l for a, l in zip(q, ls))
                region = 0.0
                for n in range(sizes[v]):
                    row = offs[v] + b * sizes[v] + n
                    sims = [cosine(s_fea[row], t_fea[i * B * n_t + b * n_t + j]) for j in range(n_t)]
                    j = max(range(n_t), key=lambda k: sims[k])
                    tq = softmax([(t - c) / temp for t, c in zip(t_reg[i * B * n_t + b * n_t + j], center_grid)])
                    ls_r = log_softmax([x / st for x in s_reg[row]])
                    region += -sum(a * l for a, l in zip(tq, ls_r))
                pair += 0.5 * view + 0.5 * region / sizes[v]
            total += pair / B
            terms += 1
    return total / terms


def make_outputs(B=2, n_g=4, n_l=1, n_local=2, K=5, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ncrops = 2 + n_local
    sizes = [n_g, n_g] + [n_l] * n_local
    s_rows = sum(sizes) * B
    student = (torch.randn(ncrops * B, K, generator=g), torch.randn(s_rows, K, generator=g),
               torch.randn(s_rows, C, generator=g), [n_g, n_l] if n_local else [n_g])
    teacher = (torch.randn(2 * B, K, generator=g), torch.randn(2 * n_g * B, K, generator=g),
               torch.randn(2 * n_g * B, C, generator=g), [n_g])
    return student, teacher, sizes


@pytest.mark.parametrize("n_local", [0, 2])
def test_ddino_loss_matches_hand_computation_and_updates_both_centers(n_local):
    B, n_g, n_l, K = 2, 4, 1, 5
    student, teacher, sizes = make_outputs(B, n_g, n_l, n_local, K)
    loss_fn = DDINOLoss(K, 2 + n_local, 0.04, 0.07, 3, 5)  # linspace(0.04, 0.07, 3)[1] = 0.055
    loss_fn.center.copy_(torch.linspace(-0.2, 0.3, K))
    loss_fn.center_grid.copy_(torch.linspace(0.1, -0.1, K))
    c0, cg0 = loss_fn.center.clone(), loss_fn.center_grid.clone()
    loss = loss_fn(student, teacher, epoch=1)
    ref = reference_ddino(*(t.tolist() for t in student[:3]), *(t.tolist() for t in teacher[:3]), B, n_g, sizes,
                          c0[0].tolist(), cg0[0].tolist(), 0.055)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    # centers: EMA 0.9 with the batch means of the teacher logits, *after* the loss
    assert torch.allclose(loss_fn.center, 0.9 * c0 + 0.1 * teacher[0].mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(loss_fn.center_grid, 0.9 * cg0 + 0.1 * teacher[1].mean(0, keepdim=True), atol=1e-6)


def test_region_matching_picks_the_most_similar_teacher_region():
    torch.manual_seed(0)
    t_fea = torch.randn(2, 6, 8)
    perm = torch.tensor([[3, 0, 5], [1, 1, 4]])
    # student tokens = scaled, slightly perturbed copies of teacher tokens perm[b]
    s_fea = torch.stack([t_fea[b, perm[b]] * 3.0 + 0.01 * torch.randn(3, 8) for b in range(2)])
    assert torch.equal(match_regions(s_fea, t_fea), perm)


def test_ddino_gradients_reach_student_logits_only_and_match_index_is_not_differentiated():
    student, teacher, _ = make_outputs(n_local=2)
    s_cls, s_reg, s_fea, npatch = student
    s_cls.requires_grad_(True)
    s_reg.requires_grad_(True)
    s_fea.requires_grad_(True)
    t = [x.clone().requires_grad_(True) for x in teacher[:3]]
    loss = DDINOLoss(5, 4, 0.04, 0.04, 0, 3)((s_cls, s_reg, s_fea, npatch), (*t, teacher[3]), 0)
    loss.backward()
    assert s_cls.grad.abs().sum() > 0 and s_reg.grad.abs().sum() > 0
    assert s_fea.grad is None or s_fea.grad.abs().sum() == 0  # argmax only
    assert all(x.grad is None or x.grad.abs().sum() == 0 for x in t)  # teacher targets detached


def test_ddino_rejects_several_local_sizes_with_a_clear_error():
    student, teacher, _ = make_outputs(n_local=2)
    bad = (student[0], student[1], student[2], [4, 1, 2])
    with pytest.raises(ValueError, match="single --local_crops_size"):
        DDINOLoss(5, 4, 0.04, 0.04, 0, 3)(bad, teacher, 0)


def test_dino_loss_mixup_variant_follows_esvit_literal_formula():
    torch.manual_seed(1)
    B, K, ncrops = 3, 4, 3
    s, t = torch.randn(ncrops * B, K), torch.randn(2 * B, K)
    # asymmetric soft targets: the literal index order (rows = teacher images) matters for the mean
    T = torch.softmax(torch.randn(B, B), dim=1)
    targets = [T, T.t().clone(), torch.eye(B)]
    loss = DINOLoss(K, ncrops, 0.04, 0.04, 0, 2)(s, t, 0, targets)
    q = torch.softmax(t / 0.04, -1).chunk(2)
    ls = torch.log_softmax(s / 0.1, -1).chunk(ncrops)
    total, n = 0.0, 0
    for i in range(2):
        for v in range(ncrops):
            if v == i:
                continue
            rows = [-sum(targets[v][r, c] * (q[i][r] @ ls[v][c]) for c in range(B)) for r in range(B)]
            total += sum(rows) / B
            n += 1
    assert loss.item() == pytest.approx((total / n).item(), rel=1e-5)
    # identity targets give plain DINO
    plain = DINOLoss(K, ncrops, 0.04, 0.04, 0, 2)(s, t, 0)
    ident = DINOLoss(K, ncrops, 0.04, 0.04, 0, 2)(s, t, 0, [torch.eye(B)] * ncrops)
    assert ident.item() == pytest.approx(plain.item(), rel=1e-6)
