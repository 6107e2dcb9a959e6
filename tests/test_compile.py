"""``--compile`` (torch.compile of the task's sub-networks) and ``--retain_host_memory`` on CPU."""
import ctypes
import ctypes.util
import os
import sys

import pytest
import torch

from ssvit.utils.compile import compile_children, compile_seconds, configure_cache
from ssvit.utils.host_memory import retain_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = ["--dataset", "synthetic", "--synthetic_size", "16", "--arch", "vit_pico", "--patch_size", "4",
        "--global_crops_size", "16", "--local_crops_size", "8", "--local_crops_number", "1", "--out_dim", "32",
        "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--batch_size_per_gpu", "8", "--num_workers", "0",
        "--tensorboard", "false", "--drop_path_rate", "0", "--lr", "0.005", "--epochs", "1", "--max_iters", "2",
        "--device", "cpu", "--save_every_minutes", "0"]


def train(out, *flags):
    from ssvit.cli.pretrain import get_args_parser, make_trainer
    from ssvit.config import parse_with_config
    argv = TINY + ["--output_dir", str(out), *flags]
    trainer = make_trainer(parse_with_config(get_args_parser(argv), argv))
    trainer.fit()
    trainer.save(0, trainer.iters_this_run)
    from ssvit.utils.checkpoint import load_checkpoint
    return trainer, load_checkpoint(str(out / "checkpoint.pth"))


def test_compiled_training_equals_eager_within_float_tolerance_and_keeps_checkpoint_keys(tmp_path):
    cache = tmp_path / "inductor"
    # global crops only: one input shape per sub-network, so Inductor compiles each graph once (the
    # local-crop shape doubled the compile time, the suite's largest item)
    one_shape = ("--local_crops_number", "0")
    eager_trainer, eager = train(tmp_path / "eager", "--compile", "false", *one_shape)
    assert eager_trainer.compiled == []
    trainer, compiled = train(tmp_path / "compiled", "--compile", "true", "--compile_cache_dir", str(cache), *one_shape)
    assert trainer.compiled == ["student.backbone", "student.head", "teacher.backbone", "teacher.head"]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and any(cache.iterdir())  # kernels cached on disk
    assert trainer.compile_seconds > 0
    # the modules really run compiled (Dynamo wrapped their call), and the state-dict layout is the eager one
    assert trainer.method.student.backbone._compiled_call_impl is not None
    for key in ("student", "teacher"):
        assert list(compiled[key]) == list(eager[key])
        for k, v in eager[key].items():
            if v.is_floating_point():
                torch.testing.assert_close(compiled[key][k], v, rtol=1e-4, atol=2e-5, msg=f"{key}.{k}")
    # the comparison is not vacuous: the two steps moved the student away from the (EMA) teacher,
    # which starts as its copy
    moved = [k for k, v in eager["teacher"].items() if not torch.equal(v, eager["student"]["module." + k])]
    assert "backbone.blocks.0.attn.qkv.weight" in moved and "head.mlp.0.weight" in moved


def test_compile_children_compiles_in_place_and_skips_parameterless_children():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Identity(), torch.nn.Linear(4, 2))
    keys = list(net.state_dict())
    x = torch.randn(5, 3)
    ref = net(x)
    done = compile_children([("net", net)])
    assert done == ["net.0", "net.2"]
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), ref)
    assert compile_seconds() > 0


def test_configure_cache_prefers_the_explicit_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "env"))
    assert configure_cache(None) == str(tmp_path / "env")
    assert configure_cache(str(tmp_path / "flag")) == str(tmp_path / "flag") and (tmp_path / "flag").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "flag")


def test_configure_cache_reads_inductors_own_default_as_unset(tmp_path, monkeypatch):
    # Inductor puts /tmp/torchinductor_$USER into the variable itself once anything imports its cache
    # helpers (timm's model imports do): that must not displace the persistent default
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    import ssvit.utils.compile as compile_utils
    monkeypatch.setattr(compile_utils, "DEFAULT_CACHE_DIR", str(tmp_path / "persistent"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert configure_cache(None) == str(tmp_path / "persistent") and (tmp_path / "persistent").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "persistent")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_retained_host_memory_serves_large_tensors_from_the_heap():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    assert retain_freed_memory()
    before = libc.mallinfo2().hblkhd
    t = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB: above glibc's largest mmap threshold
    t.fill_(1)
    assert libc.mallinfo2().hblkhd - before < (64 << 20)  # not an mmapped block: the heap holds it
    del t
    assert libc.mallinfo2().fordblks >= (64 << 20)  # and, freed, it stays in the heap for the next iteration
