"""Weighted k-NN (ssvit.evaluation.knn) and the eval_knn.py script, on tiny CPU data."""
from __future__ import annotations

import argparse
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from ssvit.evaluation.knn import extract_features, knn_classifier, knn_eval_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Six training points on the unit circle and four queries; neighbours worked out by hand below.
TRAIN_DEG, TRAIN_Y = [0, 60, -60, 180, 90, 150], [0, 1, 1, 2, 3, 2]
TEST_DEG, TEST_Y = [0, 170, 100, -100], [0, 2, 3, 0]


def _hand_data():
    return (torch.tensor([_unit(d) for d in TRAIN_DEG]), torch.tensor(TRAIN_Y),
            torch.tensor([_unit(d) for d in TEST_DEG]), torch.tensor(TEST_Y))


@pytest.mark.parametrize("k,T,expected", [
    # k=3, T=1: q0 neighbours 0deg(y0, s=1), +-60deg(y1, s=.5 each): e^1=2.72 < 2e^.5=3.30 -> predicts 1 (wrong),
    # 0 is 2nd (top5 hit). q1 -> {180:y2 .985, 150:y2 .940, 90:y3 .174} -> 2 ok. q2 -> {90:y3 .985, 60:y1 .766,
    # 150:y2 .643} -> 3 ok. q3 -> {-60:y1 .766, 180:y2 .174, 0:y0 -.174} -> 1 (wrong), 0 ranked 3rd (top-min(5,3) hit).
    (3, 1.0, (50.0, 100.0)),
    # T=0.07 sharpens the weights: q0 now predicts 0 (e^14.3 > 2e^7.1); q3 still wrong.
    (3, 0.07, (75.0, 100.0)),
    # k=2: q0 {0:y0, 60/-60:y1} -> 0 ok; q3 {-60:y1, 180:y2} -> wrong and 0 not in the first min(5,2)=2 ranks.
    (2, 1.0, (75.0, 75.0)),
    (1, 0.07, (75.0, 75.0)),
])
def test_knn_hand_example(k, T, expected):
    xtr, ytr, xte, yte = _hand_data()
    top1, top5 = knn_classifier(xtr, ytr, xte, yte, k, T)
    assert top1 == pytest.approx(expected[0]) and top5 == pytest.approx(expected[1])


def _naive_knn(xtr, ytr, xte, yte, k, T, num_classes):
    """Independent re-implementation: python loops, classes ranked by (-score, class index)."""
    top1 = top5 = 0
    for x, y in zip(xte.tolist(), yte.tolist()):
        sims = [(sum(a * b for a, b in zip(x, t)), j) for j, t in enumerate(xtr.tolist())]
        sims.sort(key=lambda s: -s[0])
        score = [0.0] * num_classes
        for s, j in sims[:k]:
            score[int(ytr[j])] += math.exp(s / T)
        ranking = sorted(range(num_classes), key=lambda c: (-score[c], c))
        top1 += ranking[0] == y
        top5 += y in ranking[:min(5, k)]
    return 100.0 * top1 / len(yte), 100.0 * top5 / len(yte)


def test_knn_matches_naive_loop_and_chunking_does_not_matter():
    g = torch.Generator().manual_seed(0)
    xtr = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    xte = F.normalize(torch.randn(23, 8, generator=g, dtype=torch.float64), dim=1)
    ytr, yte = torch.randint(0, 7, (40,), generator=g), torch.randint(0, 7, (23,), generator=g)
    seen = set()
    for k in (1, 3, 4, 10):
        for T in (0.07, 0.5):
            ref = _naive_knn(xtr, ytr, xte, yte, k, T, 7)
            seen.add(ref)
            for chunk in (1, 5, 23, 1000):  # < 100 test images works; any chunk size, same numbers
                assert knn_classifier(xtr, ytr, xte, yte, k, T, chunk_size=chunk) == pytest.approx(ref)
    assert len(seen) > 3  # the cases really differ


