"""The house's rules, held: the packages that never need TensorFlow do not import it, every
list of allowed values is derived from the schema's one definition, every configuration key is
documented (the docs' reference is generated from those lines), no import circle, and every
module has tests (a test module imports it, or ``TESTED_WITHOUT_IMPORT`` says which test holds it)."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# busi modules no test module imports, each with the test module that holds it and how (a
# subprocess of busi-job, or the module that uses it). A new module is imported by its tests or
# named here; an entry goes when a test imports its module.
TESTED_WITHOUT_IMPORT: dict[str, tuple[str, str]] = {
    "busi.__main__": ("test_predict", "`python -m busi predict` in a subprocess (every run_cli call too)"),
    "busi.config.tree": ("test_config_layers", "through busi.config.load: layering, --explain's sources, the dump"),
    "busi.config.validate": ("test_config", "through load_config: types, bounds, allowed values, cross-key checks"),
    "busi.data.names": ("test_scan", "through the scan (__MACOSX/, .DS_Store); test_staging, test_inputs too"),
    "busi.data.regions": ("test_dicom", "through the DICOM decode: data.dicom.crop_to_region"),
    "busi.distributed.horovod": ("test_dist", "two Horovod ranks in subprocesses (system tier)"),
    "busi.evaluate.external_data": ("test_external", "busi-job evaluate on class folders and a job file's data:"),
    "busi.evaluate.forward": ("test_job", "the test split's evaluation in a real run; test_quantize's contracts"),
    "busi.files.cvdir": ("test_cv", "busi-job cv and cv-report write and read the cv folder"),
    "busi.files.manifest": ("test_job", "the manifest of a real run: stages, attempts, status; test_resume"),
    "busi.model.ensemble": ("test_cv", "predict --model CV_DIR (the fold models) and --tta flip"),
    "busi.model.gradcam": ("test_predict", "--gradcam overlays; Grad-CAM against the masks in test_explain"),
    "busi.model.tracing": ("test_features", "the compiled steps and feature extraction trace through one_trace"),
    "busi.perf.bench": ("test_bench", "busi-job bench in a subprocess"),
    "busi.perf.worker": ("test_bench", "the worker processes busi-job bench starts"),
    "busi.predict.overlays": ("test_predict", "the --gradcam overlay PNGs"),
    "busi.report.modelcard": ("test_job", "the model card of a real run (model/README.md)"),
    "busi.report.text": ("test_cli_data", "busi-job inspect's text report; cv-report's summary in test_cv"),
    "busi.train.job": ("test_job", "busi-job train, stage by stage, in a subprocess"),
    "busi.train.results": ("test_job", "the evaluate, quantize and publish stages of a real run: metrics, "
                           "thresholds, precisions, plots, the report; test_quantize's contracts"),
    "busi.train.quantize": ("test_quantize", "training's INT8 stage and busi-job export --precision int8"),
}
NO_TENSORFLOW = ("busi", "busi.config", "busi.data", "busi.files", "busi.runtime", "busi.distributed",
                 "busi.report", "busi.cli", "busi.cli_args")


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


def _busi_modules() -> list[str]:
    """Every module of busi by its dotted name (a package by its own: ``busi.data``)."""
    names = []
    for p in sorted((REPO / "busi").rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported_by_tests() -> set[str]:
    """Every busi module a test module imports (anywhere in it), with the packages above it."""
    imported: set[str] = set()
    for test in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(test.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]  # from busi.data import scan
            else:
                continue
            for name in names:
                parts = name.split(".")
                imported.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return imported


def test_every_module_is_imported_by_a_test_or_says_which_test_holds_it() -> None:
    modules, imported = _busi_modules(), _imported_by_tests()
    untested = [m for m in modules if m not in imported and m not in TESTED_WITHOUT_IMPORT]
    assert not untested, (f"no test module imports {untested}: add tests/test_<name>.py (or tests to the test "
                          "module of its feature), or name the test that holds it in TESTED_WITHOUT_IMPORT")
    stale = sorted(m for m in TESTED_WITHOUT_IMPORT if m not in modules or m in imported)
    assert not stale, f"TESTED_WITHOUT_IMPORT: {stale} are gone or imported by a test now; remove them"
    for module, (test, how) in TESTED_WITHOUT_IMPORT.items():
        assert (REPO / "tests" / f"{test}.py").is_file() and how, f"{module}: {test}.py does not exist"


def test_allowed_values_have_one_definition() -> None:
    from busi import cli_args
    from busi.config import schema
    from busi.model.export import FORMATS
    from busi.model.backbones import TABLE, UNFREEZE_STAGE

    assert set(UNFREEZE_STAGE) == set(schema.UNFREEZE_MODES)
    assert tuple(TABLE) == schema.BACKBONES
    assert tuple(FORMATS) == schema.EXPORT_FORMATS
    assert schema.ENGINES == typing.get_args(schema.EngineName)
    parser = cli_args.build_parser()
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
