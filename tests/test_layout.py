"""The house's rules, held: the packages that never need TensorFlow do not import it, every
list of allowed values is derived from the schema's one definition, every configuration key is
documented (the docs' reference is generated from those lines), and no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_TENSORFLOW = ("busi", "busi.config", "busi.data", "busi.files", "busi.runtime", "busi.distributed",
                 "busi.report", "busi.cli")


@pytest.mark.integration  # a fresh Python: nothing imported before
def test_packages_that_never_need_tensorflow_do_not_import_it() -> None:
    modules = [*NO_TENSORFLOW, "busi.config.load", "busi.config.reference", "busi.data.prepare", "busi.data.inputs",
               "busi.data.staging", "busi.files.rundir", "busi.runtime.startup", "busi.distributed.setup",
               "busi.perf.bench", "busi.evaluate.writer"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith(('tensorflow.', 'keras')))\n"
            "print(bad[:5])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_each_package_says_what_it_owns() -> None:
    for init in sorted((REPO / "busi").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init}: a docstring saying what the package owns"
    for name in ("config", "data", "files", "runtime", "distributed"):
        doc = ast.get_docstring(ast.parse((REPO / "busi" / name / "__init__.py").read_text())) or ""
        assert "TensorFlow" in doc, f"busi/{name} says whether it imports TensorFlow"


def test_imports_go_downward_without_circles() -> None:
    """Package level: no package imports one that imports it back (module imports inside
    functions count too: they are the lazy ones)."""
    pkgs: dict[str, set[str]] = {}
    for p in (REPO / "busi").rglob("*.py"):
        rel = p.relative_to(REPO / "busi").parts
        pkg = rel[0].removesuffix(".py")
        if pkg == "__main__":  # python -m busi: the entry point above the CLI
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("busi."):
                target = node.module.split(".")[1]
                if target != pkg:
                    pkgs.setdefault(pkg, set()).add(target)
    assert "cli" not in {t for targets in pkgs.values() for t in targets}, "nothing imports the CLI"
    for a, targets in pkgs.items():
        for b in targets:
            assert a not in pkgs.get(b, set()), f"busi.{a} and busi.{b} import each other"


def test_allowed_values_have_one_definition() -> None:
    from busi import cli
    from busi.config import schema
    from busi.model.export import FORMATS
    from busi.model.backbones import TABLE, UNFREEZE_STAGE

    assert set(UNFREEZE_STAGE) == set(schema.UNFREEZE_MODES)
    assert tuple(TABLE) == schema.BACKBONES
    assert tuple(FORMATS) == schema.EXPORT_FORMATS
    assert schema.ENGINES == typing.get_args(schema.EngineName)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    predict = {a.dest: a.choices for a in sub.choices["predict"]._actions}
    assert tuple(predict["engine"]) == schema.ENGINES and tuple(predict["precision"]) == schema.INFERENCE_PRECISIONS
    bench = {a.dest: a.choices for a in sub.choices["bench"]._actions}
    assert set(bench["unfreeze"]) == set(schema.UNFREEZE_MODES) - {"none"}


def test_every_configuration_key_is_documented() -> None:
    from busi.config.reference import key_docs, reference_markdown, undocumented
    from busi.config.schema import JobConfig, PredictJobConfig

    assert undocumented() == []
    page = reference_markdown()
    for cls in (JobConfig, PredictJobConfig):
        for d in key_docs(cls):
            assert f"`{d.key}`" in page or f"`{d.key}:`" in page, d.key
