"""Tests for busi.config: job files -> frozen dataclasses, overrides, interpolation, messages."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from busi.config.load import dump_config, load_config, parse_override, read_yaml
from busi.config.schema import JobConfig
from busi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL: dict[str, Any] = {"data": {"source": "data/busi"}, "output": {"dir": "runs/x"}}


def _load(data: dict[str, Any] | None = None, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> JobConfig:
    return load_config(None, overrides, env=env or {}, base=MINIMAL if data is None else data)


def _error(data: dict[str, Any] | None = None, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(data, overrides, env)
    # An error in a --set value reads "--set KEY: ..." (tests/test_config_layers.py checks where errors
    # point); these tests check what follows.
    message = str(info.value)
    return message.removeprefix("--set ") if info.value.keys else message


def _with(section: str, **values: Any) -> dict[str, Any]:
    """MINIMAL plus one section's values (nested dicts allowed)."""
    data = {k: dict(v) for k, v in MINIMAL.items()}
    data.setdefault(section, {}).update(values)
    return data


# ------------------------------------------------------------------------ schema


def test_spec_keys_exist_with_defaults() -> None:
    cfg = _load()
    assert cfg.data.source == "data/busi"
    assert cfg.data.image_size == 224
    assert cfg.model.weights == "imagenet"
    assert cfg.train.batch_size == 32
    assert cfg.train.head.epochs == 10
    assert cfg.train.finetune.epochs == 10
    assert cfg.output.dir == "runs/x"
    assert cfg.runtime.seed == 42
    assert cfg.runtime.cores == "auto"


def test_default_classes_and_phase_defaults() -> None:
    cfg = _load()
    assert cfg.data.classes == ("normal", "benign", "malignant")
    assert isinstance(cfg.data.classes, tuple)
    # the two phases have different defaults, and a partial section keeps the phase's own ones
    assert (cfg.train.head.learning_rate, cfg.train.head.unfreeze) == (1e-3, "none")
    assert (cfg.train.finetune.learning_rate, cfg.train.finetune.unfreeze) == (1e-5, "conv5")
    partial = _load(_with("train", finetune={"epochs": 3}))
    assert partial.train.finetune == dataclasses.replace(cfg.train.finetune, epochs=3)


def test_config_is_frozen() -> None:
    cfg = _load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 1  # type: ignore[misc]


def test_job_file_values_are_read(write_job) -> None:
    job = write_job(
        {
            "data": {"source": "/d", "classes": ["a", "b"], "image_size": 64, "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
            "model": {"weights": "none", "dropout": 0.5},
            "train": {"batch_size": 8, "head": {"epochs": 0}, "finetune": {"epochs": 2, "learning_rate": 1.0e-4}},
            "output": {"dir": "out"},
            "runtime": {"seed": 7, "cores": 3, "deterministic": True},
        }
    )
    cfg = load_config(job, env={})
    assert cfg.data.classes == ("a", "b")
    assert cfg.data.image_size == 64
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.6, 0.2, 0.2)
    assert cfg.model.weights == "none"
    assert cfg.train.batch_size == 8
    assert (cfg.train.head.epochs, cfg.train.finetune.epochs, cfg.train.finetune.learning_rate) == (0, 2, 1e-4)
    assert (cfg.runtime.seed, cfg.runtime.cores, cfg.runtime.deterministic) == (7, 3, True)


# ---------------------------------------------------------------------- messages


def test_epochs_ten_exact_message(write_job) -> None:
    job = write_job({**MINIMAL, "train": {"head": {"epochs": "ten"}}})
    with pytest.raises(ConfigError) as info:
        load_config(job, env={})
    assert str(info.value) == f"{job}: train.head.epochs: expected a non-negative integer, got 'ten'"
    assert info.value.exit_code == 2


