"""RelViT (ssvit/objectives/relvit.py, ssvit/models/relvit.py, ssvit/models/relvit_ckpt.py,
ssvit/methods/relvit.py): relation labels (the spec's 3x3 example, permutations, megapatches),
distances / angles, the heads' scores by hand, smoothed CE by hand, the DecayLR schedule, training
on a fixed batch, the seed scripts' flags, exact resume, and an original-layout Lightning checkpoint
loaded without Lightning."""
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method_helpers import build_method, train_on_fixed_batch
from ssvit.models.relvit import HeadScores, MultiHeadAttentionScores, attention_scores
from ssvit.objectives.relvit import (SSLSignal, accuracy, create_angle_matrix, create_connectivity_matrix,
                                     create_dist_matrix, create_label_matrix, create_megapatches_grid, cross_entropy,
                                     get_patch_transforms, image2patches, patches2image)
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")

SPEC_3X3 = np.array([[4, 3, 3, 1, 0, 0, 1, 0, 0],
                     [5, 4, 3, 2, 1, 0, 2, 1, 0],
                     [5, 5, 4, 2, 2, 1, 2, 2, 1],
                     [7, 6, 6, 4, 3, 3, 1, 0, 0],
                     [8, 7, 6, 5, 4, 3, 2, 1, 0],
                     [8, 8, 7, 5, 5, 4, 2, 2, 1],
                     [7, 6, 6, 7, 6, 6, 4, 3, 3],
                     [8, 7, 6, 8, 7, 6, 5, 4, 3],
                     [8, 8, 7, 8, 8, 7, 5, 5, 4]])


def _original_connectivity(patches):
    """The original's construction (slicing the centred class map, transposing), re-typed from the spec."""
    flat = np.asarray(patches).reshape(-1)
    n = len(flat)
    labels = create_label_matrix(n)
    side = int(math.sqrt(n))
    conn = -np.ones([n, n], dtype=np.int64)
    center = (labels.shape[0] - 1) // 2
    for i in range(side):
        for j in range(side):
            conn[i * side + j] = labels[center - i:center - i + side, center - j:center - j + side].reshape(-1)
    return conn.T[flat, :][:, flat]


def test_relations_of_the_spec_layout_and_of_permutations():
    ident = np.arange(9).reshape(3, 3)
    assert np.array_equal(create_connectivity_matrix(ident), SPEC_3X3)
    assert create_label_matrix(4).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert create_label_matrix(9).tolist() == [[0, 0, 1, 2, 2], [0, 0, 1, 2, 2], [3, 3, 4, 5, 5], [6, 6, 7, 8, 8],
                                               [6, 6, 7, 8, 8]]  # the docstring example of the original
    rng = np.random.RandomState(0)
    for side in (3, 4, 7):
        perm = rng.permutation(side * side).reshape(side, side)
        assert np.array_equal(create_connectivity_matrix(perm), _original_connectivity(perm))
    perm = np.array([[8, 7, 6], [5, 4, 3], [2, 1, 0]])  # a 180-degree rotation of the patch order
    out = SSLSignal()(perm)
    assert torch.equal(out["relations"], torch.from_numpy(SPEC_3X3[perm.reshape(-1)][:, perm.reshape(-1)]))
    assert out["relations"][0, 1].item() == 5  # patch 8 (row 2, col 2) lies right of patch 7: RC
    assert out["abs_positions"].tolist() == perm.reshape(-1).tolist() and out["relations"].dtype == torch.int64


