"""Datasets: ImageFolder (with corrupt-file policy), Fashion-MNIST from local IDX files,
torchvision's CIFAR/STL10/SVHN/Flowers102, and a deterministic synthetic set for smoke tests.

Every dataset yields ``(PIL RGB image, int label)`` before transforms; ``build_dataset`` wraps it
with a transform. Nothing downloads unless ``download=True`` is passed explicitly.
"""
from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

DATASETS = ("imagefolder", "imagenet1k", "fashion_mnist", "cifar10", "cifar100", "stl10", "stl10_unlabeled", "svhn",
            "flowers102", "pets", "aircraft", "cars", "tinyimagenet", "imagenet100", "synthetic")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: Optional[int]
    image_size: Optional[int]  # native side length; None = arbitrary (ImageFolder)


DATASET_INFO = {
    "imagefolder": DatasetInfo(None, None),
    "imagenet1k": DatasetInfo(1000, None),  # EsViT's name: an ImageFolder at --data_path
    "fashion_mnist": DatasetInfo(10, 28),
    "cifar10": DatasetInfo(10, 32),
    "cifar100": DatasetInfo(100, 32),
    "stl10": DatasetInfo(10, 96),
    "svhn": DatasetInfo(10, 32),
    "stl10_unlabeled": DatasetInfo(10, 96),  # train+unlabeled for pretraining (SiT-v1's SSL split); test to evaluate
    "flowers102": DatasetInfo(102, None),
    "pets": DatasetInfo(37, None),  # Oxford-IIIT Pets: trainval / test
    "aircraft": DatasetInfo(100, None),  # FGVC-Aircraft variants: trainval / test
    "cars": DatasetInfo(196, None),  # Stanford Cars: train / test
    "tinyimagenet": DatasetInfo(200, 64),  # Tiny-ImageNet-200's own layout (data.folder_layouts)
    "imagenet100": DatasetInfo(100, None),  # the ImageNet-100 layout: train.X1..X4, val.X, Labels.json
    "synthetic": DatasetInfo(10, 32),
}


class DataError(RuntimeError):
    """A dataset could not be opened; the message says what was expected where."""


# --------------------------------------------------------------------------- ImageFolder
class ImageFolderSafe(Dataset):
    """``torchvision.datasets.ImageFolder`` that deals with unreadable images by policy.

    ``on_bad_image='skip'``: warn once per file, count it (shared across DataLoader workers) and
    return the next readable sample instead; ``'fail'``: raise ``DataError`` naming the file.
    """

    def __init__(self, root: str, on_bad_image: str = "skip"):
        from torchvision.datasets import ImageFolder
        if on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        if not os.path.isdir(root):
            raise DataError(f"data path '{root}' does not exist or is not a directory "
                            "(expected an ImageFolder: one sub-folder of images per class)")
        try:
            self.folder = ImageFolder(root)
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"data path '{root}' is not a usable ImageFolder: {e}") from e
        self.samples = self.folder.samples
        self.targets = self.folder.targets
        self.classes = self.folder.classes
        self.on_bad_image = on_bad_image
        self._bad = mp.Value("i", 0)

    @classmethod
    def from_samples(cls, samples: list, classes: list, on_bad_image: str = "skip", where: str = "") -> "ImageFolderSafe":
        """The same dataset over an explicit ``[(path, label), ...]`` list (``folder_layouts``)."""
        if on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        if not samples:
            raise DataError(f"no images found under '{where}'")
        self = cls.__new__(cls)
        self.folder = None
        self.samples, self.targets, self.classes = list(samples), [t for _, t in samples], list(classes)
        self.on_bad_image = on_bad_image
        self._bad = mp.Value("i", 0)
        return self

    @property
    def bad_images(self) -> int:
        return self._bad.value

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # force the full decode so truncated files fail here
            return img.convert("RGB")

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                return self._load(path), target
            except Exception as e:  # PIL raises several types for corrupt data
                if self.on_bad_image == "fail":
                    raise DataError(f"cannot read image '{path}': {e} "
                                    "(use --on_bad_image skip to skip unreadable files)") from e
                with self._bad.get_lock():
                    self._bad.value += 1
                warnings.warn(f"skipping unreadable image '{path}': {e}")
        raise DataError("no readable image in the dataset")


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"'{path}' is not an IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"'{path}' is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def find_fashion_mnist(root: Optional[str]) -> Optional[str]:
    names = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    candidates = []
    if root:
        candidates += [root, os.path.join(root, "fashion-mnist"), os.path.join(root, "FashionMNIST", "raw")]
    candidates += list(FASHION_MNIST_DIRS)
    for c in candidates:
        if all(os.path.exists(os.path.join(c, n)) or os.path.exists(os.path.join(c, n + ".gz")) for n in names):
            return c
    return None