def test_unknown_key_names_path_and_known_keys() -> None:
    msg = _error(_with("train", epochs=5))
    assert msg.startswith("train.epochs: unknown key")
    for known in ("batch_size", "class_weights", "finetune", "head", "monitor", "precision"):
        assert known in msg
    msg = _error({**MINIMAL, "trian": {}})
    assert msg.startswith("trian: unknown key")
    assert "data, evaluate, model, output, runtime, train" in msg
    assert _error(_with("train", head={"epoch": 1})).startswith("train.head.epoch: unknown key")


def test_missing_required_keys() -> None:
    assert _error({"data": {}, "output": {"dir": "o"}}).startswith("data.source: missing required key")
    assert _error({"data": {"source": "d"}, "output": {}}).startswith("output.dir: missing required key")
    # a whole section left out names the key that is really missing
    assert _error({"data": {"source": "d"}}).startswith("output.dir: missing required key")
    assert _error({"output": {"dir": "o"}}).startswith("data.source: missing required key")


@pytest.mark.parametrize(
    "section, values, expected",
    [
        ("runtime", {"seed": True}, "runtime.seed: expected a non-negative integer, got True"),
        ("train", {"batch_size": 3.5}, "train.batch_size: expected an integer from 1 to 4096, got 3.5"),
        ("train", {"batch_size": "32"}, "train.batch_size: expected an integer from 1 to 4096, got '32'"),
        ("data", {"cache": "yes please"}, "data.cache: expected true or false, got 'yes please'"),
        ("data", {"cache": 1}, "data.cache: expected true or false, got 1"),
        ("data", {"classes": "normal"}, "data.classes: expected a list of at least 2 names, got 'normal'"),
        ("data", {"classes": ["normal"]}, "data.classes: expected a list of at least 2 names, got ['normal']"),
        ("data", {"classes": ["a", "a"]}, "data.classes: entries must be unique, got ['a', 'a']"),
        ("data", {"classes": ["a", True]}, "data.classes[1]: expected a non-empty string, got True"),
        ("data", {"source": ""}, "data.source: expected a non-empty string, got ''"),
        ("data", {"source": None}, "data.source: expected a non-empty string, got nothing (null)"),
        ("data", {"resize": "crop"}, "data.resize: expected one of 'stretch', 'pad', got 'crop'"),
        ("model", {"dropout": "0.3"}, "model.dropout: expected a number from 0.0 to 0.95, got '0.3'"),
        ("runtime", {"cores": "all"}, "runtime.cores: expected a positive integer or one of 'auto', got 'all'"),
        ("data", {"split": [0.7, 0.15, 0.15]}, "data.split: expected a mapping of keys, got [0.7, 0.15, 0.15]"),
    ],
)
def test_wrong_types(section: str, values: dict[str, Any], expected: str) -> None:
    assert _error(_with(section, **values)) == expected


@pytest.mark.parametrize(
    "section, values, expected",
    [
        ("runtime", {"cores": 0}, "runtime.cores: expected a positive integer or one of 'auto', got 0"),
        ("data", {"image_size": 8}, "data.image_size: expected an integer from 32 to 1024, got 8"),
        ("data", {"image_size": 2048}, "data.image_size: expected an integer from 32 to 1024, got 2048"),
        ("train", {"head": {"learning_rate": 0}}, "train.head.learning_rate: expected a positive number, got 0.0"),
        ("train", {"head": {"epochs": -1}}, "train.head.epochs: expected a non-negative integer, got -1"),
        ("data", {"near_threshold": 33}, "data.near_threshold: expected an integer from 0 to 32, got 33"),
        ("data", {"split": {"train": 1.5}}, "data.split.train: expected a number from 0.0 to 1.0, got 1.5"),
    ],
)
def test_out_of_range(section: str, values: dict[str, Any], expected: str) -> None:
    assert _error(_with(section, **values)) == expected


def test_split_fractions_must_sum_to_one() -> None:
    msg = _error(_with("data", split={"train": 0.5, "val": 0.2, "test": 0.2}))
    assert msg.startswith("data.split: train + val + test must sum to 1")
    assert "0.9" in msg
    cfg = _load(_with("data", split={"train": 0.8, "val": 0.2, "test": 0.0}))
    assert cfg.data.split.test == 0.0
    assert _error(_with("data", split={"train": 0.0, "val": 0.5, "test": 0.5})).startswith("data.split.train")