def test_distances_and_angles():
    ident = np.arange(9).reshape(3, 3)
    d = create_dist_matrix(ident)
    assert d[0, 0].item() == -1 and d[0, 8].item() == pytest.approx(1.0)  # the farthest pair maps to 1
    assert d[0, 1].item() == pytest.approx(1 / math.sqrt(8) * 2 - 1, rel=1e-6)
    a = create_angle_matrix(ident)
    p = np.array([[c + 1.5, r + 1.5] for r in range(3) for c in range(3)], dtype=np.float32)  # offset side / 2
    raw = np.zeros((9, 9), dtype=np.float32)
    for i in range(9):
        for j in range(9):
            if i != j:
                raw[i, j] = np.arccos(p[i] @ p[j] / (np.linalg.norm(p[i]) * np.linalg.norm(p[j]) + 1e-4)) / np.pi
    torch.testing.assert_close(a, torch.from_numpy(raw / raw.max() * 2 - 1), rtol=1e-4, atol=1e-4)
    assert a.dtype == torch.float32


def test_head_scores_against_a_hand_computation():
    torch.manual_seed(0)
    h = MultiHeadAttentionScores(18, 9)
    assert len(h.heads) == 9 and h.heads[0].q_lin.weight.shape == (2, 18) and h.heads[0].q_lin.bias is None
    x = torch.randn(2, 5, 18)
    out = h(x)
    assert out.shape == (2, 9, 5, 5)
    head = h.heads[3]
    q, k = x @ head.q_lin.weight.T, x @ head.k_lin.weight.T
    torch.testing.assert_close(out[:, 3], q @ k.transpose(1, 2) / math.sqrt(2))
    mask = torch.eye(5)
    masked = attention_scores(q, k, None, mask=mask)
    assert torch.isinf(masked[0, 0, 1]) and masked[0, 0, 0] == (q @ k.transpose(1, 2))[0, 0, 0] / math.sqrt(2)
    assert set(HeadScores(8, 4).state_dict()) == {"q_lin.weight", "k_lin.weight", "v_lin.weight"}


