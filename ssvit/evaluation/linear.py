"""Linear probing on frozen features (Caron et al. 2021, facebookresearch/dino ``eval_linear.py``;
Zhou et al. 2022, bytedance/ibot ``eval_linear.py`` / ``eval_linear_multi.py``; Li et al. 2022,
microsoft/esvit ``eval_linear.py``).

* ``LinearClassifier(dim, num_labels)``: flatten, one ``nn.Linear``, weight ~ N(0, 0.01^2), bias 0
  (keys ``linear.weight`` / ``linear.bias``; DDP adds ``module.``). ``ClassifierBank``: several of
  them on the same features (iBOT's learning-rate sweep), ``forward`` -> a list of logits.
* ``LinearFeatures(model, protocol, n_last_blocks, avgpool_patchtokens)``: the frozen feature
  (B, dim) of each original script:

  - ``dino``: ViTs concatenate the normalised CLS tokens of the last ``n`` blocks, (B, n*D); with
    ``avgpool_patchtokens`` (0/1) the CLS features and the mean patch token of the last block are
    **interleaved** element by element -- ``[cls_0, avg_0, cls_1, avg_1, ...]``, the original's
    ``unsqueeze(-1)`` / ``cat(dim=-1)`` / ``reshape`` (QUIRK kept: the released ViT-B linear weights
    expect that order; as there, it needs ``n_last_blocks = 1``). Other backbones: ``model(x)``.
  - ``ibot``: ``avgpool_patchtokens`` 0 = the CLS tokens of the last ``n`` blocks; 1 = the mean of the
    last block's patch tokens **without** the final norm (iBOT builds the model with
    ``use_mean_pooling``, whose ``norm`` is Identity), (B, D); 2 = the CLS tokens then the mean
    normalised patch token, ``[cls_1..cls_n, avg]`` (not interleaved). Multi-stage backbones: the
    per-block pooled features of the last ``n`` blocks (Swin-T n=4 -> 2304).
  - ``esvit``: every backbone's ``forward_return_n_last_blocks(x, n, avgpool)``: ViT
    ``[cls_1..cls_n (, avg)]``; Swin / CvT / ViL the average-pooled outputs of the last ``n`` blocks
    counted over all stages (last-stage ones final-normed); dims Swin ``sum(num_features[-n:])``.

* ``train_one_epoch`` / ``validate``: SGD steps on the frozen features; the validation reports
  top-1 / top-5 weighted by batch size and the loss as the plain mean of the batch-mean cross
  entropies, as the original's ``MetricLogger``. With a ``ClassifierBank`` every classifier gets the
  same batches and its own optimiser; the meters are iBOT's ``loss{g}``, ``lr{g}``, ``acc{g}@1``,
  ``acc{g}@5``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbone import Backbone, has_last_blocks, is_token_model
from ..utils.metrics import MetricLogger, accuracy

PROTOCOLS = ("dino", "ibot", "esvit")


class LinearClassifier(nn.Module):
    """Linear layer to train on top of frozen features. Input (B, ...) -> logits (B, num_labels)."""

    def __init__(self, dim: int, num_labels: int = 1000):
        super().__init__()
        self.num_labels = num_labels
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.view(x.size(0), -1))


class ClassifierBank(nn.Module):
    """``n`` independent ``LinearClassifier`` on the same input: (B, dim) -> [logits (B, num_labels)] * n.
    One backward of the summed losses gives each classifier the gradient of its own loss."""

    def __init__(self, dim: int, num_labels: int, n: int):
        super().__init__()
        self.num_labels = num_labels
        self.heads = nn.ModuleList(LinearClassifier(dim, num_labels) for _ in range(n))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]


class RawPixels(Backbone):
    """The raw-pixel baseline as a "backbone": the (normalised) image flattened, (B, C*H*W)."""

    has_last_blocks = False

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.num_features = channels * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def num_blocks(model: nn.Module) -> Optional[int]:
    if is_token_model(model):
        return len(model.blocks)
    depths = getattr(model, "depths", None)
    return int(sum(depths)) if depths is not None else None


def default_protocol(model: nn.Module) -> str:
    """``esvit`` for multi-stage backbones (Swin / CvT / ViL: their n-last-blocks rule), else ``dino``."""
    return "dino" if is_token_model(model) or not has_last_blocks(model) else "esvit"


def parse_avgpool(value, protocol: str) -> int:
    """``--avgpool_patchtokens``: a boolean for DINO and EsViT (``false/true/0/1/off/on``), iBOT's
    integer 0, 1 or 2 for ``ibot``."""
    if isinstance(value, bool):
        return int(value)
    s = str(value).strip().lower()
    if protocol == "ibot":
        if s not in ("0", "1", "2"):
            raise ValueError(f"--avgpool_patchtokens is 0, 1 or 2 with --linear_protocol ibot, got {value!r}")
        return int(s)
    if s in ("0", "false", "off"):
        return 0
    if s in ("1", "true", "on"):
        return 1
    raise ValueError(f"--avgpool_patchtokens is a boolean with --linear_protocol {protocol}, got {value!r} "
                     "(iBOT's 0/1/2 need --linear_protocol ibot)")


class LinearFeatures(nn.Module):
    """The frozen feature of ``model`` for the linear head, (B, C, H, W) -> (B, dim), per ``protocol``
    (see the module doc). Runs under ``no_grad``; ``model`` stays as it is (eval mode is the caller's)."""

    def __init__(self, model: nn.Module, protocol: str = "dino", n_last_blocks: int = 4,
                 avgpool_patchtokens: int = 0):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"--linear_protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.model, self.protocol = model, protocol
        self.n, self.avgpool = int(n_last_blocks), int(avgpool_patchtokens)
        check_feature_flags(model, self.n, self.avgpool, protocol)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n, avgpool = self.model, self.n, self.avgpool
        if not is_token_model(m):
            if self.protocol == "dino" or not has_last_blocks(m):
                return m(x)
            return m.forward_last_blocks(x, n, bool(avgpool))
        prefix = m.num_prefix_tokens
        if self.protocol == "esvit":
            return m.forward_last_blocks(x, n, bool(avgpool))
        if self.protocol == "ibot" and avgpool == 1:
            return m.forward_intermediates(x, 1, norm=False)[-1][:, prefix:].mean(dim=1)
        out = m.forward_intermediates(x, n)
        feats = torch.cat([o[:, 0] for o in out], dim=-1)
        if avgpool == 0:
            return feats
        avg = out[-1][:, prefix:].mean(dim=1)
        if self.protocol == "ibot":  # avgpool 2: [cls_1..cls_n, avg]
            return torch.cat([feats, avg], dim=-1)
        return torch.cat((feats.unsqueeze(-1), avg.unsqueeze(-1)), dim=-1).reshape(feats.shape[0], -1)


def linear_features(model: nn.Module, x: torch.Tensor, n_last_blocks: int = 4, avgpool_patchtokens: int = 0,
                    protocol: str = "dino") -> torch.Tensor:
    """Frozen features of ``x`` (B, C, H, W) for the linear head (see the module doc)."""
    return LinearFeatures(model, protocol, n_last_blocks, avgpool_patchtokens)(x)


def feature_dim(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: int, protocol: str = "dino",
                probe_size: int = 224) -> int:
    """Width of ``LinearFeatures``: DINO / EsViT ``D * (n + avgpool)``, iBOT
    ``D * (n * [avgpool != 1] + [avgpool > 0])``; backbones without CLS-token blocks: measured with one
    ``probe_size`` image (per-block widths, SiT's two tokens)."""
    if is_token_model(model):
        n, a = n_last_blocks, int(avgpool_patchtokens)
        if protocol == "ibot":
            return model.embed_dim * (n * int(a != 1) + int(a > 0))
        return model.embed_dim * (n + int(a > 0))
    if isinstance(model, RawPixels):
        return model.num_features
    # anything else is measured: ``num_features`` need not be the width of ``model(x)`` (SiT-v1's
    # evaluation feature is its two SSL tokens, 2 x num_features)
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, probe_size, probe_size, device=p.device if p is not None else "cpu")
    was = model.training
    model.eval()
    try:
        return int(LinearFeatures(model, protocol, n_last_blocks, avgpool_patchtokens)(x).shape[1])
    finally:
        model.train(was)


