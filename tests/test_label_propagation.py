"""ssvit/evaluation/label_propagation.py, segmentation_io.py, video_segmentation.py and
ssvit/data/synthetic_sequences.py: the propagation against a re-typed original, the neighbourhood mask
and the queue on cases built for them, the active-channel argmax, generated sequences segmented well
by colour features and badly by random ones, the palettes, sizes not divisible by the patch."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ssvit.models.backbone import Backbone

from ssvit.data.synthetic_sequences import COLOURS, frame_sequence, write_davis, write_ipace
from ssvit.evaluation.label_propagation import (hard_labels, label_propagation, neighbourhood_mask, norm_mask,
                                                propagate, to_one_hot)
from ssvit.utils.label_png import IPACE_COLOURS, davis_palette, ipace_palette
from ssvit.evaluation.segmentation_io import davis_size, read_seg_davis, read_seg_nearest, resize_uint8_bilinear
from ssvit.evaluation.segmentation_metrics import ConfusionMatrix
from ssvit.evaluation.video_segmentation import DAVIS, IPACE, segment_sequence


# --------------------------------------------------------------------------- the original, re-typed from the spec
def original_mask(h, w, r):
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * r + 1):
                for q in range(2 * r + 1):
                    if 0 <= i - r + p < h and 0 <= j - r + q < w:
                        mask[i, j, i - r + p, j - r + q] = 1
    return mask.reshape(h * w, h * w)


def original_propagation(feat_tar, feats, segs, topk, mask):
    n = len(feats)
    q = F.normalize(feat_tar, dim=1).unsqueeze(0).repeat(n, 1, 1)
    k = F.normalize(torch.stack(feats), dim=1)
    aff = torch.exp(torch.bmm(q, k) / 0.1)
    if mask is not None:
        aff *= mask.unsqueeze(0).repeat(n, 1, 1)
    hw = aff.shape[1]
    aff = aff.transpose(2, 1).reshape(-1, hw)
    tk, _ = torch.topk(aff, dim=0, k=topk)
    aff[aff < tk.min(dim=0).values] = 0
    aff = aff / aff.sum(0, keepdim=True)
    s = torch.cat(segs)
    _, C, h, w = s.shape
    s = s.reshape(n, C, -1).transpose(2, 1).reshape(-1, C).T
    return (s @ aff).reshape(1, C, h, w)


@pytest.mark.parametrize("h,w,r", [(4, 5, 1), (6, 3, 2), (5, 5, 12)])
def test_neighbourhood_mask_equals_the_originals_loops(h, w, r):
    assert torch.equal(neighbourhood_mask(h, w, r), original_mask(h, w, r))


def test_label_propagation_equals_the_original():
    g = torch.Generator().manual_seed(0)
    h, w, D, C = 4, 5, 16, 3
    feats = [torch.randn(D, h * w, generator=g) for _ in range(3)]
    segs = [torch.rand(1, C, h, w, generator=g) for _ in range(3)]
    tar = torch.randn(h * w, D, generator=g)
    for mask in (None, neighbourhood_mask(h, w, 1)):
        for k in (1, 5):
            want = original_propagation(tar, feats, segs, k, mask)
            for chunk in (None, 1, 7):  # targets in chunks: the same numbers
                torch.testing.assert_close(label_propagation(tar, feats, segs, k, mask, chunk=chunk), want)


def test_neighbourhood_mask_changes_the_result_on_a_case_built_for_it():
    """Target patch (0, 0) matches a far patch (label 1) best and a near one (label 0) a little less."""
    h, w, D = 1, 6, 3
    feats = torch.zeros(D, h * w)
    feats[0, 0], feats[1, 0] = 1.0, 0.3   # near source (0, 0): label 0, cosine ~0.96 with the target
    feats[0, 5] = 1.0                      # far source (0, 5): label 1, cosine 1
    feats[2, 1:5] = 1.0                    # the rest: orthogonal, label 0
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[0, 0, 5] = 1
    seg = to_one_hot(labels, 2)
    tar = torch.zeros(h * w, D)
    tar[:, 2] = 1.0
    tar[0] = torch.tensor([1.0, 0.0, 0.0])
    masked = label_propagation(tar, [feats], [seg], topk=1, mask=neighbourhood_mask(h, w, 2))
    unmasked = label_propagation(tar, [feats], [seg], topk=1, mask=None)
    assert masked[0, :, 0, 0].argmax() == 0 and unmasked[0, :, 0, 0].argmax() == 1


def test_the_queue_carries_a_drifting_object():
    """Patch 0's feature turns from e0 to e2 over 5 frames; the first frame's patch 1 (label B) leans to
    e2, so the first frame alone hands patch 0 label B at the end, the queue of previous frames keeps A."""
    e = torch.eye(3)
    first = torch.stack([e[0], F.normalize(e[1] + 0.8 * e[2], dim=0)])  # (hw=2, D)
    seg = to_one_hot(torch.tensor([[[0, 1]]]), 2)
    frames = [torch.stack([np.cos(t * np.pi / 10) * e[0] + np.sin(t * np.pi / 10) * e[2], e[1]]) for t in range(1, 6)]
    with_queue = [s.soft for s in propagate(first, seg, frames, n_last_frames=3, topk=1, size_mask_neighborhood=0,
                                            grid=(1, 2))]
    alone = [label_propagation(f, [first.T], [seg], topk=1) for f in frames]
    assert all(s[0, :, 0, 0].argmax() == 0 for s in with_queue)
    assert alone[-1][0, :, 0, 0].argmax() == 1
    with pytest.raises(ValueError, match="n_last_frames"):
        next(propagate(first, seg, frames, n_last_frames=0))


def test_hard_labels_on_active_channels_equal_the_full_argmax():
    g = torch.Generator().manual_seed(1)
    soft = torch.zeros(1, 256, 5, 7)
    soft[0, [3, 10, 255]] = torch.rand(3, 5, 7, generator=g)
    soft[0, 10, 2, 3] = 0.0
    soft[0, 3, 0] = 0.0
    soft[0, [10, 255], 0] = 0.0  # a row where every channel is 0: id 0, as the full argmax
    for kw in (dict(scale_factor=4), dict(size=(23, 31))):
        up = F.interpolate(soft, mode="bilinear", align_corners=False, **(
            dict(scale_factor=4, recompute_scale_factor=False) if "scale_factor" in kw else dict(size=kw["size"])))[0]
        want = norm_mask(up).max(dim=0).indices.to(torch.uint8)
        assert torch.equal(hard_labels(soft, **kw), want)
    assert hard_labels(soft, size=(23, 31))[0].eq(0).all()


def test_palettes():
    pal = davis_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # rows of UVC's palette.txt (the file DINO downloads)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[8].tolist() == [64, 0, 0]
    assert pal[9].tolist() == [191, 0, 0] and pal[15].tolist() == [191, 128, 128] and pal[18].tolist() == [0, 191, 0]
    assert pal[21].tolist() == [128, 64, 128] and pal[22].tolist() == [22, 22, 22] and pal[255].tolist() == [255] * 3
    ip = ipace_palette()
    assert ip.shape == (256, 3) and [tuple(c) for c in ip[:27]] == list(IPACE_COLOURS)
    assert ip[27].tolist() == [27] * 3 and ip[255].tolist() == [255] * 3


def test_davis_sizes_and_uint8_resize():
    assert davis_size(480, 854) == (480, 832) and davis_size(854, 480) == (832, 480)
    assert davis_size(480, 480) == (480, 448)
    img = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    out = resize_uint8_bilinear(img, (20, 33))
    assert out.dtype == np.uint8 and out.shape == (20, 33, 3)
    # a constant image stays constant; a 2x upsampling of a ramp interpolates between neighbours
    assert (resize_uint8_bilinear(np.full((5, 5, 3), 77, np.uint8), (9, 11)) == 77).all()
    ramp = np.tile(np.array([0, 100], np.uint8)[None, :, None], (1, 1, 3))
    assert resize_uint8_bilinear(ramp, (1, 4))[0, :, 0].tolist() == [0, 25, 75, 100]


# cv2.resize(img, (8, 6)) and (11, 4) of np.random.default_rng(0).integers(0, 256, (9, 13, 3), np.uint8),
# channels 0 and 2, computed with opencv-python-headless 5.1.0 (not a dependency)
CV2_6x8 = ([[141, 42, 207, 93, 93, 68, 49, 124], [103, 78, 180, 129, 121, 152, 85, 152],
            [175, 175, 176, 76, 191, 82, 57, 166], [110, 40, 99, 170, 101, 137, 125, 160],
            [96, 173, 100, 100, 111, 101, 77, 161], [149, 148, 102, 105, 35, 169, 88, 150]],
           [[169, 91, 92, 191, 80, 84, 77, 83], [70, 214, 134, 58, 214, 102, 151, 100],
            [161, 163, 28, 178, 158, 156, 193, 171], [161, 159, 135, 121, 56, 66, 90, 183],
            [188, 49, 115, 153, 78, 83, 83, 115], [78, 173, 128, 169, 83, 70, 94, 154]])
CV2_4x11 = ([[162, 105, 106, 168, 91, 173, 90, 133, 78, 136, 138], [167, 165, 218, 174, 78, 223, 141, 63, 48, 127, 208],
             [70, 111, 58, 85, 209, 57, 88, 131, 75, 196, 181], [132, 185, 112, 55, 65, 84, 82, 165, 154, 161, 137]],
            [[97, 162, 176, 124, 122, 218, 120, 124, 132, 81, 155], [172, 178, 122, 31, 184, 135, 200, 133, 190, 234, 120],
             [210, 127, 118, 168, 151, 241, 22, 24, 69, 116, 176], [136, 124, 168, 129, 119, 141, 84, 127, 123, 165, 196]])


def test_frame_resize_is_opencvs_bit_for_bit_when_shrinking():
    img = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    for size, (c0, c2) in (((6, 8), CV2_6x8), ((4, 11), CV2_4x11)):
        out = resize_uint8_bilinear(img, size)
        assert out[..., 0].tolist() == c0 and out[..., 2].tolist() == c2


def test_seed_label_downsampling_rules(tmp_path):
    lab = np.zeros((20, 28), dtype=np.uint8)
    lab[0:4, 0:4] = 3      # the top-left pixel of every 4x4 cell decides under torch nearest
    lab[1:4, 4:8] = 2      # ... so this cell, whose top-left pixel is 0, stays 0
    lab[16:, :] = 255
    path = str(tmp_path / "l.png")
    Image.fromarray(lab, mode="L").save(path)
    oh, orig = read_seg_nearest(path, 4)
    assert oh.shape == (1, 256, 5, 7) and np.array_equal(orig, lab)
    ids = oh[0].argmax(0)
    assert ids[0, 0] == 3 and ids[0, 1] == 0 and ids[4].eq(255).all()
    # DAVIS: PIL NEAREST to the 480-rule grid, one-hot over max + 1 labels
    big = np.zeros((96, 96), dtype=np.uint8)
    big[:, 48:] = 2
    p2 = str(tmp_path / "d.png")
    Image.fromarray(big, mode="L").save(p2)
    oh, _ = read_seg_davis(p2, 16)  # 96 x 96 -> frame 480 x 448 -> grid (30, 28)
    assert oh.shape == (1, 3, 30, 28) and oh[0, 2, :, -1].eq(1).all() and oh[0, 0, :, 0].eq(1).all()


# --------------------------------------------------------------------------- generated sequences
class ColourFeatures(Backbone):
    """A 'trained-looking' ViT stand-in: each patch's feature is the one-hot of the nearest shape colour
    (or 'background') of its mean pixel, plus a tiny position code that breaks ties locally."""

    def __init__(self, patch_size: int, random: bool = False):
        super().__init__()
        self.patch_size, self.random, self.num_prefix_tokens = patch_size, random, 1
        self.dummy = nn.Parameter(torch.zeros(1))
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.228, 0.224, 0.225])
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("std", std.view(1, 3, 1, 1))
        self.register_buffer("colours", torch.tensor(COLOURS, dtype=torch.float32) / 255.0)

    is_token_model = True

    def forward_intermediates(self, x, n=1, norm=True):
        p = self.patch_size
        h, w = x.shape[2] // p, x.shape[3] // p
        rgb = (x * self.std + self.mean)[:, :, :h * p, :w * p]
        m = F.avg_pool2d(rgb, p).flatten(2).transpose(1, 2)[0]  # (hw, 3)
        if self.random:
            feats = torch.randn(h * w, 8, generator=torch.Generator().manual_seed(h * w))
        else:
            d = torch.cdist(m, self.colours)
            best = d.min(1)
            cls = torch.where(best.values < 0.25, best.indices + 1, torch.zeros_like(best.indices))
            feats = F.one_hot(cls, len(COLOURS) + 1).float()
        tokens = torch.cat([torch.zeros(1, feats.shape[1]), feats], 0)
        return [tokens.unsqueeze(0)]


def _object_iou(run_dir, pred_dir, n_classes=27, background=10):
    """Mean IoU of the shapes' classes (the background, most pixels, left out)."""
    cm = ConfusionMatrix(n_classes)
    for f in sorted(os.listdir(os.path.join(run_dir, "segmentation"))):
        gt = np.asarray(Image.open(os.path.join(run_dir, "segmentation", f)))
        pred = np.asarray(Image.open(os.path.join(pred_dir, f)))
        cm.update(pred, gt)
    present = cm.mat.sum(1) > 0
    present[background] = False
    return float(cm.per_class_iou()[present].mean())


