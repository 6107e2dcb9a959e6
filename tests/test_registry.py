"""The method registry (ssvit/methods/registry.py): one table, lazily imported, names that agree."""
import subprocess
import sys

import pytest

from ssvit.engine.task import TrainingTask
from ssvit.methods import registry


@pytest.mark.parametrize("name", sorted(registry.METHODS))
def test_every_table_entry_is_a_complete_task_whose_name_is_its_key(name):
    cls = registry.get_method(name)
    assert issubclass(cls, TrainingTask)
    assert cls.name == name
    for hook in ("build_transform", "training_step", "schedules"):  # the three without a default
        assert getattr(cls, hook) is not getattr(TrainingTask, hook), f"{name} lacks {hook}"


def test_a_table_entry_whose_class_has_another_name_is_refused(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "dino_alias", "ssvit.methods.dino:DINO")
    with pytest.raises(RuntimeError, match="whose name is 'dino'"):
        registry.get_method("dino_alias")


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="known: dino, dino_sere, esvit"):
        registry.get_method("byol")


def test_register_method_adds_a_plugin_and_refuses_a_builtin_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {})

    @registry.register_method("toy_plugin")
    class Toy(TrainingTask):
        pass
    assert registry.get_method("toy_plugin") is Toy and Toy.name == "toy_plugin"
    assert "toy_plugin" in registry.list_methods()
    with pytest.raises(ValueError, match="built in"):
        registry.register_method("dino")(type("X", (TrainingTask,), {}))


def test_reading_the_registry_imports_no_method_module():
    code = ("import sys, ssvit.methods.registry as r; r.list_methods(); "
            "print(sorted(m for m in sys.modules if m.startswith('ssvit.methods.') and m != 'ssvit.methods.registry'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


DINO_ONLY = ("out_dim", "momentum_teacher", "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_epochs",
             "norm_last_layer", "use_bn_in_head", "freeze_last_layer", "global_crops_scale", "local_crops_number",
             "local_crops_scale", "local_crops_size", "head_hidden_dim", "head_bottleneck_dim", "head_nlayers")


def test_the_engine_parser_holds_no_dino_flag_and_each_method_declares_what_it_reads():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import build_pretrain_parser
    dests = lambda p: {a.dest for a in p._actions}  # noqa: E731
    assert not dests(build_pretrain_parser()) & set(DINO_ONLY)
    for m in ("dino", "ibot", "ibot_sere", "dino_sere", "esvit"):
        assert set(DINO_ONLY) <= dests(get_args_parser(["--method", m])), m
    assert dests(get_args_parser(["--method", "sit_v2"])) & set(DINO_ONLY) == {"out_dim", "momentum_teacher"}
    for m in ("sit", "relvit"):
        assert not dests(get_args_parser(["--method", m])) & set(DINO_ONLY), m


def test_a_dino_flag_given_to_a_method_without_it_is_a_one_line_error(tmp_path):
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "main_pretrain.py"), "--method", "relvit", "--use_relations",
                        "--teacher_temp", "0.07", "--output_dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments: --teacher_temp 0.07" in r.stderr
    assert not (tmp_path / "checkpoint.pth").exists()
