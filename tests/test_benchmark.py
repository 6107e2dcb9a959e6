"""tools/benchmark.py: it times the engine's step (clip 0 means no clipping), counts attention
FLOPs on CPU, labels the precision it used and knows each chip's peak."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import benchmark  # noqa: E402

TINY = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
        "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
        "--batch_size_per_gpu", "2", "--device", "cpu", "--warmup_iters", "0", "--iters", "1"]


@pytest.mark.parametrize("name,amp,tf32,peak", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, True, 989.4),
    ("NVIDIA H100 PCIe", torch.float16, True, 756.0),
    ("NVIDIA H100 NVL", torch.bfloat16, True, 835.0),
    ("NVIDIA H200", torch.bfloat16, True, 989.4),
    ("NVIDIA A100-SXM4-80GB", torch.float16, True, 312.0),
    ("NVIDIA A100-SXM4-80GB", None, True, 156.0),
    ("NVIDIA A100-SXM4-80GB", None, False, 19.5),
    ("Tesla V100-SXM2-32GB", torch.float16, True, 125.0),
    ("Some Future GPU", torch.float16, True, None),
])
def test_peak_table(name, amp, tf32, peak):
    assert benchmark.peak_tflops(name, amp, tf32) == peak


def test_precision_label_names_the_dtype_used():
    cuda = torch.device("cuda", 0)
    assert benchmark.precision_label(cuda, torch.float16, True) == "fp16 autocast + GradScaler"
    assert benchmark.precision_label(cuda, torch.bfloat16, True) == "bf16 autocast"
    assert benchmark.precision_label(cuda, None, True) == "fp32 (tf32 matmuls)"
    assert benchmark.precision_label(torch.device("cpu"), None, True) == "fp32"


def test_clip_grad_zero_means_no_clipping():
    torch.manual_seed(0)
    args = benchmark.parse_with_config(benchmark.get_args_parser(TINY[:-6]), TINY[:-6] + ["--clip_grad", "0"])
    method, step = benchmark.build(args, torch.device("cpu"), original=False)
    images = benchmark.make_batch(method, args, torch.device("cpu"))
    before = [p.detach().clone() for p in method.student.parameters()]
    seen = []
    orig_step = step.optimizer.step

    def spy():
        seen.append(sum(float(p.grad.abs().sum()) for p in method.student.parameters() if p.grad is not None))
        return orig_step()
    step.optimizer.step = spy
    r = step(images, 0, 0, 0.996)
    assert r.stepped and seen and seen[0] > 0  # gradients reach the optimizer un-zeroed
    assert any(not torch.equal(a, b) for a, b in zip(before, method.student.parameters()))


def test_benchmark_counts_attention_flops_on_cpu(capsys):
    res = benchmark.main(TINY + ["--compare_original"])
    out = capsys.readouterr().out
    assert "fp32, CPU" in out and "speed-up ssvit / original code paths" in out
    flops = res["ssvit"]["model_tflop_per_iter"] * 1e12
    assert flops == res["original_code_paths"]["model_tflop_per_iter"] * 1e12
    # the same step counted with SDPA (which the counter sees as 0 FLOPs on CPU) is smaller by the
    # attention matmuls: 2 (QK^T, AV) x 2 flops x B x heads x N^2 x head_dim, x3 with backward
    args = benchmark.parse_with_config(benchmark.get_args_parser(TINY[:-6]), TINY[:-6])
    method, step = benchmark.build(args, torch.device("cpu"), original=False)
    images = benchmark.make_batch(method, args, torch.device("cpu"))
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step(images, 0, 0, 0.996)
    bb = method.student.backbone
    heads, dim, depth = bb.blocks[0].attn.num_heads, bb.embed_dim, len(bb.blocks)
    attn = 0
    for side, n_crops, teacher in ((16, 2, True), (8, 2, False)):
        n = (side // 4) ** 2 + 1
        fwd = 2 * 2 * 2 * heads * n * n * (dim // heads) * depth * n_crops  # batch 2
        attn += 3 * fwd + (fwd if teacher else 0)  # student fwd+bwd; teacher forward only
    assert flops - fc.get_total_flops() == pytest.approx(attn, rel=1e-6)


def test_baseline_epoch_is_the_original_loop(tmp_path):
    """--baseline: one epoch of the re-created main_dino.py loop on a generated ImageFolder writes a finite
    checkpoint; its per-parameter EMA loop equals the engine's foreach update."""
    data = benchmark.sample_image_folder(str(tmp_path / "data"), n=8, size=(40, 30))
    argv = ["--arch", "vit_pico", "--patch_size", "8", "--global_crops_size", "32", "--local_crops_size", "16",
            "--local_crops_number", "1", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
            "--batch_size_per_gpu", "4", "--num_workers", "0", "--epochs", "1", "--data_path", data,
            "--output_dir", str(tmp_path / "out")]
    res = benchmark.main(["--baseline"] + argv)
    assert res["loop_seconds"] > 0
    ck = torch.load(str(tmp_path / "out" / "checkpoint.pth"), weights_only=False)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["teacher"].values() if v.is_floating_point())
    assert any(not torch.equal(ck["student"][k], ck["teacher"][k]) for k in ck["student"])
    args = benchmark.parse_with_config(benchmark.get_args_parser(argv), argv)
    benchmark.fix_random_seeds(args.seed)  # the baseline's initial weights: the EMA loop moved the teacher off them
    init = benchmark.get_method("dino")(args).teacher.state_dict()
    assert any(not torch.equal(init[k], ck["teacher"][k]) for k in init if init[k].is_floating_point())
    method = benchmark.get_method("dino")(args)
    for p in method.student.parameters():
        p.data.add_(torch.randn_like(p))
    ref = [p.detach().clone() for p in method.teacher.parameters()]
    for pk, pq in zip(ref, method.student.parameters()):
        pk.mul_(0.9).add_((1 - 0.9) * pq.detach())
    method.update_teacher(0.9)
    for a, b in zip(ref, method.teacher.parameters()):
        torch.testing.assert_close(a, b)