def check_feature_flags(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: int,
                        protocol: str = "dino") -> None:
    if n_last_blocks < 1:
        raise ValueError(f"--n_last_blocks must be >= 1, got {n_last_blocks}")
    if avgpool_patchtokens not in ((0, 1, 2) if protocol == "ibot" else (0, 1)):
        raise ValueError(f"--avgpool_patchtokens {avgpool_patchtokens} is not valid with --linear_protocol {protocol}")
    total = num_blocks(model)
    uses_blocks = is_token_model(model) or (protocol != "dino" and has_last_blocks(model))
    if uses_blocks and total is not None and n_last_blocks > total:
        raise ValueError(f"--n_last_blocks {n_last_blocks} exceeds the {total} blocks of the model")
    if protocol == "dino" and is_token_model(model) and avgpool_patchtokens and n_last_blocks != 1:
        raise ValueError("--avgpool_patchtokens true needs --n_last_blocks 1 with DINO's protocol (the original "
                         "interleaves the CLS features with the mean patch token element by element); "
                         "--linear_protocol esvit or ibot concatenate instead")


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _num_labels(classifier: nn.Module) -> int:
    return getattr(classifier, "module", classifier).num_labels


def train_one_epoch(features: Optional[nn.Module], classifier: nn.Module, optimizer, loader, device,
                    print_freq: int = 20, header: str = "") -> dict:
    """One epoch of SGD on the classifier(s); ``features`` None means the loader yields cached
    features. ``optimizer``: one, or a list parallel to a ``ClassifierBank``'s heads. Returns
    ``{"loss", "lr"}`` for one classifier, iBOT's ``{"loss{g}", "lr{g}"}`` for a bank."""
    classifier.train()
    optimizers = _as_list(optimizer)
    bank = len(optimizers) > 1 or isinstance(getattr(classifier, "module", classifier), ClassifierBank)
    logger = MetricLogger()
    for i, (inp, target, *_) in enumerate(loader):
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        feats = inp if features is None else features(inp)
        losses = [F.cross_entropy(out, target) for out in _as_list(classifier(feats))]
        for opt in optimizers:
            opt.zero_grad()
        sum(losses).backward()
        for opt in optimizers:
            opt.step()
        if bank:
            logger.update(**{f"loss{g}": l.item() for g, l in enumerate(losses)})
        else:
            logger.update(loss=losses[0].item())
        if print_freq and i % print_freq == 0:
            best = min(l.item() for l in losses)
            print(f"{header}  [{i}/{len(loader)}]  loss: {best:.4f}{' (lowest)' if bank else ''}  "
                  f"lr: {optimizers[0].param_groups[0]['lr']:.6f}")
    logger.synchronize_between_processes()
    avgs = logger.global_avgs()
    if not bank:
        return {"loss": avgs.get("loss", 0.0), "lr": optimizers[0].param_groups[0]["lr"]}
    stats = {f"loss{g}": avgs.get(f"loss{g}", 0.0) for g in range(len(optimizers))}
    stats.update({f"lr{g}": opt.param_groups[0]["lr"] for g, opt in enumerate(optimizers)})
    return stats


