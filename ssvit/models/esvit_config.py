"""EsViT's YAML model configs (``--cfg FILE`` plus trailing ``KEY VALUE`` overrides).

EsViT builds Swin / CvT / ViL from a yacs config: ``MODEL.SPEC`` holds the architecture,
``TRAIN.IMAGE_SIZE`` the nominal resolution, ``BASE: [files]`` inherits (paths relative to the
file), and command-line ``KEY VALUE`` pairs (e.g. ``MODEL.SPEC.MSVIT.ARCH 'l1,h3,...'``) override
entries. Here the config is a plain nested dict; each backbone module maps ``MODEL.SPEC`` to its
constructor kwargs with its own ``spec_to_kwargs``.
"""
from __future__ import annotations

import ast
import importlib
import os
from typing import Any, Sequence

import yaml

#: arch-name prefix -> module with the backbone family's ``spec_to_kwargs``
FAMILIES = {"swin": "ssvit.models.swin_transformer", "cvt": "ssvit.models.cvt", "vil": "ssvit.models.vision_longformer"}


def is_multistage(arch: str) -> bool:
    return any(arch.startswith(p) for p in FAMILIES)


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def _parse_value(text: Any) -> Any:
    """yacs' rule: a Python literal when it parses as one, else the string itself."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


#: the keys of EsViT's ``config/default.py`` (``_C``) with their defaults' types: a ``KEY VALUE`` override must
#: name one of these or a key of the ``--cfg`` files (yacs' ``merge_from_list`` raises "Non-existent key"
#: otherwise -- ``new_allowed`` nodes such as ``MODEL.SPEC`` accept new keys from files, not from overrides)
YACS_DEFAULTS: dict[str, type] = {
    **dict.fromkeys(["BASE", "GPUS", "MODEL.PRETRAINED_LAYERS", "DATASET.TRAIN_TSV_LIST", "DATASET.TEST_TSV_LIST",
                     "DATASET.COCO.SCALES", "INPUT.MEAN", "INPUT.STD", "AUG.COLOR_JITTER", "AUG.DROPBLOCK_LAYERS",
                     "AUG.MIXCUT_MINMAX", "TRAIN.WITHOUT_WD_LIST", "TRAIN.IMAGE_SIZE", "TEST.IMAGE_SIZE",
                     "FINETUNE.FROZEN_LAYERS", "AUG.SCALE", "AUG.RATIO"], list),
    **dict.fromkeys(["NAME", "DATA_DIR", "DIST_BACKEND", "OUTPUT_DIR", "AMP.MEMORY_FORMAT", "MODEL.NAME",
                     "MODEL.PRETRAINED", "LOSS.LOSS", "DATASET.ROOT", "DATASET.DATASET", "DATASET.TRAIN_SET",
                     "DATASET.TEST_SET", "DATASET.DATA_FORMAT", "DATASET.LABELMAP", "DATASET.LOADER",
                     "DATASET.SAMPLER", "DATASET.NUM_SAMPLES_CLASS", "AUG.MIXUP_MODE", "SWA.DEVICE",
                     "SWA.ANNEAL_STRATEGY", "TRAIN.CHECKPOINT", "TRAIN.OPTIMIZER", "TEST.MODEL_FILE",
                     "TEST.VALID_LABELS", "FINETUNE.LR_SCHEDULER.DECAY_TYPE"], str),
    **dict.fromkeys(["MULTIPROCESSING_DISTRIBUTED", "PIN_MEMORY", "VERBOSE", "MODEL_SUMMARY", "AMP.ENABLED",
                     "CUDNN.BENCHMARK", "CUDNN.DETERMINISTIC", "CUDNN.ENABLED", "MODEL.INIT_WEIGHTS",
                     "LOSS.FOCAL.NORMALIZE", "DATASET.COCO.BALANCE_DATA", "AUG.MIXCUT_AND_MIXUP",
                     "AUG.TIMM_AUG.USE_LOADER", "AUG.TIMM_AUG.USE_TRANSFORM", "SWA.ENABLED", "SWA.FROZEN_BN",
                     "TRAIN.AUTO_RESUME", "TRAIN.NESTEROV", "TRAIN.SHUFFLE", "TRAIN.LARC", "TRAIN.DETECT_ANOMALY",
                     "TRAIN.SAVE_ALL_MODELS", "TEST.CENTER_CROP", "TEST.REAL_LABELS", "FINETUNE.FINETUNE",
                     "FINETUNE.USE_TRAIN_AUG", "FINETUNE.TRAIN_MODE", "DEBUG.DEBUG"], bool),
    **dict.fromkeys(["PRINT_FREQ", "RANK", "WORKERS", "MODEL.NUM_CLASSES", "DATASET.TARGET_SIZE",
                     "AUG.DROPBLOCK_BLOCK_SIZE", "AUG.INTERPOLATION", "SWA.BEGIN_EPOCH", "SWA.ANNEAL_EPOCHS",
                     "TRAIN.BEGIN_EPOCH", "TRAIN.END_EPOCH", "TRAIN.BATCH_SIZE_PER_GPU", "TEST.BATCH_SIZE_PER_GPU",
                     "TEST.INTERPOLATION", "FINETUNE.BATCH_SIZE", "FINETUNE.EVAL_EVERY"], int),
    **dict.fromkeys(["LOSS.LABEL_SMOOTHING", "LOSS.FOCAL.ALPHA", "LOSS.FOCAL.GAMMA", "AUG.GRAY_SCALE",
                     "AUG.GAUSSIAN_BLUR", "AUG.DROPBLOCK_KEEP_PROB", "AUG.MIXUP_PROB", "AUG.MIXUP", "AUG.MIXCUT",
                     "AUG.MIXUP_SWITCH_PROB", "SWA.LR_RATIO", "TRAIN.LR", "TRAIN.MOMENTUM", "TRAIN.WD",
                     "TRAIN.GAMMA1", "TRAIN.GAMMA2", "TRAIN.EMA_DECAY", "TRAIN.EVAL_BEGIN_EPOCH",
                     "TRAIN.CLIP_GRAD_NORM", "FINETUNE.BASE_LR"], float),
}


def _lookup(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_override(cfg: dict, key: str, value: Any) -> None:
    """yacs' ``merge_from_list`` rules: the key exists (the files' or the defaults'); the value keeps the
    type of the one it replaces (a list and a tuple stand for each other)."""
    if key.startswith("-"):
        raise ValueError(f"'{key}' comes after the KEY VALUE overrides, which take the rest of the command line (as "
                         "in EsViT's argparse REMAINDER): put the flags before the overrides")
    found, old = _lookup(cfg, key)
    if not found and key not in YACS_DEFAULTS:
        raise ValueError(f"config override '{key}': non-existent key (not in EsViT's defaults nor in the --cfg files)")
    kind = type(old) if found and old is not None else YACS_DEFAULTS.get(key)
    if kind is None or isinstance(value, kind) or (kind in (list, tuple) and isinstance(value, (list, tuple))):
        return
    if kind is float and type(value) is int:  # YAML writes 1.0 as 1 in some files: yacs would refuse; say so
        raise ValueError(f"config override '{key} {value}': type mismatch, {kind.__name__} expected (write {value}.0)")
    raise ValueError(f"config override '{key} {value!r}': type mismatch, {kind.__name__} expected "
                     f"(got {type(value).__name__})")


def load_esvit_config(path: str, opts: Sequence[str] = (), _seen: tuple = ()) -> dict:
    """Nested dict of ``path`` with its ``BASE`` files merged first and ``opts`` applied last.

    Raises ``ValueError`` for a missing file, a non-mapping YAML, an inheritance cycle, overrides that
    are not KEY VALUE pairs, an override of a key that exists neither in EsViT's defaults nor in the
    files, one whose value changes the type, and a ``--flag`` that argparse's REMAINDER put among them.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--cfg file '{path}' does not exist")
    if path in _seen:
        raise ValueError(f"--cfg: BASE inheritance cycle through '{path}'")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--cfg file '{path}' must hold a mapping")
    cfg: dict = {}
    for base in data.get("BASE", []) or []:
        if base:
            _merge(cfg, load_esvit_config(os.path.join(os.path.dirname(path), base), (), _seen + (path,)))
    _merge(cfg, {k: v for k, v in data.items() if k != "BASE"})
    opts = list(opts or [])
    flag = next((o for o in opts if str(o).startswith("--")), None)
    if flag is not None:
        _check_override(cfg, flag, None)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        _check_override(cfg, key, _parse_value(value))
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config override '{key}': '{part}' is not a section")
        node[parts[-1]] = _parse_value(value)
    return cfg


def backbone_kwargs_from_cfg(arch: str, cfg: dict) -> dict:
    """Constructor kwargs of ``arch``'s family from an EsViT config: ``MODEL.SPEC`` through the
    family's ``spec_to_kwargs``, ``img_size`` from ``TRAIN.IMAGE_SIZE[0]`` (default 224)."""
    family = next((mod for prefix, mod in FAMILIES.items() if arch.startswith(prefix)), None)
    if family is None:
        raise ValueError(f"--cfg applies to Swin / CvT / ViL archs, not '{arch}'")
    spec = (cfg.get("MODEL") or {}).get("SPEC") or {}
    kwargs = dict(importlib.import_module(family).spec_to_kwargs(spec))
    if "patch_size" in kwargs:  # the factories ignore the CLI's (ViT) --patch_size; a config's is honoured
        kwargs["cfg_patch_size"] = kwargs.pop("patch_size")
    size = (cfg.get("TRAIN") or {}).get("IMAGE_SIZE")
    if size:
        kwargs["img_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
    return kwargs
