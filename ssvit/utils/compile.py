"""``--compile``: torch.compile (TorchInductor) of the training task's networks, with a persistent cache.

What is compiled: each direct child of the student and of the teacher (``backbone``, ``head``, SERE's
relation heads...), in place with ``nn.Module.compile`` -- so parameter names, ``state_dict`` keys
and checkpoints stay exactly those of the eager modules. The Python glue around them (multi-crop
grouping by resolution, masks, the loss and its cross-rank centre update, the optimizer, EMA) stays
eager: it is a small share of the step and holds the collectives that graph capture would split.

Inductor's FX-graph and AOT-autograd caches are on, in ``cache_dir`` (``TORCHINDUCTOR_CACHE_DIR``
when set; default ``~/.cache/ssvit/inductor``), so a re-run of the same configuration loads the
compiled kernels instead of generating and building them again. ``compile_seconds()`` reads
Dynamo's own timers: the seconds spent tracing and compiling (cache lookups included), reported
apart from the training time.

Numerics: Inductor fuses and reorders floating-point work, so compiled outputs equal eager ones
within float tolerance, not bit for bit (tested on a tiny model); ``--compile false`` (the default)
runs the eager modules untouched. Random ops inside compiled graphs (drop-path, dropout) draw from
Inductor's own generator, so with ``--drop_path_rate > 0`` the random streams differ from eager.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import torch.nn as nn

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "ssvit", "inductor")


def configure_cache(cache_dir: Optional[str] = None) -> str:
    """Point Inductor's on-disk caches at ``cache_dir`` (created) and make sure they are on; returns
    the folder used. A ``TORCHINDUCTOR_CACHE_DIR`` set in the environment wins over the default (not
    over an explicit ``cache_dir``), unless it holds Inductor's own default folder."""
    path = cache_dir or _cache_dir_from_environment() or DEFAULT_CACHE_DIR
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    # the cache dir is read lazily from the environment, but a run that compiled before may have
    # memoised the old location
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir as _cache_dir
        _cache_dir.cache_clear()
    except (ImportError, AttributeError):
        pass
    return path


def _cache_dir_from_environment() -> Optional[str]:
    """The user's ``TORCHINDUCTOR_CACHE_DIR``. Inductor writes its own default (``/tmp/torchinductor_$USER``)
    into that variable the first time anything asks for its cache folder -- importing timm's models
    is enough -- so that value is read as unset: otherwise the persistent default above would never
    be used and the cache would live in /tmp."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not value:
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return value
    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


def compile_children(modules: Iterable[Optional[nn.Module]], **compile_kwargs) -> list[str]:
    """``nn.Module.compile`` each direct child of each module (in place: names and state-dict keys
    unchanged); returns the dotted names compiled. Children without parameters (Identity) are left."""
    done = []
    for prefix, module in modules:
        if module is None:
            continue
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        for name, child in module.named_children():
            if any(True for _ in child.parameters()):
                child.compile(**compile_kwargs)
                done.append(f"{prefix}.{name}")
    return done


def compile_task(method: nn.Module, cache_dir: Optional[str] = None, mode: Optional[str] = None) -> list[str]:
    """Compile the student's and the teacher's sub-networks of a training task (``ssvit.engine.task.TrainingTask``)."""
    configure_cache(cache_dir)
    # one static graph per crop resolution: multi-crop calls the backbone at 2 sizes, and by default the
    # second size would recompile it with dynamic shapes (slower kernels for every size)
    kwargs = {"dynamic": False, **({"mode": mode} if mode else {})}
    return compile_children([("student", method.student), ("teacher", getattr(method, "teacher", None))], **kwargs)


def compile_seconds() -> float:
    """Seconds this process has spent in Dynamo tracing + Inductor compilation so far (cache hits
    count only their lookup)."""
    import torch._dynamo.utils as dynamo_utils
    total = 0.0
    for key, times in dynamo_utils.compilation_time_metrics.items():
        if key in ("_compile.compile_inner", "compile_inner"):
            total += sum(times)
    return total