def test_compile_flag_compiles_the_ssvit_step_only(monkeypatch):
    """--compile true compiles ssvit's sub-networks (static shapes, one graph per crop size); the
    original code paths it is compared with stay eager."""
    import ssvit.utils.compile as compile_mod
    calls = []
    monkeypatch.setattr(compile_mod, "compile_task", lambda method, cache_dir=None: calls.append((method, cache_dir)))
    argv = TINY[:-6] + ["--compile", "true", "--compile_cache_dir", "/tmp/x"]
    args = benchmark.parse_with_config(benchmark.get_args_parser(argv), argv)
    method, _ = benchmark.build(args, torch.device("cpu"), original=False)
    assert calls == [(method, "/tmp/x")]
    benchmark.build(args, torch.device("cpu"), original=True)
    assert len(calls) == 1


def test_compile_task_asks_for_static_shapes(monkeypatch, tmp_path):
    from ssvit.utils import compile as compile_mod
    seen = {}
    monkeypatch.setattr(compile_mod, "compile_children", lambda modules, **kw: seen.update(kw) or [])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    task = torch.nn.Module()
    task.student = torch.nn.Linear(2, 2)
    compile_mod.compile_task(task, str(tmp_path / "c"))
    assert seen == {"dynamic": False}


def test_measured_matmul_peak_is_a_plausible_rate(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: float(next(clock)))  # each matmul "takes" 1 s
    assert benchmark.measured_matmul_tflops(torch.device("cpu"), None, n=64, repeats=2) == pytest.approx(2 * 64 ** 3 / 1e12)


def test_batched_augmentation_batch_is_the_crops_the_step_takes():
    args = benchmark.parse_with_config(benchmark.get_args_parser(TINY[:-6]), TINY[:-6] + ["--augmentation", "batched"])
    method, _ = benchmark.build(args, torch.device("cpu"), original=False)
    images = benchmark.make_batch(method, args, torch.device("cpu"))
    assert [tuple(t.shape) for t in images] == [(2, 3, 16, 16)] * 2 + [(2, 3, 8, 8)] * 2
    assert all(t.dtype == torch.float32 for t in images)
