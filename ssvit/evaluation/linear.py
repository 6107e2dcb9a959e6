"""Linear probing on frozen features (Caron et al. 2021, facebookresearch/dino ``eval_linear.py``).

* ``LinearClassifier(dim, num_labels)``: flatten, one ``nn.Linear``, weight ~ N(0, 0.01^2), bias 0
  (keys ``linear.weight`` / ``linear.bias``; DDP adds ``module.``).
* ``linear_features(model, x, n_last_blocks, avgpool_patchtokens)``: for ViTs the concatenation of
  the normalised CLS tokens of the last ``n`` blocks, (B, n*D); with ``avgpool_patchtokens`` the
  CLS features and the mean patch token of the last block are **interleaved** element by element
  -- ``[cls_0, avg_0, cls_1, avg_1, ...]``, the original's ``unsqueeze(-1)`` / ``cat(dim=-1)`` /
  ``reshape`` (QUIRK kept: the released ViT-B linear weights expect that order; as there, it needs
  ``n_last_blocks = 1``). Other backbones: ``model(x)``.
* ``train_one_epoch`` / ``validate``: SGD steps on the frozen features; the validation reports
  top-1 / top-5 weighted by batch size and the loss as the plain mean of the batch-mean cross
  entropies, as the original's ``MetricLogger``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class RawPixels(nn.Module):
    """The raw-pixel baseline as a "backbone": the (normalised) image flattened, (B, C*H*W)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.num_features = channels * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def is_token_model(model: nn.Module) -> bool:
    return hasattr(model, "get_intermediate_layers") and hasattr(model, "blocks")


@torch.no_grad()
def linear_features(model: nn.Module, x: torch.Tensor, n_last_blocks: int = 4,
                    avgpool_patchtokens: bool = False) -> torch.Tensor:
    """Frozen features of ``x`` (B, C, H, W) for the linear head (see the module doc)."""
    if not is_token_model(model):
        return model(x)
    out = model.get_intermediate_layers(x, n_last_blocks)
    feats = torch.cat([o[:, 0] for o in out], dim=-1)
    if avgpool_patchtokens:
        prefix = getattr(model, "num_prefix_tokens", 1)
        avg = torch.mean(out[-1][:, prefix:], dim=1)
        feats = torch.cat((feats.unsqueeze(-1), avg.unsqueeze(-1)), dim=-1).reshape(feats.shape[0], -1)
    return feats


def feature_dim(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: bool) -> int:
    if is_token_model(model):
        return model.embed_dim * (n_last_blocks + int(avgpool_patchtokens))
    return int(getattr(model, "num_features", None) or model.embed_dim)


def check_feature_flags(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: bool) -> None:
    if n_last_blocks < 1:
        raise ValueError(f"--n_last_blocks must be >= 1, got {n_last_blocks}")
    if is_token_model(model):
        if n_last_blocks > len(model.blocks):
            raise ValueError(f"--n_last_blocks {n_last_blocks} exceeds the {len(model.blocks)} blocks of the model")
        if avgpool_patchtokens and n_last_blocks != 1:
            raise ValueError("--avgpool_patchtokens true needs --n_last_blocks 1 (the original interleaves the "
                             "CLS features with the mean patch token element by element)")


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """Percentages of samples whose target is among the top-k logits, for each k (DINO's ``utils.accuracy``)."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]


class _Avg:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, v: float, n: int = 1):
        self.total += v * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / max(self.count, 1)


def _reduce(meters: dict, device: torch.device) -> None:
    from ..utils.distributed import collective_device, is_dist
    if not is_dist():
        return
    t = torch.tensor([v for m in meters.values() for v in (m.total, m.count)], dtype=torch.float64,
                     device=collective_device())
    torch.distributed.all_reduce(t)
    vals = t.tolist()
    for j, m in enumerate(meters.values()):
        m.total, m.count = vals[2 * j], int(vals[2 * j + 1])


def train_one_epoch(model: Optional[nn.Module], classifier: nn.Module, optimizer, loader, device,
                    n_last_blocks: int = 4, avgpool_patchtokens: bool = False, print_freq: int = 20,
                    header: str = "") -> dict:
    """One epoch of SGD on the classifier; ``model`` None means the loader yields cached features."""
    classifier.train()
    meters = {"loss": _Avg()}
    for i, (inp, target, *_) in enumerate(loader):
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        feats = inp if model is None else linear_features(model, inp, n_last_blocks, avgpool_patchtokens)
        loss = F.cross_entropy(classifier(feats), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        meters["loss"].update(loss.item())
        if print_freq and i % print_freq == 0:
            print(f"{header}  [{i}/{len(loader)}]  loss: {loss.item():.4f}  lr: {optimizer.param_groups[0]['lr']:.6f}")
    _reduce(meters, device)
    return {"loss": meters["loss"].avg, "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def validate(model: Optional[nn.Module], classifier: nn.Module, loader, device, n_last_blocks: int = 4,
             avgpool_patchtokens: bool = False) -> dict:
    """Top-1 / top-5 (batch-size weighted, percent) and the loss (mean over batches of the batch-mean
    cross entropy); prints the original's ``* Acc@1 X Acc@5 Y loss Z`` line (no Acc@5 with fewer
    than 5 labels)."""
    classifier.eval()
    meters = {"loss": _Avg(), "acc1": _Avg(), "acc5": _Avg()}
    num_labels = classifier.module.num_labels if hasattr(classifier, "module") else classifier.num_labels
    for inp, target, *_ in loader:
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        feats = inp if model is None else linear_features(model, inp, n_last_blocks, avgpool_patchtokens)
        output = classifier(feats)
        loss = F.cross_entropy(output, target)
        ks = (1, 5) if num_labels >= 5 else (1,)
        accs = accuracy(output, target, topk=ks)
        b = inp.shape[0]
        meters["loss"].update(loss.item())
        meters["acc1"].update(accs[0].item(), n=b)
        if num_labels >= 5:
            meters["acc5"].update(accs[1].item(), n=b)
    _reduce(meters, device)
    if num_labels >= 5:
        print(f"* Acc@1 {meters['acc1'].avg:.3f} Acc@5 {meters['acc5'].avg:.3f} loss {meters['loss'].avg:.3f}")
        return {"loss": meters["loss"].avg, "acc1": meters["acc1"].avg, "acc5": meters["acc5"].avg}
    print(f"* Acc@1 {meters['acc1'].avg:.3f} loss {meters['loss'].avg:.3f}")
    return {"loss": meters["loss"].avg, "acc1": meters["acc1"].avg}


@torch.no_grad()
def cache_features(model: nn.Module, loader, device, n_last_blocks: int, avgpool_patchtokens: bool):
    """(features float32 (N, dim), labels int64 (N,)) of every sample, in dataset order, on the CPU
    (every rank gets the whole set, as ``extract_features``)."""
    from .knn import extract_features

    class _Feats(nn.Module):
        def forward(self, x):
            return linear_features(model, x, n_last_blocks, avgpool_patchtokens)
    return extract_features(_Feats(), loader, device, return_labels=True)
