"""The one backbone interface (ssvit/models/backbone.py) on every backbone family: named outputs from
``forward_features``, EsViT's ``forward_dense`` and n-last-blocks feature under one name, the per-block
tokens of token models, and the flags evaluation reads instead of probing with ``hasattr``."""
import pytest
import torch

from ssvit.evaluation.linear import RawPixels, default_protocol
from ssvit.models import create_backbone
from ssvit.models.backbone import Backbone, Features, has_last_blocks, is_token_model

# name -> (create_backbone kwargs, input size, token model?, EsViT n-last-blocks feature?)
BACKBONES = {
    "vit_pico": (dict(patch_size=4), 16, True, True),
    "swin_pico": ({}, 64, False, True),
    "cvt_pico": ({}, 64, False, True),
    "vil_pico": ({}, 64, False, True),
    "sit_pico": (dict(patch_size=4, img_size=16), 16, False, False),
    "resnet18": ({}, 64, False, False),
    "xcit_pico": ({}, 32, False, False),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_features_is_named_and_agrees_with_the_other_outputs(name):
    kwargs, size, token, blocks = BACKBONES[name]
    torch.manual_seed(0)
    m = create_backbone(name, **kwargs).eval()
    assert isinstance(m, Backbone) and is_token_model(m) is token and has_last_blocks(m) is blocks
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        f = m.forward_features(x)
        assert isinstance(f, Features) and f.cls.ndim == 2 and f.patch_tokens.ndim == 3
        assert f.cls.shape[0] == f.patch_tokens.shape[0] == 2 and f.cls.shape[1] == f.patch_tokens.shape[2]
        dense = m.forward_dense(x)
        assert torch.equal(dense[0], f.cls) and torch.equal(dense[1], f.patch_tokens)
        if name != "sit_pico":  # SiT's forward is its SSL heads; the others' is the view feature
            out = m(x)
            assert torch.equal(out, f.cls), name
        if token:
            tokens = m.forward_tokens(x)
            assert torch.equal(f.cls, tokens[:, 0]) and torch.equal(f.patch_tokens, tokens[:, 1:])
            inter = m.forward_intermediates(x, 2)
            ref = m.get_intermediate_layers(x, 2)
            assert len(inter) == 2 and all(torch.equal(a, b) for a, b in zip(inter, ref))
            assert torch.equal(inter[-1], tokens)
        else:
            with pytest.raises(ValueError, match="not a token model"):
                m.forward_intermediates(x, 1)
        if blocks:
            assert torch.equal(m.forward_last_blocks(x, 2), m.forward_return_n_last_blocks(x, 2))
        else:
            with pytest.raises(ValueError, match="no n-last-blocks"):
                m.forward_last_blocks(x, 1)


def test_the_evaluation_reads_the_flags():
    assert default_protocol(create_backbone("vit_pico", patch_size=4)) == "dino"
    assert default_protocol(create_backbone("swin_pico")) == "esvit"
    assert default_protocol(RawPixels(3, 8)) == "dino" and not is_token_model(RawPixels(3, 8))
    assert not is_token_model(torch.nn.Linear(2, 2)) and not has_last_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="exposes no attention maps"):
        create_backbone("sit_pico", patch_size=4, img_size=16).get_all_selfattention(torch.zeros(1, 3, 16, 16))
