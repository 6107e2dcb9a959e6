"""The DINO method object: construction from the original flags, teacher init, a few steps learn."""
import torch

from ssvit.cli.pretrain import get_args_parser
from method_helpers import train_on_fixed_batch
from ssvit.config import parse_with_config
from ssvit.methods.dino import DINO

FLAGS = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
         "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
         "--epochs", "2"]


def build(flags=FLAGS):
    return DINO(parse_with_config(get_args_parser(flags), flags))


def test_teacher_starts_as_student_and_has_no_grad():
    torch.manual_seed(0)
    m = build()
    s, t = m.student.state_dict(), m.teacher.state_dict()
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert m.criterion.ncrops == 4 and m.criterion.center.shape == (1, 32)
    assert m.student.backbone.blocks[1].drop_path1.drop_prob > 0  # default --drop_path_rate 0.1
    assert isinstance(m.teacher.backbone.blocks[1].drop_path1, torch.nn.Identity)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = build(FLAGS + ["--drop_path_rate", "0"])
    images = [torch.randn(8, 3, 16, 16) for _ in range(2)] + [torch.randn(8, 3, 8, 8) for _ in range(2)]
    losses = train_on_fixed_batch(m, images, 25)
    assert losses[-1] < losses[0] - 0.05, losses