def test_smoothed_cross_entropy_and_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]).view(1, 3, 1, 2)  # (B=1, C=3, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    lp = F.log_softmax(logits, 1)[0, :, 0]  # (3, 2)
    e = 0.1
    hand = np.mean([(1 - e) * -lp[0, 0].item() + e * -lp[:, 0].mean().item(),
                    (1 - e) * -lp[1, 1].item() + e * -lp[:, 1].mean().item()])
    assert cross_entropy(logits, labels, smooth=e).item() == pytest.approx(hand, rel=1e-6)
    assert cross_entropy(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    torch.manual_seed(0)  # dropout only acts with smoothing, as the original
    assert cross_entropy(logits, labels, smooth=0.0, dropout=0.9).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert accuracy(logits, labels).item() == 1.0  # argmax over classes: [0, 1] (first maximum)
    assert accuracy(logits, torch.tensor([[[0, 0]]])).item() == 0.5


def test_patches_round_trip_and_megapatches():
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    p = image2patches(x, 4)
    assert p.shape == (3, 4, 4, 4) and torch.equal(p[:, 1], x[:, :4, 4:]) and torch.equal(patches2image(p, (8, 8)), x)
    img = torch.randn(3, 224, 224)
    g = torch.Generator().manual_seed(0)
    m = create_megapatches_grid(img, 6, 32, generator=g)
    assert m.shape == (3, 192, 192)
    # the row partition is reused for the columns (QUIRK): reproduce it from the same generator draws
    g = torch.Generator().manual_seed(0)
    torch.randperm(6, generator=g)  # the unused column cuts
    cuts = torch.sort(torch.cat([torch.randperm(6, generator=g)[:5] + 1, torch.tensor([7])]))[0]
    sizes = (torch.cat([cuts, torch.tensor([0])]) - torch.cat([torch.tensor([0]), cuts]))[:-1] * 32
    r0, c0 = int(sizes[0]), int(sizes[0])
    first = F.interpolate(img[:, :r0, :c0].unsqueeze(0), size=(32, 32), mode="bilinear", align_corners=False,
                          antialias=False)[0]
    torch.testing.assert_close(m[:, :32, :32], first)
    aa = create_megapatches_grid(img, 6, 32, generator=torch.Generator().manual_seed(0), antialias=True)
    assert not torch.allclose(aa, m)
    tf = get_patch_transforms("colJitter:0.8-grayScale:0.2", 8)
    assert tf(torch.rand(3, 16, 8, 8)).shape == (3, 16, 8, 8) and get_patch_transforms("None", 8) is None
    with pytest.raises(ValueError, match="not supported"):
        get_patch_transforms("blur:0.5", 8)


def test_decay_lr_is_the_originals_callback():
    from ssvit.methods.relvit import decay_lr
    s = decay_lr(5e-4, 1000)
    assert s[0] == 0 and s[50] == pytest.approx(2.5e-4) and s[99] == pytest.approx(5e-4 * 99 / 100)
    a = 1 - math.cos(100 / 1000 * math.pi / 2)
    assert s[100] == pytest.approx(a * 1.25e-6 + (1 - a) * 5e-4)
    a = 1 - math.cos(999 / 1000 * math.pi / 2)
    assert s[999] == pytest.approx(a * 1.25e-6 + (1 - a) * 5e-4)


UP = ["--method", "relvit", "--task", "upstream", "--use_relations", "--use_abs_positions", "--dataset", "synthetic",
      "--model_size", "pico", "--patch_size", "8", "--batch_size", "4", "--patch_trans", "none", "--dropout", "0"]


def test_a_few_steps_lower_the_loss_and_the_targets_follow_the_shuffle():
    torch.manual_seed(0)
    m, args = build_method(UP + ["--output_dir", ""])
    assert args.img_height == 32 and args.num_classes == 10 and args.metric_monitor == "val_loss"
    assert m.best_metric == "loss" and m.best_mode == "min"
    assert not args.use_positional_embeddings  # the published upstream scripts train without them
    tf_args = type(args)(**{**vars(args), "shuffle_patches": True, "patch_trans": "colJitter:0.8-grayScale:0.2"})
    from PIL import Image

    from ssvit.methods.relvit import RelViTTransform
    img = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
    torch.manual_seed(3)
    s = RelViTTransform(tf_args, train=True)(img)
    perm = s["abs_positions"]
    assert sorted(perm.tolist()) == list(range(16)) and perm.tolist() != list(range(16))
    assert torch.equal(s["relations"], torch.from_numpy(create_connectivity_matrix(perm.numpy().reshape(4, 4))))
    batch = {"images": torch.randn(4, 3, 32, 32), "relations": SSLSignal()(np.arange(16).reshape(4, 4))["relations"]
             .expand(4, 16, 16).clone(), "abs_positions": torch.arange(16).expand(4, 16).clone()}
    losses = train_on_fixed_batch(m, batch, steps=15, lr=2e-3, labels=torch.zeros(4, dtype=torch.long))
    assert losses[-1] < losses[0] - 0.5, losses


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)


def test_seed_script_flags_parse():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    argv = ["--method", "relvit", "--seed", "35771", "--logger", "wandb", "--mode", "train", "--task", "upstream",
            "--grad_clip_val", "1.0", "--exp_id", "x", "--backbone", "vit", "--model_size", "small", "--num_gpus", "1",
            "--epochs", "100", "--dataset", "cifar10", "--data_base_path", "d", "--batch_size", "256",
            "--num_workers", "8", "--weight_decay", "0.1", "--optimizer", "adamw", "--lr", "5e-4",
            "--drop_path_rate", "0.1", "--proj_dropout", "0.0", "--metric_monitor", "val_acc_rel",
            "--model_checkpoint", "", "--patch_size", "-1", "--dropout", "0.0", "--attn_mask", "",
            "--use_relations", "--use_abs_positions", "--patch_trans", "colJitter:0.8-grayScale:0.2"]
    a = parse_with_config(get_args_parser(argv), argv)
    from ssvit.methods.relvit import RelViTMethod
    RelViTMethod.check_args(a)
    assert (a.patch_size, a.img_height, a.dataset, a.batch_size_per_gpu, a.data_path, a.weight_decay,
            a.weight_decay_end, a.seed) == (4, 32, "cifar10", 256, "d", 0.1, 0.1, 35771)