@torch.no_grad()
def validate(features: Optional[nn.Module], classifier: nn.Module, loader, device, verbose: bool = True) -> dict:
    """Top-1 / top-5 (batch-size weighted, percent) and the loss (mean over batches of the batch-mean
    cross entropy); prints the original's ``* Acc@1 X Acc@5 Y loss Z`` line (no Acc@5 with fewer
    than 5 labels). A ``ClassifierBank`` gives ``acc{g}@1`` / ``acc{g}@5`` / ``loss{g}`` per head
    (and prints the best head's line)."""
    classifier.eval()
    logger = MetricLogger()
    num_labels = _num_labels(classifier)
    with_top5 = num_labels >= 5
    bank = isinstance(getattr(classifier, "module", classifier), ClassifierBank)
    for inp, target, *_ in loader:
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        feats = inp if features is None else features(inp)
        b = inp.shape[0]
        for g, output in enumerate(_as_list(classifier(feats))):
            accs = accuracy(output, target, topk=(1, 5) if with_top5 else (1,))
            tag = str(g) if bank else ""
            logger.meters[f"loss{tag}"].update(F.cross_entropy(output, target).item())
            logger.meters[f"acc{tag}@1"].update(accs[0].item(), n=b)
            if with_top5:
                logger.meters[f"acc{tag}@5"].update(accs[1].item(), n=b)
    logger.synchronize_between_processes()
    avgs = logger.global_avgs()
    if bank:
        g = max(range(len(classifier_heads(classifier))), key=lambda j: avgs[f"acc{j}@1"])
        line = {"acc1": avgs[f"acc{g}@1"], "acc5": avgs.get(f"acc{g}@5"), "loss": avgs[f"loss{g}"]}
    else:
        line = {"acc1": avgs["acc@1"], "acc5": avgs.get("acc@5"), "loss": avgs["loss"]}
    if verbose:
        if with_top5:
            print(f"* Acc@1 {line['acc1']:.3f} Acc@5 {line['acc5']:.3f} loss {line['loss']:.3f}")
        else:
            print(f"* Acc@1 {line['acc1']:.3f} loss {line['loss']:.3f}")
    if bank:
        return dict(avgs)
    return {k: v for k, v in line.items() if v is not None}


