"""Weighted k-NN evaluation of frozen features (Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR 2018; as used by DINO, Caron et al., ICCV 2021,
facebookresearch/dino ``eval_knn.py``).

* ``knn_classifier``: DINO's exact weighted vote (cosine top-k, weights ``exp(s/T)``), chunked over
  the test set with a fixed chunk size (any chunk size gives the same numbers; works with < 100
  test images, unlike the original), ``num_classes`` derived from the labels by default.
* ``extract_features``: features of a whole dataset in index order, in one process or under
  ``torch.distributed`` (every rank gets the full matrix, see its docstring).
* ``build_knn_datasets``: the train/test datasets with the evaluation transform.
* ``raw_pixel_features``: the flattened-pixel baseline.

Heavy imports (torchvision, the datasets) are done lazily so that this module stays cheap to import.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..utils.distributed import collective_device

KNN_CHUNK_SIZE = 256


@torch.no_grad()
def knn_classifier(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, k: int, T: float, num_classes: Optional[int] = None,
                   chunk_size: int = KNN_CHUNK_SIZE,
                   similarity_dtype: Optional[torch.dtype] = None) -> tuple[float, float]:
    """Weighted k-NN top-1 / top-5 accuracy in percent (DINO's ``knn_classifier``).

    ``train_features`` (N_train, D) and ``test_features`` (N_test, D) should have unit rows (the
    dot product is then the cosine similarity); labels are int tensors (N_train,), (N_test,).
    For each test row: the ``k`` most similar training rows (``torch.topk``, ties as topk breaks
    them) vote for their class with weight ``exp(sim / T)``; classes are ranked by the summed votes
    (descending; equal sums keep the lower class index first, i.e. a stable sort). Top-5 looks at
    the first ``min(5, k)`` ranks. QUIRK kept from the original: when fewer than ``min(5, k)``
    classes received votes, zero-vote classes fill the remaining ranks and can count as top-5 hits.

    ``num_classes`` defaults to ``max label + 1`` (the original hard-codes 1000, which breaks for
    more labels). The test set is processed in chunks of ``chunk_size`` rows; results do not
    depend on it. Computation happens on ``train_features``' device.

    ``similarity_dtype`` (e.g. ``torch.bfloat16`` / ``torch.float16`` on a GPU) computes the cosine
    similarities in that precision: half the memory traffic of the (N_train, D) bank and tensor-core
    matmuls. The top-k and the vote stay in float32; near-ties can then rank differently, so the
    accuracy may move by a few hundredths (default ``None``: the features' own dtype, the original's
    numerics).
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("features must be 2-D (N, D)")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train/test feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}")
    n_train, n_test = train_features.shape[0], test_features.shape[0]
    if train_labels.shape[0] != n_train or test_labels.shape[0] != n_test:
        raise ValueError("number of labels does not match the number of features")
    if not 1 <= k <= n_train:
        raise ValueError(f"k={k} must be between 1 and the number of training samples ({n_train})")
    if n_test == 0:
        raise ValueError("empty test set")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    device = train_features.device
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    max_label = int(max(train_labels.max().item(), test_labels.max().item()))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(f"labels go up to {max_label} but num_classes={num_classes}")
    if min(int(train_labels.min().item()), int(test_labels.min().item())) < 0:
        raise ValueError("labels must be non-negative")

    vote_dtype = train_features.dtype if similarity_dtype is None else torch.float32
    xtr = train_features.t().to(similarity_dtype or train_features.dtype)  # (D, N_train), converted once
    top1, top5, total = 0.0, 0.0, 0
    for start in range(0, n_test, chunk_size):
        feats = test_features[start:start + chunk_size].to(device=device, dtype=xtr.dtype)
        targets = test_labels[start:start + chunk_size]
        b = targets.shape[0]
        similarity = feats @ xtr  # (b, N_train)
        distances, indices = similarity.topk(k, dim=1, largest=True, sorted=True)  # (b, k)
        distances = distances.to(vote_dtype)
        retrieved = torch.gather(train_labels.view(1, -1).expand(b, -1), 1, indices)  # (b, k)
        one_hot = torch.zeros(b * k, num_classes, device=device, dtype=vote_dtype)
        one_hot.scatter_(1, retrieved.view(-1, 1), 1)
        weights = distances.div(T).exp()  # (b, k)
        probs = (one_hot.view(b, k, num_classes) * weights.view(b, k, 1)).sum(1)  # (b, C)
        _, predictions = probs.sort(dim=1, descending=True, stable=True)
        correct = predictions.eq(targets.view(-1, 1))
        top1 += correct.narrow(1, 0, 1).sum().item()
        top5 += correct.narrow(1, 0, min(5, k, num_classes)).sum().item()
        total += b
    return top1 * 100.0 / total, top5 * 100.0 / total