def test_exact_resume_downstream_from_a_lightning_checkpoint(tmp_path):
    """An original-layout Lightning checkpoint (pickling a stand-in ModelCheckpoint class under
    Lightning's name) loads without Lightning; downstream finetuning from it resumes exactly."""
    torch.manual_seed(0)
    m, _ = build_method(UP + ["--output_dir", ""])
    sd = {k: v.clone() for k, v in m.student.state_dict().items()}
    mod = type(sys)("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:  # what Lightning 1.3 pickles as a key of 'callbacks'
        pass
    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = mod.__name__, "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__]
    for n in names[:-1]:
        sys.modules[n] = type(sys)(n)
    sys.modules[mod.__name__] = mod
    sys.modules["pytorch_lightning"].callbacks = sys.modules["pytorch_lightning.callbacks"]
    sys.modules["pytorch_lightning.callbacks"].model_checkpoint = mod
    try:
        ck = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.3.8", "state_dict": sd,
              "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}}, "optimizer_states": [],
              "lr_schedulers": []}
        torch.save(ck, tmp_path / "best.ckpt")
    finally:
        for n in names:
            del sys.modules[n]
    with pytest.raises(Exception):  # the plain weights-only load refuses it
        torch.load(tmp_path / "best.ckpt", weights_only=True)
    loaded = load_checkpoint(str(tmp_path / "best.ckpt"))  # Lightning's globals become inert placeholders
    assert torch.equal(loaded["state_dict"]["backbone.pos_embed"], sd["backbone.pos_embed"])
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"x": os.system}, f)  # a non-Lightning global is never allowed
    from ssvit.utils.checkpoint import CheckpointError
    with pytest.raises(CheckpointError):
        load_checkpoint(str(evil))
    down = ["--method", "relvit", "--task", "downstream", "--use_supervision", "--use_positional_embeddings",
            "--dataset", "synthetic", "--synthetic_size", "32", "--model_size", "pico", "--patch_size", "8",
            "--batch_size", "8", "--epochs", "2", "--num_workers", "0", "--tensorboard", "false",
            "--model_checkpoint", str(tmp_path / "best.ckpt")]
    full, part = tmp_path / "full", tmp_path / "part"
    p = _run(down + ["--output_dir", str(full)])
    assert p.returncode == 0 and "Loaded model at" in p.stdout, p.stderr[-2000:]
    assert "untrained one" in p.stderr  # the upstream pos_embed is flagged, not added silently
    assert _run(down + ["--max_iters", "3", "--output_dir", str(part)]).returncode == 0
    assert _run(down + ["--output_dir", str(part)]).returncode == 0
    a, b = load_checkpoint(str(full / "checkpoint.pth")), load_checkpoint(str(part / "checkpoint.pth"))
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    start = {k: v for k, v in sd.items() if k.startswith("backbone.blocks.0.")}
    assert all(not torch.equal(a["student"]["module." + k], v) for k, v in start.items() if v.ndim > 1)
    import json
    log = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert {"val_acc_clf", "val_loss_clf", "best_acc_clf"} <= set(log[-1]) and (full / "checkpoint_best.pth").exists()
    v = _run(down + ["--mode", "validation", "--output_dir", str(full)])
    assert v.returncode == 0 and "val_acc_clf" in v.stdout, v.stderr[-2000:]


