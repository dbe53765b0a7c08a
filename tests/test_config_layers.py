"""Tests for layered job files (busi.config): several files merged left to right (mappings
deep-merged, lists replaced), then command-line flags, then --set; ``--explain`` sources;
errors that name the file that set the bad key; the shipped overlays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from busi import cli
from busi.config.layers import DEFAULT_SOURCE, SET_SOURCE
from busi.config.load import (
    explain_config,
    format_explain,
    load_any,
    load_config,
    load_predict_config,
    resolve_layers,
)
from busi.config.schema import PredictJobConfig
from busi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "data": {"source": "data/busi", "classes": ["normal", "benign", "malignant"],
             "split": {"train": 0.7, "val": 0.15, "test": 0.15}},
    "train": {"batch_size": 32, "head": {"epochs": 10, "learning_rate": 1e-3}},
    "output": {"dir": "runs/base"},
}


def _write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return _write(tmp_path / "base.yaml", BASE)


def test_mappings_deep_merge_and_later_files_win(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"head": {"epochs": 2}}, "output": {"dir": "runs/site"}})
    cfg = load_config([base, site], env={})
    assert cfg.train.head.epochs == 2  # the overlay's
    assert cfg.train.head.learning_rate == 1e-3  # the base's sibling key survives
    assert cfg.train.batch_size == 32
    assert cfg.output.dir == "runs/site"
    # the other order: the base wins
    assert load_config([site, base], env={}).train.head.epochs == 10


def test_lists_are_replaced_not_merged(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"data": {"classes": ["benign", "malignant"]}})
    assert load_config([base, site], env={}).data.classes == ("benign", "malignant")


def test_null_in_an_overlay_resets_a_key_to_its_default(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"head": None}})
    cfg = load_config([base, site], env={})
    assert cfg.train.head.epochs == 10 and cfg.train.head.learning_rate == 1e-3  # the schema's defaults
    assert cfg.train.batch_size == 32


def test_set_applies_after_every_file(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"head": {"epochs": 2}}})
    cfg = load_config([base, site], ["train.head.epochs=5"], env={})
    assert cfg.train.head.epochs == 5


def test_flags_sit_between_the_files_and_set(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {"predict": {"model": "m", "inputs": ["x"], "output": "a.csv"}})
    b = _write(tmp_path / "b.yaml", {"predict": {"batch_size": 8}})
    cfg = load_predict_config([a, b], env={}, settings={"predict.output": "flag.csv"})
    assert cfg.predict.output == "flag.csv" and cfg.predict.batch_size == 8 and cfg.predict.inputs == ("x",)
    cfg = load_predict_config([a, b], ["predict.output=set.csv"], env={}, settings={"predict.output": "flag.csv"})
    assert cfg.predict.output == "set.csv"


def test_environment_is_interpolated_after_merging(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"output": {"dir": "/scratch/${USER_X}/run"}})
    assert load_config([base, site], env={"USER_X": "ana"}).output.dir == "/scratch/ana/run"


def test_explain_names_the_source_of_every_key(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"head": {"epochs": 2}}})
    rows = {key: (value, source) for key, value, source in
            explain_config([base, site], ["train.batch_size=8"], env={})}
    assert rows["train.head.epochs"] == (2, str(site))
    assert rows["train.head.learning_rate"] == (1e-3, str(base))
    assert rows["train.batch_size"] == (8, SET_SOURCE)
    assert rows["train.head.patience"] == (5, DEFAULT_SOURCE)
    assert rows["data.classes"] == (["normal", "benign", "malignant"], str(base))
    assert rows["data.split.test"] == (0.15, str(base))
    # every key of the resolved config is listed exactly once
    resolved = load_config([base, site], ["train.batch_size=8"], env={})
    flat = yaml.safe_load(format_explain(explain_config([base, site], ["train.batch_size=8"], env={})))
    assert flat["train.batch_size"] == 8 and len(flat) == len(rows)
    assert flat["output.dir"] == resolved.output.dir


def test_config_explain_on_the_command_line(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"head": {"epochs": 2}}})
    assert cli.main(["config", str(base), str(site), "--explain", "--set", "model.weights=none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if x.startswith("train.head.epochs:"))
    assert line.split("#")[1].strip() == str(site)
    assert next(x for x in lines if x.startswith("model.weights:")).endswith(f"# {SET_SOURCE}")
    assert next(x for x in lines if x.startswith("model.pooling:")).endswith(f"# {DEFAULT_SOURCE}")
    # without --explain: the merged config itself
    assert cli.main(["config", str(base), str(site)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["head"]["epochs"] == 2


def test_a_bad_value_names_the_overlay_that_set_it(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"batch_size": 0}})
    with pytest.raises(ConfigError) as info:
        load_config([base, site], env={})
    assert str(info.value) == f"{site}: train.batch_size: expected an integer from 1 to 4096, got 0"
    # the base's bad value, replaced by a good one, is no error
    bad_base = _write(tmp_path / "bad.yaml", {**BASE, "train": {"batch_size": 0}})
    assert load_config([bad_base, _write(tmp_path / "fix.yaml", {"train": {"batch_size": 4}})], env={})


def test_an_unknown_key_names_its_file(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"train": {"hed": {"epochs": 1}}})
    with pytest.raises(ConfigError, match=rf"^{site}: train\.hed: unknown key"):
        load_config([base, site], env={})


def test_a_bad_set_value_says_set(base: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([base], ["train.batch_size=0"], env={})
    assert str(info.value).startswith("--set train.batch_size: expected an integer")


def test_a_check_across_keys_names_every_file_involved(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"data": {"split": {"test": 0.3}}})
    with pytest.raises(ConfigError) as info:
        load_config([base, site], env={})
    assert str(info.value).startswith(f"{base}, {site}: data.split: train + val + test must sum to 1")


def test_an_unset_variable_names_the_overlay(base: Path, tmp_path: Path) -> None:
    site = _write(tmp_path / "site.yaml", {"output": {"dir": "${NOT_SET_ANYWHERE}/run"}})
    with pytest.raises(ConfigError, match=rf"^{site}: output\.dir: environment variable NOT_SET_ANYWHERE is not set"):
        load_config([base, site], env={})


def test_a_missing_or_broken_overlay_is_named(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gone.yaml: job file not found"):
        load_config([base, tmp_path / "gone.yaml"], env={})
    broken = _write(tmp_path / "broken.yaml", "train: [1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: YAML syntax error"):
        load_config([base, broken], env={})


def test_train_with_layered_files_fails_fast_naming_the_overlay(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI path: exit 2 before any data or TensorFlow work, the message naming the overlay."""
    site = _write(tmp_path / "site.yaml", {"train": {"head": {"epochs": "ten"}}})
    assert cli.main(["train", str(base), str(site)]) == 2
    err = capsys.readouterr().err
    assert f"{site}: train.head.epochs: expected a non-negative integer, got 'ten'" in err
    assert "Traceback" not in err