class FashionMNIST(Dataset):
    """Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` or torchvision's raw folder).

    Yields (28x28 PIL image, label in 0..9). ``train=True``: 60,000 images; else 10,000.
    Images are grey 'L' images unless ``rgb``: ssvit's transforms keep them single-channel and
    its normalisation expands them to 3 channels, bit-identical to converting to RGB first but
    about half the augmentation cost (tests/test_data.py).
    """

    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]

    def __init__(self, root: Optional[str] = None, train: bool = True, download: bool = False, rgb: bool = False):
        self.rgb = rgb
        found = find_fashion_mnist(root)
        if found is None and download:
            from torchvision.datasets import FashionMNIST as TVFashion
            dl_root = root or "./data"
            TVFashion(dl_root, train=train, download=True)
            found = find_fashion_mnist(dl_root)
        if found is None:
            raise DataError(
                f"Fashion-MNIST not found under {root!r} nor {FASHION_MNIST_DIRS[0]}: install the Debian package "
                "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass --download true")
        prefix = "train" if train else "t10k"

        def path(kind):
            p = os.path.join(found, f"{prefix}-{kind}")
            return p if os.path.exists(p) else p + ".gz"

        self.images = _read_idx(path("images-idx3-ubyte"))
        self.targets = _read_idx(path("labels-idx1-ubyte")).astype(np.int64).tolist()
        if len(self.images) != len(self.targets):
            raise DataError(f"Fashion-MNIST in '{found}': {len(self.images)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i], mode="L")
        return (img.convert("RGB") if self.rgb else img), self.targets[i]


# --------------------------------------------------------------------------- synthetic
class SyntheticShapes(Dataset):
    """Deterministic images of ``num_classes`` textures (oriented stripes of a class-specific
    frequency and colour) with random phase, noise and brightness. Learnable, offline, any size."""

    def __init__(self, size: int = 256, image_size: int = 32, num_classes: int = 10, seed: int = 0):
        self.size, self.image_size, self.num_classes, self.seed = size, image_size, num_classes, seed
        self.targets = [i % num_classes for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        g = np.random.default_rng(self.seed * 1_000_003 + i)
        c = self.targets[i]
        s = self.image_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        angle = np.pi * c / self.num_classes
        freq = 2 + (c % 3) * 2
        phase = g.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        colour = np.array([(c * 37) % 255, (c * 91) % 255, (c * 53) % 255], dtype=np.float32) / 255
        img = 0.5 + 0.35 * wave[..., None] * (0.5 + colour) + g.normal(0, 0.05, (s, s, 3))
        img = np.clip(img * g.uniform(0.8, 1.2), 0, 1)
        return Image.fromarray((img * 255).astype(np.uint8), mode="RGB"), c


# --------------------------------------------------------------------------- factory
def _torchvision_dataset(name: str, root: str, train: bool, download: bool):
    from torchvision import datasets as tvd
    if not download and not os.path.exists(root):
        raise DataError(f"data path '{root}' does not exist; pass --download true to let torchvision fetch {name}")
    try:
        if name == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=download)
        elif name == "cifar100":
            ds = tvd.CIFAR100(root, train=train, download=download)
        elif name == "stl10":
            ds = tvd.STL10(root, split="train" if train else "test", download=download)
        elif name == "svhn":
            ds = tvd.SVHN(root, split="train" if train else "test", download=download)
        elif name == "stl10_unlabeled":
            ds = tvd.STL10(root, split="train+unlabeled" if train else "test", download=download)
        elif name == "flowers102":
            ds = tvd.Flowers102(root, split="train" if train else "test", download=download)
        elif name == "pets":
            ds = tvd.OxfordIIITPet(root, split="trainval" if train else "test", download=download)
        elif name == "aircraft":
            ds = tvd.FGVCAircraft(root, split="trainval" if train else "test", download=download)
        elif name == "cars":
            ds = tvd.StanfordCars(root, split="train" if train else "test", download=download)
        else:
            raise ValueError(name)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted", unwritable root
        raise DataError(f"{name} not found under '{root}': {e} (pass --download true to fetch it)") from e
    return _RGBView(ds)


class _RGBView(Dataset):
    """Adapts a torchvision dataset to yield RGB PIL images and int labels."""

    def __init__(self, ds):
        self.ds = ds
        labels = getattr(ds, "targets", getattr(ds, "labels", getattr(ds, "_labels", None)))
        if labels is None and hasattr(ds, "_samples"):  # StanfordCars: (path, label) pairs
            labels = [t for _, t in ds._samples]
        self.targets = [int(t) for t in (labels if labels is not None else [])]

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, target = self.ds[i]
        return img.convert("RGB"), int(target)


def split_root(name: str, data_path: Optional[str], split: str) -> Optional[str]:
    """Where ``split`` ('train' / 'val') of dataset ``name`` lives: ImageFolder sets keep
    ``data_path/train`` and ``data_path/val``; the others read ``data_path`` (``build_dataset`` picks
    the split)."""
    return os.path.join(data_path, split) if name in ("imagefolder", "imagenet1k") else data_path


def build_dataset(name: str, data_path: Optional[str], train: bool = True, download: bool = False,
                  on_bad_image: str = "skip", synthetic_size: int = 256, synthetic_image_size: int = 32) -> Dataset:
    """Raw (untransformed) dataset by name. ``imagefolder`` reads ``data_path`` itself for
    pretraining; evaluation passes ``data_path/train`` or ``data_path/val``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    if name == "imagenet1k":
        name = "imagefolder"
    if name == "imagefolder":
        if not data_path:
            raise DataError("--data_path is required for --dataset imagefolder")
        return ImageFolderSafe(data_path, on_bad_image=on_bad_image)
    if name == "fashion_mnist":
        return FashionMNIST(data_path, train=train, download=download)
    if name in ("tinyimagenet", "imagenet100"):
        from . import folder_layouts
        if not data_path or not os.path.isdir(data_path):
            raise DataError(f"--data_path '{data_path}' must be the {name} folder")
        if not folder_layouts.has_layout(name, data_path):  # already converted: data_path/train and /val ImageFolders
            return ImageFolderSafe(os.path.join(data_path, "train" if train else "val"), on_bad_image=on_bad_image)
        reader = folder_layouts.tiny_imagenet if name == "tinyimagenet" else folder_layouts.imagenet100
        return reader(data_path, train, on_bad_image)
    if name == "synthetic":
        return SyntheticShapes(synthetic_size if train else max(synthetic_size // 4, 10),
                               synthetic_image_size, seed=0 if train else 1)
    return _torchvision_dataset(name, data_path or "./data", train, download)


class TransformedDataset(Dataset):
    """Applies ``transform`` to a raw dataset's images. With ``seed`` set, the randomness of each
    sample is a pure function of (seed, epoch, index): the same crops whatever the worker count,
    the rank layout or a resume point -- what makes mid-epoch resume exact. ``with_index`` makes
    items ``(image, label, index)``.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: Optional[int] = None, with_index: bool = False):
        self.base, self.transform, self.seed, self.with_index = base, transform, seed, with_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.transform, "set_epoch"):  # e.g. the mask generator's pred_start_epoch
            self.transform.set_epoch(epoch)

    @property
    def targets(self):
        return self.base.targets

    @property
    def bad_images(self) -> int:
        return getattr(self.base, "bad_images", 0)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        draw = 0
        if isinstance(index, (tuple, list)):  # (index, draw): a repeated sample's further augmentation
            index, draw = int(index[0]), int(index[1])
        img, target = self.base[index]
        if self.seed is None:
            out = self.transform(img)
        else:
            import random

            import numpy as np
            sample_seed = (self.seed * 1_000_003 + self.epoch * 10_000_019 + index + draw * 7_777_777_777) % (2 ** 63)
            py_state, np_state = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                random.seed(sample_seed)
                np.random.seed(sample_seed % (2 ** 32))
                # only the CPU generator: torch.manual_seed also seeds every accelerator backend,
                # ~2 ms per call on a CUDA build -- a third of the per-sample cost at 28 px
                torch.default_generator.manual_seed(sample_seed)
                out = self.transform(img)
            random.setstate(py_state)
            np.random.set_state(np_state)
        return (out, target, index) if self.with_index else (out, target)