# --------------------------------------------------------------------------- model
def grid_img_size(state_dict: dict, patch_size: int) -> Optional[int]:
    """Image side matching the square ``pos_embed`` grid of a backbone state dict (None if none).

    Building the evaluated ViT with this ``img_size`` (e.g. 32 for an ssvit run on 32-px crops,
    224 for DINO's releases) means the checkpoint loads without resampling and ``pos_embed`` is
    interpolated once, in the forward pass, by DINO's rule -- instead of twice (at load time to
    the default 224 grid and back again at run time).
    """
    import math
    pos = state_dict.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3 or pos.shape[1] < 2:
        return None
    prefix = 2 if "contrastive_token" in state_dict else 1  # SiT-v1: rotation + contrastive tokens
    side = math.isqrt(pos.shape[1] - prefix)
    return side * patch_size if side * side == pos.shape[1] - prefix else None


def checkpoint_img_size(path: str, checkpoint_key: Optional[str], patch_size: int) -> Optional[int]:
    """``grid_img_size`` of a checkpoint file's backbone (None for an empty path)."""
    from ..models.loading import read_pretrained_state
    return grid_img_size(read_pretrained_state(path, checkpoint_key), patch_size) if path else None


def build_eval_backbone(arch: str, patch_size: int, pretrained_weights: str, checkpoint_key: Optional[str] = "teacher",
                        device: torch.device | str = "cpu", **backbone_kwargs) -> nn.Module:
    """``create_backbone(arch, patch_size=..., num_classes=0)`` on the checkpoint's own grid, with its
    weights loaded (the file is read once), in ``eval()`` mode on ``device``; ``backbone_kwargs``
    (e.g. from an EsViT ``--cfg``) go to the constructor. Raises
    ``CheckpointError`` for an empty path (ssvit never downloads) or a checkpoint that does not
    fit (the message lists the keys); ``ValueError`` for an unknown ``arch``."""
    from ..models.loading import load_backbone_state, read_pretrained_state
    from ..models import create_backbone
    sd = read_pretrained_state(pretrained_weights, checkpoint_key)
    kwargs = dict(patch_size=patch_size, num_classes=0, **backbone_kwargs)
    img_size = grid_img_size(sd, patch_size)
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = create_backbone(arch, **kwargs)
    load_backbone_state(model, sd, arch)
    print(f"Pretrained weights found at {pretrained_weights} and loaded with key '{checkpoint_key}'")
    return model.to(device).eval()


# --------------------------------------------------------------------------- feature extraction
def _split_batch(batch):
    """(images, label, index) or (images, index) -> (images, labels or None, index)."""
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise ValueError("the loader must yield (images, index) or (images, label, index) "
                         "(use TransformedDataset(with_index=True))")
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], None, batch[1]


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """all_gather of per-rank tensors whose first dims may differ -> concatenation over ranks."""
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    padded = t.new_zeros((m,) + tuple(t.shape[1:]))
    padded[:t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: torch.device | str = "cpu",
                     return_labels: bool = False):
    """Features ``model(images)`` of every sample of ``loader.dataset`` -> float32 (N, D) on CPU,
    row ``i`` = dataset index ``i`` (DINO's ``extract_features``).

    The loader yields ``(images, labels, index)`` (``TransformedDataset(with_index=True)``) or
    ``(images, index)``. Under ``torch.distributed`` each rank runs its share (e.g. a
    ``DistributedSampler(shuffle=False)``; padded duplicates are harmless) and the (index, feature)
    pairs of all ranks are exchanged with ``all_gather``: **every rank returns the full matrix**
    (the original keeps it on rank 0 only). Rows never produced by any rank raise an error.
    With ``return_labels`` (needs 3-tuples) returns ``(features, labels int64 (N,))`` -- the
    labels of the images actually read (an ImageFolder that skips an unreadable file substitutes
    the next sample and its label).
    The model is used as it is (callers put it in ``eval()`` mode); its forward runs under
    ``inference_mode`` (no version counters / autograd bookkeeping), the returned tensors are ordinary.
    """
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    n = len(loader.dataset)
    features: Optional[torch.Tensor] = None
    labels = torch.full((n,), -1, dtype=torch.long)
    filled = torch.zeros(n, dtype=torch.bool)
    for batch in loader:
        images, targets, index = _split_batch(batch)
        if return_labels and targets is None:
            raise ValueError("return_labels=True needs a loader yielding (images, label, index)")
        with torch.inference_mode():
            feats = model(images.to(device, non_blocking=True)).float()
        if feats.ndim != 2:
            raise ValueError(f"the model must return (B, D) features, got {tuple(feats.shape)}")
        index = torch.as_tensor(index, dtype=torch.long)
        tgt = torch.as_tensor(targets, dtype=torch.long) if targets is not None else torch.zeros_like(index)
        if distributed:
            comm = collective_device()  # Gloo gathers CPU tensors, NCCL needs them on the GPU
            feats = _gather_rows(feats.to(comm))
            index = _gather_rows(index.to(comm))
            tgt = _gather_rows(tgt.to(comm))
        if features is None:
            features = torch.zeros(n, feats.shape[1], dtype=torch.float32)
        index = index.cpu()
        features.index_copy_(0, index, feats.cpu())
        labels.index_copy_(0, index, tgt.cpu())
        filled[index] = True
    if features is None:
        raise ValueError("the loader yielded no batch")
    if not bool(filled.all()):
        missing = (~filled).nonzero().flatten()[:10].tolist()
        raise RuntimeError(f"{int((~filled).sum())} dataset rows received no feature (e.g. indices {missing}); "
                           "does the sampler cover the whole dataset?")
    return (features, labels) if return_labels else features


