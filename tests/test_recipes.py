"""ssvit recipes (ssvit/cli/recipes.py) and the recipe files under configs/: each parses under its command,
passes its method's checks, and describes itself consistently with the flags it holds."""
import os
import subprocess
import sys

import pytest
import yaml

from ssvit.cli import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = recipes.recipe_paths()
NAMES = [os.path.splitext(os.path.relpath(p, recipes.CONFIGS))[0] for p in PATHS]


def test_the_recipes_cover_every_method_family_and_the_evaluations():
    assert len(PATHS) >= 20
    commands = {yaml.safe_load(open(p))["recipe"]["command"] for p in PATHS}
    assert commands == {"pretrain", "linear", "knn", "propagate"}
    methods = {recipes.load_recipe(p).method for p in PATHS}
    assert {"dino", "ibot", "esvit", "sit", "sit_v2", "relvit"} <= methods


@pytest.mark.parametrize("path", PATHS, ids=NAMES)
def test_every_recipe_parses_passes_its_checks_and_states_its_total_batch(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # EsViT's --cfg paths are relative to the checkout
    r = recipes.load_recipe(path)
    for key in ("paper", "source", "command", "gpus"):
        assert getattr(r, key), key
    if r.command == "pretrain":
        from ssvit.methods import get_method
        get_method(r.args.method).check_args(r.args)  # what the trainer runs first
    header = "".join(line for line in open(path) if line.startswith("#"))
    if r.total_batch:  # the comment's arithmetic is the file's: GPUs x per-GPU batch = total
        assert r.total_batch == r.gpus * r.batch_per_gpu * getattr(r.args, "accum_iter", 1)
        assert f"{r.gpus} x {r.batch_per_gpu} = {r.total_batch}" in header or \
            f"{r.gpus} GPUs x {r.batch_per_gpu} = {r.total_batch}" in header, header
    for value in r.reported.values():
        if value is not None:
            assert f"{value}" in header  # every reported figure is also in the file's description


def test_the_recipe_key_is_a_description_not_a_flag(tmp_path):
    """--config FILE with a recipe: mapping runs the flags only (a key argparse does not know would be an error)."""
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    path = os.path.join(recipes.CONFIGS, "dino", "vit_small_16_300ep.yaml")
    argv = ["--config", path, "--epochs", "2"]
    args = parse_with_config(get_args_parser(argv), argv)
    assert (args.teacher_temp, args.warmup_teacher_temp_epochs, args.norm_last_layer, args.epochs) == (0.07, 30, False, 2)
    assert not hasattr(args, "recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {paper: x, source: y, command: pretrain, gpus: 1}\nmethod: dino\nnot_a_flag: 1\n")
    with pytest.raises(SystemExit):
        parse_with_config(get_args_parser(["--config", str(bad)]), ["--config", str(bad)])


def test_ibot_recipe_holds_the_readme_command():
    r = recipes.load_recipe(os.path.join(recipes.CONFIGS, "ibot", "vit_small_16_800ep.yaml"))
    a = r.args
    assert (a.method, a.arch, a.patch_size, a.epochs, a.batch_size_per_gpu, a.out_dim) == ("ibot", "vit_small", 16, 800, 64, 8192)
    assert a.shared_head is True and a.norm_last_layer is False and a.local_crops_number == 10
    assert list(a.global_crops_scale) == [0.25, 1.0] and list(a.pred_ratio) == [0.0, 0.3]
    assert r.total_batch == 1024 and r.reported == {"knn": 75.2, "linear": 77.9, "finetune": 82.3}


def test_the_command_lists_every_recipe_and_shows_one(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "ssvit", "recipes"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "method", "backbone"] and len(lines) == len(PATHS) + 1
    row = next(line for line in lines if line.startswith("dino/vit_small_16_100ep "))
    assert row.split()[1:4] == ["dino", "vit_small/16", "100"] and "8 x 64 = 512" in row and "k-NN 69.3" in row
    capsys.readouterr()
    assert recipes.cli(["esvit/swin_base_w14_300ep"]) == 0
    show = capsys.readouterr().out
    assert "64 GPUs x 8 = 512" in show and "--config configs/esvit/swin_base_w14" in show and "--accum_iter 64/G" in show
    assert recipes.cli(["dino/nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no recipe 'dino/nope'" in err


def test_a_recipe_that_does_not_describe_itself_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("recipe: {paper: x, command: pretrain}\nmethod: dino\n")
    with pytest.raises(recipes.RecipeError, match="lacks source, gpus"):
        recipes.load_recipe(str(p), root=str(tmp_path))
    p.write_text("recipe: {paper: x, source: y, command: train, gpus: 1}\n")
    with pytest.raises(recipes.RecipeError, match="recipe.command must be one of"):
        recipes.load_recipe(str(p), root=str(tmp_path))


def test_the_docs_table_lists_every_recipe():
    doc = open(os.path.join(ROOT, "docs", "recipes.md")).read()
    for name in NAMES:
        assert f"\n{name} " in doc, f"docs/recipes.md lacks {name}: paste the output of 'ssvit recipes'"