def classifier_heads(classifier: nn.Module) -> list[nn.Module]:
    bare = getattr(classifier, "module", classifier)
    return list(bare.heads) if isinstance(bare, ClassifierBank) else [bare]


def sweep_grid(sweep_lr_only: bool = True, lrs: Optional[Sequence[float]] = None) -> list[tuple[float, float, str]]:
    """iBOT ``eval_linear_multi.py``'s grid of (lr per 256 images, weight decay, optimiser):
    ``lrs = [b * m for b in (1e-4, 1e-3, 1e-2, 1e-1, 1) for m in 1..9]`` (45 values) x ``wds = [0]``
    x ``['sgd']`` when ``sweep_lr_only``, else x ``[0, 1e-6]`` x ``['sgd', 'lars']``; ``lrs`` replaces
    the learning rates."""
    if lrs is None:
        lrs = [b * m for b in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) for m in range(1, 10)]
    wds = [0.0] if sweep_lr_only else [0.0, 1e-6]
    optims = ["sgd"] if sweep_lr_only else ["sgd", "lars"]
    return [(float(lr), wd, o) for lr in lrs for wd in wds for o in optims]


def build_head_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """iBOT's per-classifier optimiser: SGD or LARS (DINO's), momentum 0.9."""
    if name == "sgd":
        return torch.optim.SGD(params, lr, momentum=0.9, weight_decay=weight_decay)
    if name == "lars":
        from ..utils.lars import LARS
        return LARS(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimiser {name!r} (sgd or lars)")


@torch.no_grad()
def cache_features(features: nn.Module, loader, device):
    """(features float32 (N, dim), labels int64 (N,)) of every sample, in dataset order, on the CPU
    (every rank gets the whole set, as ``extract_features``)."""
    from .knn import extract_features
    return extract_features(features, loader, device, return_labels=True)
