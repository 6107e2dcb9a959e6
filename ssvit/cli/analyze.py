"""EsViT's analysis tools (microsoft/esvit ``analyze_models.py``) for any ssvit backbone with region
tokens (Swin, CvT, ViL, ViT):

* ``--vis_correspondence``: two views of one image (or of ``--image_path`` and ``--image_path2``),
  the 10 best region matches drawn as numbered lines -> ``seed{seed}/correspondence{seed}.png``;
* ``--measure_correspondence``: over a validation set, each image against its mirrored, colour-
  jittered, grey copy; accuracy of the 10 best matches landing on the mirrored cell, mean distance
  error, 10th similarity -> ``<set>/measure_correspondence.json`` (and EsViT's ``.pickle``);
* ``--vis_attention``: last-block attention of one query (first window for windowed backbones),
  heads sorted by entropy -> ``attn-head_XX.png`` and ``attn_all_query{q}.png``;
* ``--vis_entropy``: over a validation set, every block's per-head attention entropy (bits, first
  window, averaged over queries 0..48 and over images) ->
  ``<set>/attn_entropy_avg_all_queries_no_sort.pickle`` (a list per block) and ``.json``.

Examples:
  ssvit analyze --arch swin_tiny --pretrained_weights ckpt.pth --vis_correspondence true
  ssvit analyze --arch swin_pico --pretrained_weights runs/x/checkpoint.pth \\
      --dataset fashion_mnist --image_size 64 --measure_correspondence true --max_images 500
  ssvit analyze --arch swin_tiny --pretrained_weights ckpt.pth --data_path /imagenet \\
      --vis_entropy true
"""
from __future__ import annotations

import argparse
import json
import os
import pickle

import torch
from PIL import Image
from torchvision import transforms as T


from ssvit.cli import exit_status
from ssvit.config import bool_flag
from ssvit.data import DataError, build_dataset
from ssvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_transform
from ssvit.models.backbone import Backbone
from ssvit.utils.checkpoint import CheckpointError
from ssvit.evaluation.attention_entropy import EntropyMeter
from ssvit.evaluation.correspondence import draw_correspondence, flip_correspondence
from ssvit.evaluation.knn import build_eval_backbone


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("EsViT model analysis", add_help=True)
    p.add_argument("--arch", default="deit_small", type=str)
    p.add_argument("--cfg", default=None, type=str, help="EsViT YAML model config (Swin / CvT / ViL)")
    p.add_argument("--patch_size", default=8, type=int)
    p.add_argument("--pretrained_weights", default="", type=str)
    p.add_argument("--checkpoint_key", default="teacher", type=str)
    p.add_argument("--learning", default="ssl", type=str, help="ssl: checkpoint[key]; else checkpoint[key]['model']")
    p.add_argument("--seed", default=8, type=int)
    p.add_argument("--image_path", default=None, type=str)
    p.add_argument("--image_path2", default=".", type=str)
    p.add_argument("--output_dir", default=".", type=str)
    p.add_argument("--data_path", default="/path/to/imagenet/", type=str, help="measure: data_path/val")
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="unused (as the original)")
    p.add_argument("--num_workers", default=10, type=int)
    p.add_argument("--use_saved_aug", default=False, type=bool_flag)
    p.add_argument("--vis_correspondence", default=False, type=bool_flag)
    p.add_argument("--measure_correspondence", default=False, type=bool_flag)
    p.add_argument("--vis_attention", default=False, type=bool_flag)
    p.add_argument("--vis_entropy", default=False, type=bool_flag)
    p.add_argument("--threshold", default=0.6, type=float)
    p.add_argument("--query", default=9, type=int, help="attention query position")
    # ssvit additions
    p.add_argument("--dataset", default="imagefolder", type=str,
                   help="measure / entropy on a built-in dataset's test split")
    p.add_argument("--image_size", default=224, type=int, help="view size (the original: 224)")
    p.add_argument("--max_images", default=0, type=int, help="measure / entropy: stop after N images (0 = all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of --cfg")
    return p


def build_model(args):
    extra = {}
    if args.cfg:
        from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
        extra = backbone_kwargs_from_cfg(args.arch, load_esvit_config(args.cfg, args.opts))
    # --learning other than ssl: EsViT reads checkpoint[key]['model'] -- found by the same loader
    model = build_eval_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, "cpu",
                                **extra)
    if not isinstance(model, Backbone):
        raise ValueError(f"--arch {args.arch} exposes no region tokens (not an ssvit backbone)")
    return model