def test_the_kind_of_job_looks_at_every_layer(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {"runtime": {"cores": 2}})
    b = _write(tmp_path / "b.yaml", {"predict": {"model": "m", "inputs": ["x"]}})
    with pytest.raises(ConfigError, match=r"data\.source: missing required key"):  # alone: a training job
        load_any([a], env={})
    both = load_any([a, b], env={})
    assert isinstance(both, PredictJobConfig) and both.runtime.cores == 2
    assert load_predict_config([a, b], env={}) == both


def test_merge_reads_the_output_of_layered_prediction_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.yaml", {"predict": {"model": "m", "inputs": ["x"], "output": str(tmp_path / "a.csv")}})
    b = _write(tmp_path / "b.yaml", {"predict": {"output": str(tmp_path / "site.csv")}})
    assert cli.main(["merge", str(a), str(b)]) == 3  # no shards yet; the message names b's output
    assert f"{tmp_path / 'site.csv'}: no shard files" in capsys.readouterr().err


def test_sources_forget_what_a_later_layer_replaced(tmp_path: Path) -> None:
    layered = resolve_layers([_write(tmp_path / "a.yaml", {"train": {"head": {"epochs": 3}}}),
                              _write(tmp_path / "b.yaml", {"train": {"head": 1}})], env={})
    assert layered.sources == {"train.head": str(tmp_path / "b.yaml")}
    assert layered.sources_of("train.head.epochs") == [str(tmp_path / "b.yaml")]


# --------------------------------------------------------------- the shipped overlays

OVERLAYS = sorted((REPO / "job" / "overlays").glob("*.yaml"))


def test_overlays_ship() -> None:
    assert {p.name for p in OVERLAYS} >= {"smoke.yaml", "gpu.yaml", "bigmem.yaml", "site-example.yaml"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_layers_over_the_shipped_job(overlay: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("BUSI_", "SLURM_")):
            monkeypatch.delenv(name)
    base = load_config(REPO / "job" / "busi.yaml")
    cfg = load_config([REPO / "job" / "busi.yaml", overlay])
    assert cfg != base, f"{overlay.name} changes nothing"
    rows = explain_config([REPO / "job" / "busi.yaml", overlay])
    assert any(source == str(overlay) for _, _, source in rows)


def test_smoke_overlay_is_a_short_run_in_its_own_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = load_config([REPO / "job" / "busi.yaml", REPO / "job" / "overlays" / "smoke.yaml"])
    assert (cfg.train.head.epochs, cfg.train.finetune.epochs, cfg.data.image_size) == (1, 1, 64)
    assert cfg.output.dir == "runs/smoke-local"
