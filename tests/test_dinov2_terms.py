"""DINOv2's additions to the DINO loss: Sinkhorn-Knopp teacher targets (``--centering sinkhorn_knopp``)
and the KoLeo regulariser (``--koleo_loss_weight``), against hand-written references and values."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssvit.cli.pretrain import get_args_parser
from ssvit.config import parse_with_config
from ssvit.methods.dino import DINO
from ssvit.objectives import DINOLoss, KoLeoLoss
from ssvit.objectives.dino_loss import sinkhorn_knopp

FLAGS = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
         "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
         "--epochs", "2", "--drop_path_rate", "0"]


def dinov2_sinkhorn_reference(teacher_output, temp, n_iterations=3):
    """dinov2/loss/dino_clstoken_loss.py sinkhorn_knopp_teacher, one process, written out literally."""
    Q = torch.exp(teacher_output.double() / temp).t()
    B, K = Q.shape[1], Q.shape[0]
    Q = Q / Q.sum()
    for _ in range(n_iterations):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


def test_sinkhorn_knopp_equals_dinov2_and_balances_prototypes():
    torch.manual_seed(0)
    t = torch.randn(12, 6)
    q = sinkhorn_knopp(t, 0.1)
    torch.testing.assert_close(q.double(), dinov2_sinkhorn_reference(t, 0.1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(1), torch.ones(12))
    # adding a constant to every logit changes nothing (the max is subtracted before exp)
    torch.testing.assert_close(sinkhorn_knopp(t + 50.0, 0.1), q)
    # at DINO's temperature 0.04 with logits in [-1, 1] nothing overflows
    assert torch.isfinite(sinkhorn_knopp(torch.rand(8, 4) * 2 - 1, 0.04)).all()
    # many iterations: every prototype gets B / K of the mass
    many = sinkhorn_knopp(t, 0.1, n_iterations=200)
    torch.testing.assert_close(many.sum(0), torch.full((6,), 2.0), rtol=1e-4, atol=1e-4)


def test_dino_loss_with_sinkhorn_targets_by_hand_and_centre_untouched():
    torch.manual_seed(0)
    B, K, ncrops = 4, 8, 3
    s, t = torch.randn(ncrops * B, K), torch.randn(2 * B, K)
    loss_fn = DINOLoss(K, ncrops, 0.04, 0.04, 0, 2, centering="sinkhorn_knopp")
    loss_fn.center.fill_(0.3)
    loss = loss_fn(s, t, epoch=0)
    q = dinov2_sinkhorn_reference(t, 0.04).float().chunk(2)
    ls = F.log_softmax(s / 0.1, dim=-1).chunk(ncrops)
    want = sum(-(q[i] * ls[v]).sum(-1).mean() for i in range(2) for v in range(ncrops) if v != i) / 4
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(loss_fn.center, torch.full((1, K), 0.3))
    with pytest.raises(ValueError, match="--centering must be one of centering, sinkhorn_knopp"):
        DINOLoss(K, ncrops, 0.04, 0.04, 0, 2, centering="sk")


def test_koleo_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # unit vectors (1,0), (0,1), (1,1)/sqrt2: every nearest neighbour is 45 degrees away
    d = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + 0.5)
    torch.testing.assert_close(KoLeoLoss()(x), torch.tensor(-math.log(d)), rtol=1e-5, atol=1e-6)
    # scale does not matter (rows are normalised); a point's twin makes the loss large
    torch.testing.assert_close(KoLeoLoss()(3 * x), KoLeoLoss()(x))
    assert KoLeoLoss()(torch.tensor([[1.0, 0.0], [1.0, 1e-4], [0.0, 1.0]])) > 3.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        KoLeoLoss()(torch.ones(1, 3))


def test_koleo_gradient_spreads_the_batch():
    torch.manual_seed(0)
    x = (torch.randn(16, 8) * 0.1 + torch.ones(8)).requires_grad_()  # a tight cluster
    before = KoLeoLoss()(x)
    before.backward()
    with torch.no_grad():
        x -= 0.5 * x.grad
    assert KoLeoLoss()(x) < before - 0.1


def _images(b=8):
    return [torch.randn(b, 3, 16, 16) for _ in range(2)] + [torch.randn(b, 3, 8, 8) for _ in range(2)]


def test_dino_method_adds_weighted_koleo_of_student_global_cls():
    torch.manual_seed(0)
    flags = FLAGS + ["--koleo_loss_weight", "0.25"]
    m = DINO(parse_with_config(get_args_parser(flags), flags))
    plain = DINO(parse_with_config(get_args_parser(FLAGS), FLAGS))
    plain.load_state_dict(m.state_dict())  # the same weights and centre, before the centre update
    images = _images()
    loss, extra = m.training_step(m.student, images, epoch=1)
    with torch.no_grad():
        feats = m.student.backbone(torch.cat(images[:2]))
    koleo = KoLeoLoss()(feats[:8]) + KoLeoLoss()(feats[8:])
    assert extra["koleo_loss"] == pytest.approx(koleo.item(), rel=1e-5)
    assert loss.item() == pytest.approx(extra["loss"] + 0.25 * koleo.item(), rel=1e-5)
    # weight 0 (the default): DINO's loss alone, no extra entries
    loss0, extra0 = plain.training_step(plain.student, images, epoch=1)
    assert extra0 == {} and loss0.item() == pytest.approx(extra["loss"], rel=1e-6)


def test_dino_method_centering_flag_reaches_the_loss():
    flags = FLAGS + ["--centering", "sinkhorn_knopp"]
    assert DINO(parse_with_config(get_args_parser(flags), flags)).criterion.centering == "sinkhorn_knopp"


def _koleo_batch(method, m, args):
    """(batch, crops, masks) of ``method``'s own transform (iBOT masks, SERE overlap grids)."""
    from method_helpers import transform_batch
    batch = transform_batch(m, args)
    if isinstance(batch, dict):
        return batch, batch["crops"], batch.get("masks")
    if method == "ibot":
        return batch, batch[0], batch[1]
    return batch, batch, None