# --------------------------------------------------------------------------- datasets
def knn_eval_sizes(dataset: str, eval_size: Optional[int] = None,
                   synthetic_image_size: int = 32) -> tuple[int, int]:
    """(resize, crop) of the evaluation transform.

    ImageFolder-like sets (``DATASET_INFO[...].image_size is None``: imagefolder, flowers102):
    DINO's Resize(256) + CenterCrop(224), scaled as ``resize = round(eval_size * 256 / 224)``,
    ``crop = eval_size`` (default 224). Built-in small datasets: ``resize = crop = eval_size``
    (default the native size, e.g. 32 for CIFAR/synthetic, 28 for Fashion-MNIST).
    """
    from ..data.datasets import DATASET_INFO
    if dataset not in DATASET_INFO:
        raise ValueError(f"unknown dataset '{dataset}'")
    native = DATASET_INFO[dataset].image_size
    if dataset == "synthetic":
        native = synthetic_image_size
    if native is None:
        crop = 224 if eval_size is None else int(eval_size)
        return int(round(crop * 256 / 224)), crop
    crop = native if eval_size is None else int(eval_size)
    return crop, crop


def build_knn_datasets(args):
    """(train, test) ``TransformedDataset(with_index=True)`` for k-NN, from ``args`` with
    ``dataset``, ``data_path``, optional ``download``, ``eval_size``, ``synthetic_size``.

    ``imagefolder``: ``data_path/train`` and ``data_path/val`` (ImageFolder order, as DINO);
    built-in datasets: their train and test splits. Transform: see ``knn_eval_sizes``.
    Raises ``DataError`` when the data cannot be found.
    """
    import os
    from ..data.datasets import DataError, TransformedDataset, build_dataset
    from ..data.transforms import eval_transform

    name = getattr(args, "dataset", "imagefolder")
    data_path = getattr(args, "data_path", None)
    download = bool(getattr(args, "download", False))
    synthetic_size = int(getattr(args, "synthetic_size", 256))
    resize, crop = knn_eval_sizes(name, getattr(args, "eval_size", None))
    transform = eval_transform(resize, crop)
    if name in ("imagefolder", "imagenet1k"):
        if not data_path:
            raise DataError("--data_path is required for --dataset imagefolder")
        raw_train = build_dataset(name, os.path.join(data_path, "train"))
        raw_test = build_dataset(name, os.path.join(data_path, "val"))
    else:
        kw = dict(download=download, synthetic_size=synthetic_size)
        raw_train = build_dataset(name, data_path, train=True, **kw)
        raw_test = build_dataset(name, data_path, train=False, **kw)
    return (TransformedDataset(raw_train, transform, with_index=True),
            TransformedDataset(raw_test, transform, with_index=True))


def dataset_labels(dataset) -> torch.Tensor:
    """int64 (N,) labels from ``dataset.targets``."""
    return torch.as_tensor(list(dataset.targets), dtype=torch.long)


@torch.no_grad()
def raw_pixel_features(dataset, return_labels: bool = False, normalize: bool = True):
    """Baseline features: each (transformed, ImageNet-normalised) image flattened to (3*H*W,).

    ``dataset`` yields ``(image tensor, label[, index])``. Returns float32 (N, 3*H*W), rows
    L2-normalised when ``normalize`` (ready for ``knn_classifier``); with ``return_labels`` also
    the int64 (N,) labels.
    """
    feats, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        feats.append(torch.as_tensor(item[0], dtype=torch.float32).flatten())
        labels.append(int(item[1]))
    x = torch.stack(feats)
    if normalize:
        x = F.normalize(x, dim=1, p=2)
    return (x, torch.tensor(labels, dtype=torch.long)) if return_labels else x