def test_the_positive_class_is_one_of_the_classes() -> None:
    assert _load().evaluate.positive_class is None  # no positive-vs-rest table unless a class is named
    cfg = _load({**MINIMAL, "data": {"source": "d", "classes": ["BI-RADS 3", "BI-RADS 4", "BI-RADS 5"]},
                 "evaluate": {"positive_class": "BI-RADS 5", "target_sensitivity": 0.9}})
    assert cfg.evaluate.positive_class == "BI-RADS 5" and cfg.evaluate.target_sensitivity == 0.9
    with pytest.raises(ConfigError) as info:
        _load(_with("evaluate", positive_class="Malignant"))
    assert info.value.keys[0] == "evaluate.positive_class"
    assert "'Malignant' is not one of data.classes (normal, benign, malignant)" in str(info.value)
    assert _error(_with("evaluate", target_sensitivity=0)).startswith("evaluate.target_sensitivity")


def test_both_phases_zero_epochs_is_an_error() -> None:
    msg = _error(_with("train", head={"epochs": 0}, finetune={"epochs": 0}))
    assert "train.head.epochs, train.finetune.epochs" in msg


def test_yaml_syntax_error_names_file_line_col(tmp_path: Path) -> None:
    job = tmp_path / "bad.yaml"
    job.write_text("data:\n  source: x\n  classes: [normal, benign\noutput:\n  dir: o\n")
    with pytest.raises(ConfigError) as info:
        load_config(job, env={})
    msg = str(info.value)
    assert msg.startswith(f"{job}:4:")
    assert "YAML syntax error" in msg
    job.write_text("data:\n  source: x\n    bad: indent\n")
    with pytest.raises(ConfigError, match=rf"^{job}:3:\d+: YAML syntax error"):
        read_yaml(job)


def test_job_file_not_found_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_config(tmp_path / "nope.yaml", env={})
    job = tmp_path / "list.yaml"
    job.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(job, env={})


# --------------------------------------------------------------------- overrides


def test_set_overrides_are_yaml_typed(write_job) -> None:
    job = write_job({**MINIMAL, "train": {"batch_size": 16}})
    cfg = load_config(
        job,
        [
            "train.head.epochs=3",
            "train.head.learning_rate=0.01",
            "data.classes=[a, b, c, d]",
            "model.weights=none",
            "data.staging_dir=null",
            "runtime.cores=2",
            "runtime.deterministic=true",
            "train.batch_size=64",
        ],
        env={},
    )
    assert cfg.train.head.epochs == 3 and isinstance(cfg.train.head.epochs, int)
    assert cfg.train.head.learning_rate == 0.01
    assert cfg.data.classes == ("a", "b", "c", "d")
    assert cfg.model.weights == "none"  # the string, not null
    assert cfg.data.staging_dir is None
    assert cfg.runtime.cores == 2
    assert cfg.runtime.deterministic is True
    assert cfg.train.batch_size == 64  # a later override wins over the file


def test_set_creates_new_nested_section() -> None:
    cfg = _load(overrides=("data.augment.flip=false", "train.finetune.unfreeze=all"))
    assert cfg.data.augment.flip is False
    assert cfg.data.augment.rotation == 0.05  # the rest of the new section keeps its defaults
    assert cfg.train.finetune.unfreeze == "all"
    assert cfg.train.finetune.learning_rate == 1e-5


def test_set_scalar_as_section_is_error(write_job) -> None:
    job = write_job({**MINIMAL, "train": {"batch_size": 16}})
    with pytest.raises(ConfigError) as info:
        load_config(job, ["train.batch_size.x=1"], env={})
    assert str(info.value) == "--set train.batch_size.x: train.batch_size is not a section"
    # not in the file: the schema still refuses a mapping where a number belongs
    assert _error(overrides=("train.batch_size.x=1",)).startswith("train.batch_size: expected an integer")


