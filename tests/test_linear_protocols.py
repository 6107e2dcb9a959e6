"""Linear probing, the iBOT and EsViT variants (ssvit/evaluation/linear.py, eval_linear.py): iBOT's
--avgpool_patchtokens 0/1/2 layouts, EsViT's n-last-blocks features of every backbone (and --cfg),
iBOT's eval_linear_multi learning-rate sweep (grid, one pass = separate runs, best pick, checkpoint,
resume), comma-separated checkpoint keys and --load_from."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssvit.evaluation.linear import (ClassifierBank, LinearClassifier, LinearFeatures, build_head_optimizer,
                                     default_protocol, feature_dim, parse_avgpool, sweep_grid, train_one_epoch,
                                     validate)
from ssvit.models import create_backbone
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SWIN_CFG = os.path.join(ROOT, "configs", "esvit", "swin_fmnist.yaml")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    m = create_backbone("vit_pico", patch_size=4, img_size=16).eval()
    with torch.no_grad():  # a non-trivial final norm, so normed and raw tokens differ
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.5, 0.5)
    return m


def test_ibot_avgpool_layouts(vit):
    x = torch.randn(2, 3, 16, 16)
    D = vit.embed_dim
    normed = vit.get_intermediate_layers(x, 2)
    raw_last = vit.forward_blocks(x)
    f0 = LinearFeatures(vit, "ibot", 2, 0)(x)
    assert torch.equal(f0, torch.cat([normed[0][:, 0], normed[1][:, 0]], 1)) and f0.shape[1] == feature_dim(vit, 2, 0, "ibot")
    f1 = LinearFeatures(vit, "ibot", 2, 1)(x)  # mean of the *un-normalised* last-block patch tokens, D dims
    assert f1.shape == (2, D) == (2, feature_dim(vit, 2, 1, "ibot"))
    torch.testing.assert_close(f1, raw_last[:, 1:].mean(1))
    assert not torch.allclose(f1, normed[1][:, 1:].mean(1))
    f2 = LinearFeatures(vit, "ibot", 2, 2)(x)  # [cls_1, cls_2, avg], not interleaved
    assert f2.shape == (2, 3 * D) == (2, feature_dim(vit, 2, 2, "ibot"))
    assert torch.equal(f2[:, :2 * D], f0) and torch.equal(f2[:, 2 * D:], normed[1][:, 1:].mean(1))


def test_esvit_vit_feature_concatenates_cls_then_avg(vit):
    x = torch.randn(2, 3, 16, 16)
    D = vit.embed_dim
    out = vit.get_intermediate_layers(x, 3)
    f = LinearFeatures(vit, "esvit", 3, 1)(x)
    assert f.shape == (2, 4 * D) == (2, feature_dim(vit, 3, 1, "esvit"))
    assert torch.equal(f[:, :3 * D], torch.cat([o[:, 0] for o in out], 1))
    assert torch.equal(f[:, 3 * D:], out[-1][:, 1:].mean(1))
    # DINO's layout with n=1 interleaves the same two vectors
    g = LinearFeatures(vit, "dino", 1, 1)(x)
    e = LinearFeatures(vit, "esvit", 1, 1)(x)
    assert torch.equal(g[:, 0::2], e[:, :D]) and torch.equal(g[:, 1::2], e[:, D:]) and not torch.equal(g, e)


@pytest.mark.parametrize("arch,n,dim", [("swin_pico", 3, 2 * 96 + 192),  # stage 3 (2 blocks, C=96) raw, stage 4 normed
                                        ("swin_pico", 1, 192), ("cvt_pico", 2, 48 + 64), ("vil_pico", 2, 48 + 64)])
def test_multistage_n_last_blocks_widths_and_default_protocol(arch, n, dim):
    torch.manual_seed(0)
    m = create_backbone(arch, num_classes=0).eval()
    assert default_protocol(m) == "esvit"
    x = torch.randn(1, 3, 64, 64)
    f = LinearFeatures(m, "esvit", n, 0)(x)
    assert f.shape == (1, dim) == (1, feature_dim(m, n, 0, "esvit", probe_size=64))
    torch.testing.assert_close(f, m.forward_return_n_last_blocks(x, n))
    if n == 1 and arch == "swin_pico":  # the last block alone = the view feature (mean of the final-normed tokens)
        torch.testing.assert_close(f, m(x))
    assert torch.equal(LinearFeatures(m, "ibot", n, 0)(x), f)  # iBOT's Swin rule is the same
    with pytest.raises(ValueError, match="exceeds"):
        LinearFeatures(m, "esvit", 99, 0)


def test_avgpool_flag_meaning_depends_on_the_protocol(vit):
    assert parse_avgpool("true", "dino") == 1 and parse_avgpool("1", "dino") == 1 and parse_avgpool("off", "esvit") == 0
    assert parse_avgpool("2", "ibot") == 2 and parse_avgpool("1", "ibot") == 1
    for value, protocol in (("2", "dino"), ("yes", "esvit"), ("true", "ibot"), ("3", "ibot")):
        with pytest.raises(ValueError):
            parse_avgpool(value, protocol)
    assert default_protocol(vit) == "dino"
    with pytest.raises(ValueError, match="needs --n_last_blocks 1"):
        LinearFeatures(vit, "dino", 2, 1)
    LinearFeatures(vit, "esvit", 2, 1)  # concatenating protocols take any n


def test_sweep_grid_is_ibots():
    g = sweep_grid()
    assert len(g) == 45 and {wd for _, wd, _ in g} == {0.0} and {o for *_, o in g} == {"sgd"}
    lrs = [lr for lr, _, _ in g]
    assert lrs[:3] == pytest.approx([1e-4, 2e-4, 3e-4]) and lrs[9] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(9.0)
    full = sweep_grid(sweep_lr_only=False)
    assert len(full) == 180 and {(wd, o) for _, wd, o in full} == {(0.0, "sgd"), (0.0, "lars"), (1e-6, "sgd"), (1e-6, "lars")}
    assert sweep_grid(lrs=[0.1, 0.2]) == [(0.1, 0.0, "sgd"), (0.2, 0.0, "sgd")]


def test_bank_trains_each_head_as_its_own_run_and_picks_the_best():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(256) % 4
    x = centers[y] + torch.randn(256, 16, generator=g)
    ds = TensorDataset(x, y)
    grid = [(1e-6, 0.0, "sgd"), (0.05, 0.0, "sgd"), (0.05, 1e-6, "lars")]
    torch.manual_seed(1)
    bank = ClassifierBank(16, 4, len(grid))
    singles = [LinearClassifier(16, 4) for _ in grid]
    for s, h in zip(singles, bank.heads):
        s.load_state_dict(h.state_dict())
    opts = [build_head_optimizer(h.parameters(), o, lr, wd) for h, (lr, wd, o) in zip(bank.heads, grid)]
    single_opts = [build_head_optimizer(s.parameters(), o, lr, wd) for s, (lr, wd, o) in zip(singles, grid)]
    for epoch in range(2):
        stats = train_one_epoch(None, bank, opts, DataLoader(ds, batch_size=32, shuffle=True,
                                generator=torch.Generator().manual_seed(epoch)), "cpu", print_freq=0)
        for s, o in zip(singles, single_opts):
            train_one_epoch(None, s, o, DataLoader(ds, batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(epoch)), "cpu", print_freq=0)
    assert set(stats) == {"loss0", "loss1", "loss2", "lr0", "lr1", "lr2"} and stats["lr1"] == 0.05
    for s, h in zip(singles, bank.heads):  # one summed backward = three separate runs
        torch.testing.assert_close(h.linear.weight, s.linear.weight, rtol=1e-5, atol=1e-6)
    v = validate(None, bank, DataLoader(ds, batch_size=64), "cpu", verbose=False)
    assert v["acc1@1"] > 95 and v["acc0@1"] < v["acc1@1"] and {"acc2@1", "loss2"} <= set(v) and "acc0@5" not in v  # 4 labels: no top-5
    assert v["acc1@1"] == pytest.approx(validate(None, singles[1], DataLoader(ds, batch_size=64), "cpu")["acc1"])


def _weights(tmp_path, arch="vit_pico", **kw):
    torch.manual_seed(0)
    m = create_backbone(arch, **kw)
    path = tmp_path / f"{arch}.pth"
    torch.save({"teacher": m.state_dict(), "student": m.state_dict()}, path)
    return str(path)


BASE = ["--arch", "vit_pico", "--patch_size", "4", "--dataset", "synthetic", "--synthetic_size", "64", "--num_labels",
        "10", "--batch_size_per_gpu", "16", "--num_workers", "0", "--print_freq", "0"]


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_linear.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=300)


def test_lr_sweep_cli_reports_the_best_lr_checkpoints_and_resumes(tmp_path):
    w = _weights(tmp_path, patch_size=4, img_size=32)
    flags = BASE + ["--pretrained_weights", w, "--cache_features", "true", "--lr_sweep", "true",
                    "--lrs", "0.0001", "5", "--linear_protocol", "ibot", "--avgpool_patchtokens", "2",
                    "--n_last_blocks", "2"]
    full = tmp_path / "full"
    p = _run(flags + ["--epochs", "3", "--output_dir", str(full)])
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((full / "results.json").read_text())
    assert res["grid_size"] == 2 and res["linear_protocol"] == "ibot" and res["feature_dim"] == 3 * 96
    logs = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    accs = [logs[-1]["test_acc0@1"], logs[-1]["test_acc1@1"]]
    best_epoch_acc = max(max(r["test_acc0@1"], r["test_acc1@1"]) for r in logs)
    assert res["best_acc1"] == pytest.approx(best_epoch_acc) and res["best_lr"] in (0.0001, 5.0)
    assert f"Best: lr {res['best_lr']:g}, wd 0, optim sgd" in p.stdout and len(accs) == 2
    ck = load_checkpoint(str(full / "checkpoint.pth.tar"))
    assert {"optimizers", "schedulers", "best_acc_hidx", "best_acc_sweep_lr_only", "grid"} <= set(ck)
    assert set(ck["state_dict"]) == {f"module.heads.{g}.linear.{p}" for g in (0, 1) for p in ("weight", "bias")}
    assert (full / "checkpoint_teacher_linear.pth").is_file()
    other = list(flags)
    i = other.index("--lrs")
    other[i + 1:i + 3] = ["0.1"]
    bad = _run(other + ["--epochs", "3", "--output_dir", str(full)])
    assert bad.returncode == 2 and "another sweep grid" in bad.stderr and "Traceback" not in bad.stderr


def test_lr_sweep_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    sys.path.insert(0, ROOT)
    from ssvit.cli import linear as eval_linear
    w = _weights(tmp_path, patch_size=4, img_size=32)
    flags = BASE + ["--pretrained_weights", w, "--cache_features", "true", "--lr_sweep", "true",
                    "--lrs", "0.01", "1", "--sweep_lr_only", "false", "--epochs", "3"]
    eval_linear.main(flags + ["--output_dir", str(tmp_path / "full")])
    from interrupt_helpers import run_eval_linear_killed_in_epoch
    run_eval_linear_killed_in_epoch(monkeypatch, flags + ["--output_dir", str(tmp_path / "part")], epoch=1,
                                    threads=torch.get_num_threads())
    assert load_checkpoint(str(tmp_path / "part" / "checkpoint.pth.tar"))["epoch"] == 1
    # iBOT-style resume from an explicit file into a fresh directory
    eval_linear.main(flags + ["--output_dir", str(tmp_path / "resumed"),
                              "--load_from", str(tmp_path / "part" / "checkpoint.pth.tar")])
    a = load_checkpoint(str(tmp_path / "full" / "checkpoint.pth.tar"))
    b = load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pth.tar"))
    assert a["epoch"] == b["epoch"] == 3 and len(a["grid"]) == 8 and a["best_acc"] == b["best_acc"]
    assert a["best_acc_hidx"] == b["best_acc_hidx"] and a["best_acc_sweep_lr_only"] == b["best_acc_sweep_lr_only"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    lars = [o for o, (_, _, name) in zip(a["optimizers"], a["grid"]) if name == "lars"]
    assert len(lars) == 4 and all("mu" in st for o in lars for st in o["state"].values())


def test_esvit_cfg_swin_linear_probe_and_comma_keys(tmp_path):
    from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
    kw = backbone_kwargs_from_cfg("swin_tiny", load_esvit_config(SWIN_CFG))
    w = _weights(tmp_path, "swin_tiny", **kw)
    out = tmp_path / "swin"
    p = _run(["--arch", "swin_tiny", "--cfg", SWIN_CFG, "--pretrained_weights", w, "--dataset", "synthetic",
              "--synthetic_size", "32", "--eval_size", "28", "--num_labels", "10", "--batch_size_per_gpu", "16",
              "--num_workers", "0", "--print_freq", "0", "--epochs", "1", "--cache_features", "true",
              "--checkpoint_key", "teacher,student", "--output_dir", str(out), "MODEL.NUM_CLASSES", "0"])
    assert p.returncode == 0, p.stderr[-2000:]
    for key in ("teacher", "student"):
        res = json.loads((out / key / "results.json").read_text())
        # swin_fmnist: depths 2-2-2, C 48-96-192; 4 last blocks = 2 x 96 (raw) + 2 x 192 (normed)
        assert res["linear_protocol"] == "esvit" and res["feature_dim"] == 576 and res["checkpoint_key"] == key
    assert "Linear probe on the 'esvit' feature: 576 dims" in p.stdout


def test_bad_protocol_flags_are_one_line_errors(tmp_path, capsys):
    sys.path.insert(0, ROOT)
    from ssvit.cli import linear as eval_linear
    w = _weights(tmp_path, patch_size=4, img_size=32)
    for extra, msg in ((["--avgpool_patchtokens", "2"], "a boolean"),
                       (["--linear_protocol", "dino", "--avgpool_patchtokens", "true"], "needs --n_last_blocks 1"),
                       (["--lrs", "0.1"], "--lrs is the grid"),
                       (["--lr_sweep", "true", "--evaluate"], "does not combine"),
                       (["--window_size", "7"], "swin_"),
                       (["--load_from", str(tmp_path / "nope")], "does not exist")):
        status = eval_linear.cli(BASE + ["--pretrained_weights", w, "--output_dir", str(tmp_path / "o")] + extra)
        err = capsys.readouterr().err
        assert status == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err[-1500:])


def test_feature_width_is_measured_for_models_whose_output_is_not_num_features():
    m = create_backbone("sit_pico", img_size=16, num_classes=0).eval()  # SiT-v1: both SSL tokens, 2 x 96
    assert feature_dim(m, 4, 0, "dino", probe_size=16) == 192 == LinearFeatures(m, "dino", 4, 0)(torch.randn(1, 3, 16, 16)).shape[1]