def test_upstream_checkpoint_evaluates_without_its_untrained_pos_embed(tmp_path):
    out = tmp_path / "up"
    p = _run(UP + ["--synthetic_size", "16", "--epochs", "1", "--num_workers", "0", "--tensorboard", "false",
                   "--output_dir", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert ck["relvit_positional_embeddings"] is False and ck["student"]["module.backbone.pos_embed"].abs().sum() > 0
    from ssvit.evaluation.knn import build_eval_backbone
    model = build_eval_backbone("vit_pico", 8, str(out / "checkpoint.pth"), "teacher")
    assert torch.count_nonzero(model.pos_embed) == 0  # zeroed: what the upstream training saw
    assert torch.equal(model.blocks[0].attn.qkv.weight, ck["student"]["module.backbone.blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("script,flags", [("upstream.sh", {"task": "upstream", "use_relations": True,
                                                           "use_positional_embeddings": False, "mega_patches": False}),
                                          ("upstream_MEGApatch.sh", {"mega_patches": True, "side_megapatches": 6}),
                                          ("downstream.sh", {"task": "downstream", "use_supervision": True,
                                                             "use_positional_embeddings": True, "drop_path_rate": 0.1}),
                                          ("downstream-only.sh", {"task": "downstream", "use_relations": True,
                                                                  "patch_trans": "None"})])
def test_seed_scripts_take_the_seed_flags(tmp_path, script, flags):
    """Each wrapper runs main_pretrain.py with the seed script's fixed flags (checked on the written
    config.yaml of a 1-iteration run), and refuses unknown flags."""
    import yaml
    out = tmp_path / "o"
    cmd = ["bash", os.path.join(ROOT, "scripts", script), "--exp_id", "t", "--backbone", "vit", "--model_size", "pico",
           "--num_gpus", "1", "--epochs", "1", "--dataset", "synthetic", "--batch_size", "8", "--weight_decay", "0.1",
           "--drop_path_rate", "0.1", "--dropout", "0.0", "--num_workers", "0", "--side_megapatches", "6",
           "--seed", "7", "--output_dir", str(out), "--max_iters", "1", "--tensorboard", "false",
           "--synthetic_size", "16", "--patch_size", "4"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["weight_decay"] == 0.1 and cfg["grad_clip_val"] == 1.0 and cfg["model_size"] == "pico"
    for k, v in flags.items():
        assert cfg[k] == v, (k, cfg[k])
    bad = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), "--nope", "1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 1 and "--nope argument not allowed" in bad.stdout


def test_swin_backbone_predicts_relations_between_its_last_stage_tokens():
    torch.manual_seed(0)
    m, args = build_method(["--method", "relvit", "--task", "downstream", "--use_relations", "--use_abs_positions",
                            "--use_supervision", "--backbone", "swin", "--model_size", "pico", "--dataset", "synthetic_64",
                            "--batch_size", "4", "--output_dir", ""])
    x = torch.randn(2, 3, 64, 64)
    out = m.student(x)
    assert out["rel"].shape == (2, 9, 4, 4) and out["abs_pos"].shape == (2, 4, 4) and out["clf"].shape == (2, 10)
    pooled, tokens = m.student.backbone.forward_dense(x)
    torch.testing.assert_close(out["clf"], m.student.clf_head(pooled))
    torch.testing.assert_close(out["abs_pos"], m.student.abs_pos_head(tokens).transpose(1, 2))
    with pytest.raises(ValueError, match="patch_size 32"):
        build_method(["--method", "relvit", "--use_relations", "--backbone", "swin", "--model_size", "pico",
                      "--dataset", "synthetic", "--output_dir", ""])


def test_megapatch_samples_carry_the_megapatch_grid_labels():
    from PIL import Image

    from ssvit.methods.relvit import RelViTTransform
    _, args = build_method(UP + ["--mega_patches", "--side_megapatches", "3", "--shuffle_patches",
                                 "--patch_trans", "colJitter:0.8", "--output_dir", ""])
    img = Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8))
    torch.manual_seed(0)
    s = RelViTTransform(args, train=True)(img)
    assert s["images"].shape == (3, 24, 24) and s["relations"].shape == (9, 9)  # 3x3 megapatches of 8 px
    perm = s["abs_positions"].numpy().reshape(3, 3)
    assert np.array_equal(s["relations"].numpy(), SPEC_3X3[perm.reshape(-1)][:, perm.reshape(-1)])
