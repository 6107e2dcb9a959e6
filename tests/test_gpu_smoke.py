"""scripts/gpu_smoke.sh in its CPU mode (tiny sizes, Gloo for NCCL), so the GPU script cannot rot."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_smoke_script_passes_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OUT=str(tmp_path / "smoke"))
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_smoke.sh"), "--device", "cpu"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=580)
    out = p.stdout
    assert p.returncode == 0 and "[smoke] all checks passed" in out, out[-4000:] + p.stderr[-2000:]
    for name in ("device_auto", "torchrun_epochs", "amp_fp16", "amp_bf16", "amp_fp32", "sigterm_stop",
                 "sigterm_resume", "nonfinite", "knn_use_cuda_false", "submitit_local", "ibot_torchrun",
                 "batched_aug_fused_koleo", "sit_step", "sit_v2_step", "relvit_step", "video_segmentation",
                 "ipace_segmentation",
                 "segmentation_metrics", "segmentation_on_device", "bench_dino_fp16", "knn_speed"):
        assert f"[smoke] {name}: ok" in out, name
    assert "speed-up ssvit / original code paths" in out
