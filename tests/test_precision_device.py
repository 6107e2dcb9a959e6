"""GPU code paths emulated on CPU: collectives on the backend's device, the mixed-precision policy
and its fp32 islands (CPU autocast), the device choice (mocked CUDA), eval_knn's --use_cuda."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssvit.engine import distributed as edist
from ssvit.utils import metrics
from ssvit.models.heads import DINOHead, WeightNormLinear
from ssvit.objectives import DINOLoss
from ssvit.utils import distributed as udist
from ssvit.utils.precision import select_amp_dtype


class _Reached(Exception):
    pass


def test_metric_sync_hands_the_collective_a_tensor_on_the_backend_device(monkeypatch):
    """A process group that rejects CPU tensors, as NCCL does ('meta' stands in for the GPU)."""
    seen = []

    def nccl_like_all_reduce(t, *a, **k):
        if t.device.type != "meta":
            raise RuntimeError(f"No backend type associated with device type {t.device.type}")
        seen.append(t.shape)
        raise _Reached

    monkeypatch.setattr(metrics, "is_dist", lambda: True)
    monkeypatch.setattr(metrics, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(torch.distributed, "all_reduce", nccl_like_all_reduce)
    logger = metrics.MetricLogger()
    logger.update(loss=1.0, lr=0.5)
    with pytest.raises(_Reached):
        logger.synchronize_between_processes()
    assert seen == [torch.Size([4])]  # one all-reduce for all meters: (count, total) x 2


def test_collective_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert udist.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "gloo")
    assert udist.collective_device() == torch.device("cpu")


def test_all_reduce_flags_without_process_group_is_identity():
    assert udist.all_reduce_flags(True, False) == [True, False]


# ------------------------------------------------------------------ precision policy
@pytest.mark.parametrize("native,amp,expected", [
    (True, "fp16", torch.float16), (False, "fp16", torch.float16),
    (True, "auto", torch.bfloat16), (False, "auto", torch.float16),  # emulated bf16 is not chosen
    (True, "bf16", torch.bfloat16),
])
def test_amp_dtype_choice(monkeypatch, native, amp, expected):
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return native or including_emulation  # emulation always "supported", as on V100 / T4

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert select_amp_dtype(torch.device("cuda", 0), True, amp) == expected
    assert all(c is False for c in calls)


def test_amp_default_is_fp16_and_cpu_is_fp32():
    from ssvit.cli.pretrain import get_args_parser
    args = get_args_parser([]).parse_args([])
    assert args.amp_dtype == "fp16" and args.use_fp16 is True
    assert select_amp_dtype(torch.device("cpu"), True, args.amp_dtype) is None
    assert select_amp_dtype(torch.device("cuda", 0), False, "fp16") is None


def test_bf16_on_emulating_gpu_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert select_amp_dtype(torch.device("cuda", 0), True, "bf16") == torch.bfloat16


def test_trainstep_uses_a_gradscaler_for_fp16_only():
    from ssvit.engine.step import TrainStep
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    assert TrainStep(None, lin, opt, device=torch.device("cpu"), amp_dtype=torch.float16).scaler is not None
    assert TrainStep(None, lin, opt, device=torch.device("cpu"), amp_dtype=torch.bfloat16).scaler is None
    assert TrainStep(None, lin, opt, device=torch.device("cpu"), amp_dtype=None).scaler is None


def _peaky(n=8, k=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3 + 20 * F.one_hot(torch.randint(0, k, (n,), generator=g), k)


def test_prototype_layer_is_fp32_under_bf16_autocast_only():
    torch.manual_seed(0)
    layer = WeightNormLinear(32, 1024)
    x = torch.randn(4, 32)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    with torch.autocast("cpu", dtype=torch.float16):  # fp16: the originals' numerics, no island
        assert layer(x).dtype == torch.float16
    head = DINOHead(16, 256, nlayers=2, hidden_dim=32, bottleneck_dim=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(3, 16)).dtype == torch.float32


def test_dino_loss_and_centering_are_fp32_under_bf16_autocast():
    s, t = _peaky(8, 4096, 0), _peaky(4, 4096, 1)
    ref_loss = DINOLoss(4096, 4, 0.04, 0.04, 0, 10)
    loss_ref = ref_loss(s, t, 0)
    bf = DINOLoss(4096, 4, 0.04, 0.04, 0, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf = bf(s.bfloat16(), t.bfloat16(), 0)  # bf16 head outputs (e.g. a bf16 last layer)
    assert loss_bf.dtype == torch.float32 and bf.center.dtype == torch.float32
    # the island computes in fp32 from the bf16-rounded inputs: the same as fp32 on those inputs
    exact = DINOLoss(4096, 4, 0.04, 0.04, 0, 10)
    assert torch.equal(loss_bf, exact(s.bfloat16().float(), t.bfloat16().float(), 0))
    assert torch.equal(bf.center, exact.center)
    assert math.isfinite(loss_ref.item())


# ------------------------------------------------------------------ device choice
def _fake_gpus(monkeypatch, count=1, usable=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    def probe(index):
        if not usable:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB (GPU 0; 79.1 GiB in use)")
    monkeypatch.setattr(edist, "probe_cuda", probe)


def test_device_auto_falls_back_to_cpu_when_the_gpu_is_not_usable(monkeypatch):
    _fake_gpus(monkeypatch, usable=False)
    with pytest.warns(UserWarning, match="GPU 0 is not usable .*CUDA out of memory.*: running on the CPU"):
        assert edist.resolve_device("auto") == torch.device("cpu")


def test_device_auto_uses_a_usable_gpu(monkeypatch):
    _fake_gpus(monkeypatch, count=2)
    assert edist.resolve_device("auto", 1, distributed=True) == torch.device("cuda", 1)


def test_unusable_gpu_under_a_launcher_or_asked_for_is_an_error(monkeypatch):
    _fake_gpus(monkeypatch, usable=False)
    with pytest.raises(edist.DeviceError, match="GPU 0 is not usable: CUDA out of memory"):
        edist.resolve_device("auto", 0, distributed=True)
    with pytest.raises(edist.DeviceError, match="not usable"):
        edist.resolve_device("cuda")


def test_local_rank_beyond_the_visible_gpus_takes_local_rank_modulo_the_count(monkeypatch):
    """A cluster that binds one GPU per task: every task sees GPU 0 only (the originals' rank % count)."""
    _fake_gpus(monkeypatch, count=1)
    with pytest.warns(UserWarning, match="LOCAL_RANK 1 but 1 GPU.*using GPU 0"):
        assert edist.resolve_device("auto", 1, distributed=True) == torch.device("cuda", 0)
    _fake_gpus(monkeypatch, count=2)
    with pytest.warns(UserWarning, match="LOCAL_RANK 3 but 2 GPU.*using GPU 1"):
        assert edist.resolve_device("cuda", 3, distributed=True) == torch.device("cuda", 1)


@pytest.mark.parametrize("env,expected", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (3, 8, 1)),                       # torchrun
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1)),  # srun
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}, None),  # plain python in an sbatch script
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, None),        # srun -n 1
    ({}, None),
])
def test_launcher_env_finds_torchrun_and_srun_steps_not_a_plain_process_in_a_batch_job(env, expected):
    assert edist.launcher_env(env) == expected