KOLEO_METHODS = {
    "ibot": ["--patch_out_dim", "32", "--drop_path", "0", "--local_crops_number", "2"],
    "ibot_sere": ["--patch_out_dim", "32", "--drop_path", "0", "--overlap_size", "3", "3",
                  "--sere_channel_sizes", "4", "2"],
    "dino_sere": ["--overlap_size", "3", "3", "--sere_channel_sizes", "4", "2"],
}


@pytest.mark.parametrize("method", list(KOLEO_METHODS))
def test_koleo_term_is_added_to_every_self_distillation_method(method):
    """--koleo_loss_weight on iBOT, iBOT+SERE and DINO+SERE: the method's own loss plus the weight times
    KoLeo of the student backbone's CLS token of each global crop (masked crops for iBOT, as DINOv2)."""
    from method_helpers import build_method
    torch.manual_seed(0)
    flags = FLAGS + ["--method", method, *KOLEO_METHODS[method]]
    m, args = build_method(flags + ["--koleo_loss_weight", "0.25"])
    plain, _ = build_method(flags)
    plain.load_state_dict(m.state_dict())  # the same weights and centres
    batch, crops, masks = _koleo_batch(method, m, args)
    loss, extra = m.training_step(m.student, batch, epoch=1)
    loss0, extra0 = plain.training_step(plain.student, batch, epoch=1)
    with torch.no_grad():
        kw = {"mask": torch.cat(list(masks[:2]))} if masks is not None else {}
        cls = m.student.backbone(torch.cat(list(crops[:2])), **kw)
        cls = cls[:, 0] if cls.dim() == 3 else cls
    koleo = KoLeoLoss()(cls[:6]) + KoLeoLoss()(cls[6:])
    assert "koleo_loss" not in extra0 and extra["koleo_loss"] == pytest.approx(koleo.item(), rel=1e-5)
    assert loss.item() == pytest.approx(loss0.item() + 0.25 * koleo.item(), rel=1e-5)
    # the method's own logged terms are unchanged; 'loss' logs its own loss (SERE: the DINO / iBOT part)
    for key, value in extra0.items():
        assert extra[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert extra["loss"] == pytest.approx(extra0.get("loss", loss0.item()), rel=1e-5)


def test_koleo_flag_checks_and_refusals():
    from method_helpers import build_method
    for method, extra in [("dino", []), *KOLEO_METHODS.items()]:
        flags = FLAGS + ["--method", method, *extra]
        with pytest.raises(ValueError, match="--koleo_loss_weight must be >= 0"):
            build_method(flags + ["--koleo_loss_weight", "-0.1"])
        with pytest.raises(ValueError, match="needs --batch_size_per_gpu >= 2"):
            build_method(flags + ["--koleo_loss_weight", "0.1", "--batch_size_per_gpu", "1"])
    m, _ = build_method(FLAGS + ["--method", "dino_sere", "--centering", "sinkhorn_knopp"])
    assert m.criterion.centering == "sinkhorn_knopp"  # DINO+SERE's loss is DINO's: the centering applies