def test_set_bad_syntax_and_errors_name_key() -> None:
    for bad in ("train.head.epochs", "=3", "train..epochs=3"):
        assert "expected key.path=value" in _error(overrides=(bad,))
    assert _error(overrides=("train.head.epochs=[1",)).startswith("--set train.head.epochs: value '[1' is not valid YAML")
    assert _error(overrides=("train.head.epochs=ten",)) == "train.head.epochs: expected a non-negative integer, got 'ten'"
    assert _error(overrides=("runtime.colors=2",)).startswith("runtime.colors: unknown key")


def test_parse_override() -> None:
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])


# ----------------------------------------------------------------- interpolation


def test_interpolation_var_and_default(write_job) -> None:
    job = write_job(
        {
            "data": {"source": "${DATA_ROOT}/busi", "staging_dir": "${TMP:-/tmp}/stage"},
            "output": {"dir": "runs/${SLURM_JOB_ID:-local}"},
        }
    )
    cfg = load_config(job, env={"DATA_ROOT": "/scratch"})
    assert cfg.data.source == "/scratch/busi"
    assert cfg.data.staging_dir == "/tmp/stage"
    assert cfg.output.dir == "runs/local"
    cfg = load_config(job, env={"DATA_ROOT": "/d", "TMP": "/local", "SLURM_JOB_ID": "123"})
    assert (cfg.data.staging_dir, cfg.output.dir) == ("/local/stage", "runs/123")


def test_empty_var_uses_default() -> None:
    cfg = _load(_with("output", dir="runs/${JOB:-local}"), env={"JOB": ""})
    assert cfg.output.dir == "runs/local"
    # without a default an empty value stays empty (and here fails the non-empty check)
    assert _error(_with("output", dir="${JOB}"), env={"JOB": ""}) == "output.dir: expected a non-empty string, got ''"


def test_unset_var_without_default_names_variable_and_key() -> None:
    msg = _error(_with("output", dir="runs/${SLURM_JOB_ID}"))
    assert msg.startswith("output.dir: environment variable SLURM_JOB_ID is not set")
    msg = _error(_with("data", classes=["a", "${SECOND}"]))
    assert msg.startswith("data.classes[1]: environment variable SECOND is not set")


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSI_TEST_OUT", "from-env")
    cfg = load_config(None, base=_with("output", dir="${BUSI_TEST_OUT}"))
    assert cfg.output.dir == "from-env"


def test_dollar_dollar_is_literal() -> None:
    cfg = _load(_with("output", dir="runs/$${SLURM_JOB_ID}"), env={"SLURM_JOB_ID": "9"})
    assert cfg.output.dir == "runs/${SLURM_JOB_ID}"
    cfg = _load(_with("output", dir="$${X}-${Y:-y}"), env={})
    assert cfg.output.dir == "${X}-y"


def test_whole_value_is_yaml_typed(write_job) -> None:
    job = write_job({**MINIMAL, "runtime": {"cores": "${C:-auto}", "deterministic": "${DET:-false}"}})
    cfg = load_config(job, env={"C": "4"})
    assert cfg.runtime.cores == 4 and isinstance(cfg.runtime.cores, int)
    assert cfg.runtime.deterministic is False
    cfg = load_config(job, env={"DET": "true"})
    assert cfg.runtime.cores == "auto"
    assert cfg.runtime.deterministic is True
    # part of a longer string stays a string
    assert _error(_with("runtime", seed="1${N:-2}")) == "runtime.seed: expected a non-negative integer, got '12'"


def test_interpolation_through_set_override() -> None:
    cfg = _load(overrides=("runtime.cores=${C:-auto}",), env={"C": "3"})
    assert cfg.runtime.cores == 3


# ------------------------------------------------------------------ dump / files


def _round_trip(cfg: JobConfig, tmp_path: Path) -> JobConfig:
    text = dump_config(cfg)
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    return load_config(path, env={})