def test_colour_features_propagate_well_and_random_ones_do_not(tmp_path):
    patch = 4
    root = str(tmp_path / "ipace")
    (run,) = write_ipace(root, n_runs=1, n_frames=8, size=(102, 142))  # not multiples of the patch
    frames = sorted(os.path.join(root, run, "image", f) for f in os.listdir(os.path.join(root, run, "image")))
    seed = frames[0].replace(os.sep + "image" + os.sep, os.sep + "segmentation" + os.sep).replace(".jpg", ".png")
    scores = {}
    for name, model in (("colour", ColourFeatures(patch)), ("random", ColourFeatures(patch, random=True))):
        out = str(tmp_path / name)
        r = segment_sequence(model, frames, seed, out, ipace_palette(), IPACE, patch, n_last_frames=3, topk=5,
                             size_mask_neighborhood=4)
        assert len(r.written) == 8 and r.frames == 7
        first = np.asarray(Image.open(r.written[0]))
        assert np.array_equal(first, np.asarray(Image.open(seed)))  # the seed frame is the ground truth
        with Image.open(r.written[-1]) as im:
            assert im.mode == "P" and im.size == (142, 102)
            assert np.array_equal(np.array(im.getpalette()[:81]).reshape(27, 3), np.array(IPACE_COLOURS))
        scores[name] = _object_iou(os.path.join(root, run), out)
    assert scores["colour"] > 0.7 and scores["random"] < 0.45, scores  # measured 0.79 and 0.36