def test_knn_num_classes_default_and_checks():
    xtr, ytr, xte, yte = _hand_data()
    big = 1500  # the original's hard-coded 1000 classes would fail here
    res = knn_classifier(xtr, ytr + big, xte, yte + big, 3, 1.0)
    assert res == pytest.approx((50.0, 100.0))
    assert knn_classifier(xtr, ytr, xte, yte, 3, 1.0, num_classes=10) == pytest.approx(res)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classifier(xtr, ytr, xte, yte, 3, 1.0, num_classes=3)
    with pytest.raises(ValueError, match="k="):
        knn_classifier(xtr, ytr, xte, yte, 7, 1.0)


class _IndexedTensors(torch.utils.data.Dataset):
    def __init__(self, n=13, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 4, 4, generator=g)
        self.targets = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i], i


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5)).eval()


def test_extract_features_index_order():
    ds, model = _IndexedTensors(), _tiny_model()
    # A loader that visits the dataset in reverse: rows must still come back in index order.
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=list(range(len(ds)))[::-1])
    feats, labels = extract_features(model, loader, "cpu", return_labels=True)
    assert feats.dtype == torch.float32 and feats.shape == (13, 5)
    with torch.no_grad():
        torch.testing.assert_close(feats, model(ds.x))
    assert labels.tolist() == ds.targets
    # Incomplete coverage is an error, not silently zero rows.
    partial = torch.utils.data.DataLoader(ds, batch_size=4, sampler=list(range(10)))
    with pytest.raises(RuntimeError, match="received no feature"):
        extract_features(model, partial, "cpu")


def _dist_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ds, model = _IndexedTensors(), _tiny_model()
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=False)  # pads 13 -> 14
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler)
    feats, labels = extract_features(model, loader, "cpu", return_labels=True)
    torch.save({"feats": feats, "labels": labels}, os.path.join(out_dir, f"rank{rank}.pth"))
    dist.destroy_process_group()