def region_tokens(model, img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised -> (N, C) final-normed region tokens."""
    with torch.inference_mode():
        return model.forward_features(img.unsqueeze(0)).patch_tokens[0].float()


def load_image(path: str) -> Image.Image:
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    if path:
        raise DataError(f"image '{path}' not found")
    import skimage.data
    return Image.fromarray(skimage.data.astronaut()).convert("RGB")


def vis_correspondence(model, args) -> str:
    size = args.image_size
    out = os.path.join(args.output_dir, f"seed{args.seed}")
    os.makedirs(out, exist_ok=True)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    p1, p2 = os.path.join(out, "img1.png"), os.path.join(out, "img2.png")
    if args.use_saved_aug:
        img1, img2 = (T.ToTensor()(Image.open(p).convert("RGB")) for p in (p1, p2))
    else:
        img = load_image(args.image_path)
        ref = load_image(args.image_path2) if args.image_path2 and os.path.isfile(args.image_path2) else img
        img1 = T.Compose([T.RandomResizedCrop(size, scale=(1.0, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                          T.ToTensor()])(img)
        img2 = T.Compose([T.RandomResizedCrop(size, scale=(0.4, 0.6), interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(0.5),
                          T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                          T.ToTensor()])(ref)
        T.ToPILImage()(img1).save(p1)
        T.ToPILImage()(img2).save(p2)
    fea1, fea2 = region_tokens(model, norm(img1)), region_tokens(model, norm(img2))
    return draw_correspondence(img1, img2, fea1, fea2, os.path.join(out, f"correspondence{args.seed}.png"))


def val_images(args):
    """The validation set of ``--measure_correspondence`` / ``--vis_entropy``: (dataset, output
    subfolder name, Resize(bicubic) + CenterCrop transform, crop size, number of images)."""
    from ssvit.evaluation.knn import knn_eval_sizes
    resize, crop = knn_eval_sizes(args.dataset, args.image_size)
    tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop)])
    if args.dataset in ("imagefolder", "imagenet1k"):
        ds = build_dataset("imagefolder", os.path.join(args.data_path, "val"))
        name = os.path.basename(os.path.normpath(args.data_path))
    else:
        ds = build_dataset(args.dataset, args.data_path if args.data_path != "/path/to/imagenet/" else None,
                           train=False)
        name = args.dataset
    n = len(ds) if args.max_images <= 0 else min(args.max_images, len(ds))
    return ds, name, tf, crop, n


def measure_correspondence(model, args) -> dict:
    ds, name, tf, crop, n = val_images(args)
    flip_jitter_grey = T.Compose([T.RandomHorizontalFlip(p=1.0), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)],
                                  p=0.8), T.RandomGrayscale(p=1.0)])
    norm = normalize_transform()
    sums = {"accuracy": 0.0, "distance_error": 0.0, "sim_value": 0.0}
    for i in range(n):
        img = tf(ds[i][0].convert("RGB"))
        r = flip_correspondence(region_tokens(model, norm(img)), region_tokens(model, norm(flip_jitter_grey(img))),
                                width=crop, height=crop)
        for k in sums:
            sums[k] += r[k]
    result = {"count": n, "sim_value_avg": sums["sim_value"] / n, "accuracy_avg": sums["accuracy"] / n,
              "distance_error_avg": sums["distance_error"] / n}
    out = os.path.join(args.output_dir, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "measure_correspondence.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "measure_correspondence.pickle"), "wb") as f:
        pickle.dump(result, f)
    print(f"correspondence over {n} images: accuracy {result['accuracy_avg']:.4f}, "
          f"distance error {result['distance_error_avg']:.2f} px, 10th similarity {result['sim_value_avg']:.4f}")
    return result


def vis_entropy(model, args) -> list[list[float]]:
    """Per-block, per-head attention entropy (bits) averaged over the validation images: one list
    of ``heads`` values per block, written as EsViT's pickle and as JSON."""
    ds, name, tf, _, n = val_images(args)
    norm = normalize_transform()
    meter = EntropyMeter()
    for i in range(n):
        img = norm(tf(ds[i][0].convert("RGB")))
        with torch.inference_mode():
            meter.update(model.get_all_selfattention(img.unsqueeze(0)))
    result = meter.values()
    out = os.path.join(args.output_dir, name)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "attn_entropy_avg_all_queries_no_sort")
    with open(stem + ".pickle", "wb") as f:
        pickle.dump(result, f)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    print(f"attention entropy over {n} images ({len(result)} blocks), mean per block (bits): "
          + " ".join(f"{sum(b) / len(b):.3f}" for b in result))
    return result


def vis_attention(model, args) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchvision

    size = args.image_size
    img = T.Compose([T.Resize([size, size]), T.CenterCrop(size), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(load_image(args.image_path))
    with torch.inference_mode():
        attn = model.get_last_selfattention(img.unsqueeze(0))[0]  # first window: (heads, q, k)
    keys = attn.shape[-1]
    side = int(keys ** 0.5)
    if side * side != keys:  # a CLS token in front (ViT)
        attn, side = attn[:, 1:, 1:], int((keys - 1) ** 0.5)
    q = min(args.query, attn.shape[1] - 1)
    maps = attn[:, q, :]
    entropy = -(maps * torch.log2(maps.clamp_min(1e-12))).sum(-1)
    maps = maps[torch.sort(entropy, descending=True)[1]].reshape(-1, side, side)
    out = os.path.join(args.output_dir, f"query{q}")
    os.makedirs(out, exist_ok=True)
    paths = []
    for j, m in enumerate(maps):
        paths.append(os.path.join(out, f"attn-head_{j:02}.png"))
        plt.imsave(paths[-1], m.numpy(), cmap="Blues")
    grid = torchvision.utils.make_grid(maps.unsqueeze(1), nrow=4, padding=2, pad_value=0.5, normalize=True,
                                       scale_each=True)[0]
    paths.append(os.path.join(args.output_dir, f"attn_all_query{q}.png"))
    plt.imsave(paths[-1], grid.numpy(), cmap="Blues")
    return paths


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.opts and not args.cfg:
        raise ValueError(f"KEY VALUE overrides {args.opts} need --cfg")
    if not (args.vis_correspondence or args.measure_correspondence or args.vis_attention or args.vis_entropy):
        raise ValueError("choose at least one of --vis_correspondence / --measure_correspondence / --vis_attention"
                         " / --vis_entropy")
    torch.manual_seed(args.seed)
    model = build_model(args)
    os.makedirs(args.output_dir, exist_ok=True)
    out = {}
    if args.vis_correspondence:
        out["correspondence_png"] = vis_correspondence(model, args)
    if args.measure_correspondence:
        out["measure"] = measure_correspondence(model, args)
    if args.vis_attention:
        out["attention_pngs"] = vis_attention(model, args)
    if args.vis_entropy:
        out["entropy"] = vis_entropy(model, args)
    return out


def cli(argv=None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, DataError, ValueError), "analyze_models.py")