def test_dump_config_round_trips(tmp_path: Path) -> None:
    cfg = _load(
        _with("data", classes=["a", "b"], staging_dir="/s", split={"train": 0.8, "val": 0.1, "test": 0.1}),
        overrides=("train.finetune.learning_rate=1.0e-6", "runtime.cores=2", "model.weights=none"),
    )
    again = _round_trip(cfg, tmp_path)
    assert again == cfg
    assert _round_trip(_load(), tmp_path) == _load()
    dumped = yaml.safe_load(dump_config(cfg))
    assert list(dumped) == ["data", "output", "model", "train", "evaluate", "runtime"]
    assert dumped["data"]["classes"] == ["a", "b"]


def test_dump_config_round_trips_literal_dollar_brace(tmp_path: Path) -> None:
    # a resolved literal "${" (written as "$${") must not be re-interpolated on reload
    cfg = _load(_with("output", dir="runs/$${SLURM_JOB_ID}"))
    assert cfg.output.dir == "runs/${SLURM_JOB_ID}"
    assert _round_trip(cfg, tmp_path) == cfg


def test_all_repo_job_files_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BUSI_"):
            monkeypatch.delenv(name)
    jobs = sorted((REPO / "job").glob("*.yaml"))
    assert jobs, "no job/*.yaml files"
    from busi.config.load import load_any, load_predict_config
    from busi.config.schema import PredictJobConfig

    kinds = set()
    for job in jobs:
        cfg = load_any(job)
        kind = "predict" if "predict" in yaml.safe_load(job.read_text()) else "train"  # what the file declares
        kinds.add(kind)
        assert isinstance(cfg, PredictJobConfig if kind == "predict" else JobConfig), job
        load = load_predict_config if kind == "predict" else load_config
        assert load(None, base=yaml.safe_load(dump_config(cfg)), env={}) == cfg
    assert kinds == {"train", "predict"}


def test_demo_job_values() -> None:
    cfg = load_config(REPO / "job" / "demo.yaml", env={})
    assert cfg.data.source == "data/demo"
    assert cfg.output.dir == "runs/demo"
    assert cfg.model.weights == "none"
    assert cfg.data.image_size == 64
    cfg = load_config(REPO / "job" / "demo.yaml", env={"BUSI_DEMO_DATA": "/x", "BUSI_OUTPUT": "/o"})
    assert (cfg.data.source, cfg.output.dir) == ("/x", "/o")


def test_scientific_notation_is_a_number(write_job) -> None:  # type: ignore[no-untyped-def]
    """PyYAML reads `1e-3` as a string (YAML 1.1); a float key takes it as the number users mean."""
    from busi.config.load import load_config

    job = write_job({"data": {"source": "d"}, "output": {"dir": "o"}, "train": {"head": {"learning_rate": "1e-3"}}})
    assert load_config(job).train.head.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="train.head.learning_rate: expected a positive number, got 'fast'"):
        load_config(None, ["data.source=d", "output.dir=o", "train.head.learning_rate=fast"])


@pytest.mark.timeout(20)
def test_a_fifo_job_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="job.yaml: cannot read job file: it is a FIFO"):
        load_config(fifo)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("data:\n  source: x\noutput:\n  dir: y\ntrain:\n  head:\n    epochs: 10\n    epochs: 0\n")
    with pytest.raises(ConfigError, match=r"job.yaml:8:5: .*'epochs' is given twice .*lines 7 and 8"):
        load_config(job)


@pytest.mark.parametrize("text", [
    "data: &r [*r]\n",  # recursive
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n",  # laughs
    "data: &d {source: x}\noutput: {dir: y}\nextra: *d\n",
])
def test_anchors_and_aliases_are_refused_before_anything_is_built(tmp_path: Path, text: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError, match=r"job.yaml:1:\d+: .*anchors and aliases"):
        load_config(job)
    with pytest.raises(ConfigError, match="--set data.classes: .*anchors and aliases"):
        load_config(None, ["data.source=x", "output.dir=y", "data.classes=&r [*r]"])