def test_a_plain_python_in_a_multi_task_batch_job_is_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    info = edist.init_distributed("cpu")
    assert info.world_size == 1 and not torch.distributed.is_initialized()


def test_srun_step_without_a_rendezvous_address_is_one_line(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    with pytest.raises(edist.DeviceError, match="rank 1 of 2: MASTER_ADDR / MASTER_PORT are not set"):
        edist.init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--dist_timeout must be > 0"):
        edist.init_distributed("cpu", timeout_minutes=0)


def test_process_group_gets_the_timeout_and_under_nccl_the_device(monkeypatch):
    """init_process_group is called with --dist_timeout and, under NCCL, device_id = this rank's GPU."""
    import datetime
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
    monkeypatch.setattr(edist, "setup_for_distributed", lambda is_master: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    info = edist.init_distributed("cpu", timeout_minutes=2.5)
    assert calls[-1]["backend"] == "gloo" and calls[-1]["device_id"] is None
    assert calls[-1]["timeout"] == datetime.timedelta(minutes=2.5) and (info.rank, info.world_size) == (1, 2)
    _fake_gpus(monkeypatch, count=2)
    info = edist.init_distributed("auto")
    assert calls[-1]["backend"] == "nccl" and calls[-1]["device_id"] == torch.device("cuda", 1)
    assert calls[-1]["timeout"] == datetime.timedelta(minutes=edist.DEFAULT_TIMEOUT_MINUTES)


def test_eval_knn_use_cuda_false_keeps_extraction_on_the_gpu(monkeypatch):
    """--use_cuda false keeps only the feature bank and the k-NN on the CPU (the original's
    meaning): the extraction device is the process's device, chosen with 'auto'."""
    from ssvit.cli import knn as eval_knn
    asked, used = [], []
    fake_gpu = torch.device("meta")  # stands in for cuda:0

    def init_distributed(device, url, timeout_minutes=None):
        asked.append(device)
        return edist.DistInfo(device=fake_gpu)

    def pipeline(args, device):
        used.append(device)
        f = F.normalize(torch.randn(20, 8), dim=1)
        return f, f[:6], torch.arange(20) % 2, torch.arange(6) % 2

    monkeypatch.setattr(eval_knn, "init_distributed", init_distributed)
    monkeypatch.setattr(eval_knn, "extract_feature_pipeline", pipeline)
    res = eval_knn.main(["--use_cuda", "false", "--nb_knn", "3", "--pretrained_weights", "x"])
    assert asked == ["auto"] and used == [fake_gpu] and 3 in res