def test_extract_features_distributed_gloo(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ds, model = _IndexedTensors(), _tiny_model()
    with torch.no_grad():
        ref = model(ds.x)
    for rank in range(2):  # every rank gets the full matrix in index order
        out = torch.load(tmp_path / f"rank{rank}.pth", weights_only=True)
        torch.testing.assert_close(out["feats"], ref)
        assert out["labels"].tolist() == ds.targets


def test_knn_eval_sizes():
    assert knn_eval_sizes("imagefolder") == (256, 224)
    assert knn_eval_sizes("imagefolder", 112) == (128, 112)
    assert knn_eval_sizes("flowers102") == (256, 224)
    assert knn_eval_sizes("cifar10") == (32, 32)
    assert knn_eval_sizes("fashion_mnist") == (28, 28)
    assert knn_eval_sizes("stl10", 64) == (64, 64)
    assert knn_eval_sizes("synthetic") == (32, 32)


# --------------------------------------------------------------------------- eval_knn.py end to end
sys.path.insert(0, ROOT)


def _pico(img_size=32, seed=0):
    from ssvit.models import create_backbone
    torch.manual_seed(seed)
    return create_backbone("vit_pico", patch_size=4, num_classes=0, img_size=img_size).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A DINO-layout full checkpoint (teacher != student), plus backbone-only / iBOT / wrong-arch files."""
    from ssvit.models import DINOHead, create_backbone
    d = tmp_path_factory.mktemp("ckpt")
    teacher, student = _pico(seed=1), _pico(seed=2)
    head = DINOHead(96, 64, hidden_dim=32, bottleneck_dim=16)
    t_sd = {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()}}
    s_sd = {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            **{f"module.head.{k}": v for k, v in head.state_dict().items()}}
    full = {"student": s_sd, "teacher": t_sd, "epoch": 1,
            "args": argparse.Namespace(arch="vit_pico", patch_size=4, out_dim=64, lr=0.0005),
            "dino_loss": {"center": torch.zeros(1, 64)}}
    paths = {"full": d / "checkpoint.pth", "backbone": d / "backbone.pth", "ibot": d / "ibot.pth",
             "tiny": d / "tiny.pth"}
    torch.save(full, paths["full"])
    torch.save(teacher.state_dict(), paths["backbone"])
    torch.save({"state_dict": teacher.state_dict()}, paths["ibot"])
    torch.save(create_backbone("vit_tiny", patch_size=4, num_classes=0, img_size=32).state_dict(), paths["tiny"])
    return {k: str(v) for k, v in paths.items()} | {"teacher": teacher, "student": student}


def _args(weights, *extra):
    return ["--dataset", "synthetic", "--synthetic_size", "40", "--arch", "vit_pico", "--patch_size", "4",
            "--pretrained_weights", weights, "--use_cuda", "false", "--num_workers", "0",
            "--batch_size_per_gpu", "16", "--nb_knn", "1", "5", "20", "100", *extra]


def _synthetic_batch(n):
    from ssvit.data.datasets import build_dataset
    from ssvit.data.transforms import eval_transform
    ds, tf = build_dataset("synthetic", None, train=True, synthetic_size=40), eval_transform(32, 32)
    return torch.stack([tf(ds[i][0]) for i in range(n)])


def test_eval_knn_full_checkpoint_dump_and_reload(ckpts, tmp_path, capsys):
    from ssvit.cli import knn as eval_knn
    dump = tmp_path / "feats" / "sub"  # created if missing
    res = eval_knn.main(_args(ckpts["full"], "--checkpoint_key", "teacher", "--dump_features", str(dump)))
    out = capsys.readouterr().out
    assert sorted(res) == [1, 5, 20]  # k=100 > 40 training images is skipped with a message
    assert "Skipping k=100" in out
    for k, (top1, top5) in res.items():
        assert f"{k}-NN classifier result: Top1: {top1}, Top5: {top5}" in out
        assert 0.0 <= top1 <= top5 <= 100.0
    assert res[1][0] == res[1][1]  # k=1: top-5 looks at one rank only

    feats = {n: torch.load(dump / f"{n}.pth", weights_only=True)
             for n in ("trainfeat", "testfeat", "trainlabels", "testlabels")}
    assert feats["trainfeat"].shape == (40, 96) and feats["testfeat"].shape == (10, 96)
    assert feats["trainfeat"].dtype == feats["testfeat"].dtype == torch.float32
    assert feats["trainlabels"].dtype == feats["testlabels"].dtype == torch.int64
    assert feats["trainlabels"].tolist() == [i % 10 for i in range(40)]
    torch.testing.assert_close(feats["trainfeat"].norm(dim=1), torch.ones(40))
    torch.testing.assert_close(feats["testfeat"].norm(dim=1), torch.ones(10))
    assert not list(dump.glob("*.tmp"))
    # The teacher's weights were loaded (not the student's): features equal the teacher's own.
    x = _synthetic_batch(4)
    with torch.no_grad():
        t, s = F.normalize(ckpts["teacher"](x), dim=1), F.normalize(ckpts["student"](x), dim=1)
    torch.testing.assert_close(feats["trainfeat"][:4], t, atol=1e-5, rtol=1e-4)
    assert (feats["trainfeat"][:4] - s).abs().max() > 1e-2
    # Results from the features themselves (computed independently of the script).
    assert knn_classifier(feats["trainfeat"], feats["trainlabels"], feats["testfeat"], feats["testlabels"],
                          20, 0.07) == pytest.approx(res[20])

    # --load_features gives the same numbers without a model or data.
    again = eval_knn.main(["--load_features", str(dump), "--nb_knn", "1", "5", "20", "--use_cuda", "false"])
    assert again == res


@pytest.mark.parametrize("which", ["backbone", "ibot"])
def test_eval_knn_backbone_only_and_ibot_files(ckpts, tmp_path, which):
    from ssvit.cli import knn as eval_knn
    dump = tmp_path / which
    eval_knn.main(_args(ckpts[which], "--dump_features", str(dump)))
    f = torch.load(dump / "trainfeat.pth", weights_only=True)
    with torch.no_grad():
        t = F.normalize(ckpts["teacher"](_synthetic_batch(2)), dim=1)
    torch.testing.assert_close(f[:2], t, atol=1e-5, rtol=1e-4)


def test_eval_knn_wrong_architecture_fails_listing_keys(ckpts, capsys):
    from ssvit.cli import knn as eval_knn
    rc = eval_knn.cli(_args(ckpts["tiny"]))
    err = capsys.readouterr().err
    assert rc == 2
    assert "unexpected keys" in err and "blocks.4." in err  # vit_tiny has 12 blocks, vit_pico 4
    assert "shape mismatches" in err and "cls_token" in err  # D=192 vs 96
    assert "Traceback" not in err


def test_eval_knn_empty_weights_and_missing_data_fail_clearly(ckpts, capsys, tmp_path):
    from ssvit.cli import knn as eval_knn
    rc = eval_knn.cli(_args(""))
    err = capsys.readouterr().err
    assert rc == 2 and "--pretrained_weights is required" in err and "Traceback" not in err
    rc = eval_knn.cli(_args(ckpts["full"], "--dataset", "imagefolder", "--data_path", str(tmp_path / "nowhere")))
    err = capsys.readouterr().err
    assert rc == 2 and "nowhere" in err and "does not exist" in err
    rc = eval_knn.cli(["--load_features", str(tmp_path / "nothing"), "--use_cuda", "false"])
    assert rc == 2 and "trainfeat.pth" in capsys.readouterr().err


def test_eval_knn_imagefolder(ckpts, tmp_path):
    """data_path/train and data_path/val in ImageFolder order, eval_size 16 (resize round(16*256/224)=18)."""
    import numpy as np
    from PIL import Image
    from ssvit.cli import knn as eval_knn
    for split, n in (("train", 3), ("val", 2)):
        for c, colour in enumerate(((250, 10, 10), (10, 10, 250))):
            os.makedirs(tmp_path / "data" / split / f"class{c}")
            for i in range(n):
                arr = np.clip(np.array(colour) + np.random.default_rng(i).normal(0, 5, (20, 24, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "data" / split / f"class{c}" / f"{i}.png")
    dump = tmp_path / "f"
    res = eval_knn.main(["--dataset", "imagefolder", "--data_path", str(tmp_path / "data"), "--eval_size", "16",
                         "--arch", "vit_pico", "--patch_size", "4", "--pretrained_weights", ckpts["full"],
                         "--use_cuda", "false", "--num_workers", "0", "--nb_knn", "1", "3",
                         "--dump_features", str(dump)])
    assert torch.load(dump / "trainlabels.pth", weights_only=True).tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.load(dump / "testlabels.pth", weights_only=True).tolist() == [0, 0, 1, 1]
    assert res[1] == (100.0, 100.0)  # red vs blue images: trivially separable


def test_raw_pixel_features():
    from ssvit.evaluation.knn import build_knn_datasets, raw_pixel_features
    train, test = build_knn_datasets(argparse.Namespace(dataset="synthetic", data_path=None, synthetic_size=20))
    x, y = raw_pixel_features(train, return_labels=True)
    assert x.shape == (20, 3 * 32 * 32) and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=1), torch.ones(20))
    torch.testing.assert_close(x[3], F.normalize(train[3][0].flatten(), dim=0))
    assert y.tolist() == [i % 10 for i in range(20)]
    assert len(test) == 10


def test_build_eval_backbone_keys_and_grid(ckpts, tmp_path):
    from ssvit.evaluation.knn import build_eval_backbone, checkpoint_img_size
    student = build_eval_backbone("vit_pico", 4, ckpts["full"], "student")  # module.backbone.* keys
    assert not student.training
    for k, v in ckpts["student"].state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)
    # the model is built on the checkpoint's pos-embed grid: no load-time resampling
    assert checkpoint_img_size(ckpts["full"], "teacher", 4) == 32
    default = tmp_path / "default.pth"
    torch.save(_pico(img_size=224).state_dict(), default)
    assert checkpoint_img_size(str(default), "teacher", 4) == 224
    assert checkpoint_img_size("", "teacher", 4) is None


def test_knn_similarity_dtype_runs_the_matmul_in_that_precision():
    xtr, ytr, xte, yte = _hand_data()
    # well-separated neighbours: bf16 similarities give the fp32 result
    for k, T in ((3, 1.0), (3, 0.07), (2, 1.0)):
        assert knn_classifier(xtr, ytr, xte, yte, k, T, similarity_dtype=torch.bfloat16) == \
            pytest.approx(knn_classifier(xtr, ytr, xte, yte, k, T))
    # two neighbours 5e-4 apart in cosine: fp32 ranks class 1 first; in bf16 (spacing 2^-8 below 1) both
    # similarities round to 1.0, the votes tie and the stable ranking puts class 0 first
    q = torch.tensor([[1.0, 0.0]])
    train = torch.tensor([[0.9985, math.sqrt(1 - 0.9985 ** 2)], [0.9990, -math.sqrt(1 - 0.9990 ** 2)]])
    labels = torch.tensor([0, 1])
    assert knn_classifier(train, labels, q, torch.tensor([1]), 2, 0.07)[0] == 100.0
    assert knn_classifier(train, labels, q, torch.tensor([1]), 2, 0.07, similarity_dtype=torch.bfloat16)[0] == 0.0
    assert knn_classifier(train, labels, q, torch.tensor([0]), 2, 0.07, similarity_dtype=torch.bfloat16)[0] == 100.0


def test_eval_knn_half_precision_without_a_gpu_and_bad_chunk_fail_in_one_line(tmp_path, capsys):
    from ssvit.cli import knn as eval_knn
    for flags, msg in ((["--knn_dtype", "bf16"], "--knn_dtype bf16 is for a GPU"),
                       (["--knn_chunk_size", "0"], "--knn_chunk_size must be >= 1")):
        rc = eval_knn.cli(["--load_features", str(tmp_path / "never_read"), "--use_cuda", "false", *flags])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert eval_knn.knn_similarity_dtype("auto", torch.device("cpu")) is None
    assert eval_knn.knn_similarity_dtype("fp32", torch.device("cpu")) is None


@pytest.mark.parametrize("flags, expected", [
    # iBOT's eval_knn.py features (its linear protocol): CLS of the last 2 blocks, then the mean normed patch token
    (["--n_last_blocks", "2", "--avgpool_patchtokens", "2"],
     lambda blocks, raw: torch.cat([blocks[-2][:, 0], blocks[-1][:, 0], blocks[-1][:, 1:].mean(1)], dim=1)),
    # 1: the mean patch token without the final norm (iBOT's use_mean_pooling makes norm an Identity)
    (["--avgpool_patchtokens", "1"], lambda blocks, raw: raw[-1][:, 1:].mean(1)),
    # iBOT's defaults (n 1, avgpool 0) are DINO's feature: the final-normed CLS
    (["--n_last_blocks", "1", "--avgpool_patchtokens", "0"], lambda blocks, raw: blocks[-1][:, 0]),
])
def test_eval_knn_takes_ibots_feature_flags(ckpts, tmp_path, flags, expected):
    from ssvit.cli import knn as eval_knn
    dump = tmp_path / "f"
    eval_knn.main(_args(ckpts["backbone"], "--dump_features", str(dump), *flags))
    f = torch.load(dump / "trainfeat.pth", weights_only=True)
    m, x = ckpts["teacher"], _synthetic_batch(3)
    with torch.no_grad():  # by hand: run the blocks one by one
        t = m.prepare_tokens(x)
        raw, normed = [], []
        for blk in m.blocks:
            t = blk(t)
            raw.append(t)
            normed.append(m.norm(t))
    torch.testing.assert_close(f[:3], F.normalize(expected(normed, raw), dim=1), atol=1e-5, rtol=1e-4)


def test_eval_knn_window_size_is_for_swin_only(ckpts, capsys):
    from ssvit.cli import knn as eval_knn
    assert eval_knn.cli(_args(ckpts["backbone"], "--window_size", "7")) == 2
    assert "--window_size applies to swin_* archs" in capsys.readouterr().err
