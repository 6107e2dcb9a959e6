"""Imports run one way: every ``ssvit`` module imports only from its own package or a lower layer
(README, "Where things are"). The walk covers every import statement, function-level ones too."""
import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssvit"

#: bottom to top; packages on one line are peers and may not import each other
LAYERS = [
    ("ssvit", "ssvit.utils"),
    ("ssvit.config",),
    ("ssvit.data", "ssvit.models"),
    ("ssvit.objectives",),
    ("ssvit.engine",),
    ("ssvit.methods",),
    ("ssvit.evaluation",),
    ("ssvit.cli",),
    ("ssvit.__main__",),  # python -m ssvit
]


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the package that owns ``module``): the longest listed prefix."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, module
    return best


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``ssvit`` import in the file."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target == package:  # ``from . import x``: x is a submodule
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in out if t == "ssvit" or t.startswith("ssvit.")]


def violations(files) -> list[str]:
    bad = []
    for path in files:
        here, here_pkg = layer_of(module_name(path))
        for line, target in imported_modules(path):
            there, there_pkg = layer_of(target)
            if there_pkg == here_pkg or there_pkg == "ssvit":
                continue
            if there > here or (there == here and there_pkg != here_pkg):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({here_pkg}, layer {here}) imports {target} "
                           f"({there_pkg}, layer {there})")
    return bad


def test_every_module_imports_only_from_lower_layers():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 60
    assert violations(files) == []


def test_the_checker_sees_an_upward_import_relative_or_lazy(tmp_path, monkeypatch):
    fake = tmp_path / "ssvit"
    (fake / "engine").mkdir(parents=True)
    (fake / "engine" / "bad.py").write_text("def f():\n    from ..methods.registry import get_method\n")
    (fake / "data").mkdir()
    (fake / "data" / "bad.py").write_text("from ssvit.evaluation import segmentation_io\n"
                                          "from ssvit.models import registry\n")
    (fake / "utils").mkdir()
    (fake / "utils" / "ok.py").write_text("from . import checkpoint\nfrom .distributed import barrier\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations(sorted(fake.rglob("*.py")))
    assert any("engine/bad.py:2" in v and "ssvit.methods.registry" in v for v in found)
    assert any("data/bad.py:1" in v and "ssvit.evaluation" in v for v in found)
    assert any("data/bad.py:2" in v and "ssvit.models" in v for v in found)  # peers do not import each other
    assert not any("utils/ok.py" in v for v in found)
    assert len(found) == 3


@pytest.mark.parametrize("package,forbidden", [("engine", ("ssvit.methods", "ssvit.evaluation")),
                                               ("data", ("ssvit.evaluation",))])
def test_named_rules_of_the_architecture_issue(package, forbidden):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for line, target in imported_modules(path):
            assert not target.startswith(forbidden), f"{path.relative_to(ROOT)}:{line} imports {target}"