@pytest.mark.parametrize("override, key", [
    ("train.head.learning_rate=.nan", "train.head.learning_rate"),
    ("train.finetune.learning_rate=.inf", "train.finetune.learning_rate"),
    ("model.dropout=.nan", "model.dropout"),
    ("data.split.train=.nan", "data.split.train"),
    ("data.split.val=-.inf", "data.split.val"),
    ("runtime.walltime_margin=.nan", "runtime.walltime_margin"),
    ("train.feature_cache_max_gb=.inf", "train.feature_cache_max_gb"),
])
def test_nan_and_infinity_are_refused_naming_the_key(override: str, key: str) -> None:
    assert _error(overrides=(override,)).startswith(f"{key}: expected")


@pytest.mark.parametrize("override, expected", [
    ("runtime.seed=4294967296", "runtime.seed: expected at most 4,294,967,295, got 4294967296"),
    ("train.head.epochs=1000000000000000000000000000000", "train.head.epochs: expected at most 1,000,000"),
    ("train.head.learning_rate=1e400", "train.head.learning_rate: expected a positive number (finite)"),
    ("runtime.signals=[SIGKILL]", "runtime.signals: SIGKILL cannot be caught"),
    ("runtime.signals=[SIGTERM, SIGSTOP]", "runtime.signals: SIGSTOP cannot be caught"),
    ("runtime.signals=[SIG_DFL]", "runtime.signals: 'SIG_DFL' is not a signal name"),
    ("data.classes=[/etc, benign]", "data.classes: '/etc' is not a folder name"),
    ("data.classes=[normal, ../x]", "data.classes: '../x' is not a folder name"),
    ("data.classes=[normal, '..']", "data.classes: '..' is not a folder name"),
    ("data.classes=[normal, .hidden]", "data.classes: '.hidden' is not a folder name"),
])
def test_values_that_fail_later_are_refused_now(override: str, expected: str) -> None:
    assert _error(overrides=(override,)).startswith(expected)


def test_the_largest_seed_and_a_long_run_are_accepted() -> None:
    cfg = _load(overrides=("runtime.seed=4294967295", "train.head.epochs=100000"))
    assert cfg.runtime.seed == 2**32 - 1 and cfg.train.head.epochs == 100_000


def test_prediction_jobs_refuse_uncatchable_signals() -> None:
    from busi.config.load import load_predict_config

    with pytest.raises(ConfigError, match="SIGKILL cannot be caught"):
        load_predict_config(None, ("runtime.signals=[SIGKILL]",), env={},
                            base={"predict": {"model": "m", "inputs": ["x"]}})


def test_defaults_may_hold_references_themselves() -> None:
    from busi.config.interpolate import interpolate

    env = {"HOME": "/home/u", "EMPTY": ""}
    assert interpolate("${A:-${HOME}}/data", "k", env) == "/home/u/data"
    assert interpolate("${A:-${B:-${HOME}/x}}", "k", env) == "/home/u/x"
    assert interpolate("${EMPTY:-${HOME}}", "k", env) == "/home/u"
    assert interpolate("${HOME:-${NOT_SET}}", "k", env) == "/home/u"  # an unused default is not looked up
    assert interpolate("$${A:-x}", "k", env) == "${A:-x}"
    with pytest.raises(ConfigError, match="is not set"):
        interpolate("${A:-${NOT_SET}}", "data.source", env)
    with pytest.raises(ConfigError, match=r"data.source: \$\{A:-...\} is not closed"):
        interpolate("${A:-${HOME}", "data.source", env)
    cfg = _load({**MINIMAL, "data": {"source": "${A:-${HOME}/busi}"}}, env=env)
    assert cfg.data.source == "/home/u/busi"


def test_ema_is_off_by_default_and_bounded() -> None:
    assert _load().train.ema is None
    assert _load(overrides=("train.ema=0.999",)).train.ema == 0.999
    assert _error(overrides=("train.ema=0.3",)).startswith("train.ema: expected a number from 0.5 to 0.99999 or null")
    assert _error(overrides=("train.ema=1",)).startswith("train.ema: expected a number from 0.5 to 0.99999")