def test_davis_recipe_on_a_generated_video(tmp_path):
    root = str(tmp_path / "davis")
    (name,) = write_davis(root, n_sequences=1, n_frames=5, size=(60, 90))
    frames = sorted(os.path.join(root, "JPEGImages", "480p", name, f)
                    for f in os.listdir(os.path.join(root, "JPEGImages", "480p", name)))
    seed = os.path.join(root, "Annotations", "480p", name, "00000.png")
    r = segment_sequence(ColourFeatures(16), frames, seed, str(tmp_path / "out"), davis_palette(), DAVIS, 16)
    assert os.path.basename(r.written[0]) == "00000.png" and len(r.written) == 5
    for p in r.written:
        with Image.open(p) as im:
            assert im.mode == "P" and im.size == (90, 60)  # written at the original size
            assert np.array_equal(np.array(im.getpalette()).reshape(-1, 3)[:22], davis_palette()[:22])
    gt = np.asarray(Image.open(os.path.join(root, "Annotations", "480p", name, "00004.png")))
    pred = np.asarray(Image.open(r.written[-1]))
    assert (pred == gt).mean() > 0.85


def test_generated_sequences_are_deterministic_and_move():
    a, b = frame_sequence(3, 4, (40, 52)), frame_sequence(3, 4, (40, 52))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert a.frames.shape == (4, 40, 52, 3) and a.labels.max() == 3
    assert not np.array_equal(a.labels[0], a.labels[3])
    assert frame_sequence(3, 2, (40, 52), ignore_band=5).labels[:, -5:].min() == 255
