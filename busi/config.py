"""Job configuration: YAML job files validated into frozen dataclasses.

A job file replaces the cells users edited by hand in the original notebook. Every
key has a type and, where it makes sense, a default; unknown keys, missing required
keys, wrong types and out-of-range values raise ``ConfigError`` naming the key path
(``train.head.epochs: expected a positive integer, got 'ten'``).

Values may reference the environment: ``${VAR}`` (an error if VAR is unset) and
``${VAR:-default}``. ``$${`` stands for a literal ``${``. A value that is one whole
``${...}`` expression is re-read as YAML, so ``cores: ${SLURM_CPUS_PER_TASK:-auto}``
gives the integer 4 or the string ``auto``.

Several job files layer left to right (``load_config([base, site])``): mappings deep-merge,
anything else replaces; then command-line flags, then ``--set``. ``Layered`` remembers which
layer set each key, so an error names the file that set the bad key and ``explain_config``
lists every resolved key with its source.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from busi.errors import ConfigError
from busi.safeio import NotRegularFile, read_regular_file

# --------------------------------------------------------------------------- schema


def _opt(default: Any = dataclasses.MISSING, *, doc: str = "", **check: Any) -> Any:
    """A dataclass field with validation metadata (min, max, min_items, ...) and a doc line.
    ``limit``: an upper bound no real job reaches, which stops typos (``epochs: 1e30``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"doc": doc, **check})


ResizeMode = Literal["stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = typing.get_args(ResizeMode)  # also what a model's preprocessing.json may say

MAX_EPOCHS = 1_000_000  # far beyond any real run; bounds what a typo (1e30) can ask for


def _archive_members() -> Any:
    return _opt(200_000, min=1, doc="refuse archives with more members")


def _archive_bytes() -> Any:
    return _opt(20 * 1024**3, min=1, doc="refuse archives that unpack to more bytes")


def _archive_ratio() -> Any:
    return _opt(100, min=1, doc="refuse archives that unpack to more than this many times their size (floor 64 MiB)")


@dataclass(frozen=True)
class SplitFractions:
    train: float = _opt(0.7, min=0.0, max=1.0, doc="fraction of each class for training")
    val: float = _opt(0.15, min=0.0, max=1.0, doc="fraction for validation (best epoch, early stop)")
    test: float = _opt(0.15, min=0.0, max=1.0, doc="fraction held out for metrics.json")


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _opt(True, doc="random horizontal flip")
    rotation: float = _opt(0.05, min=0.0, max=0.5, doc="max rotation, fraction of a full turn")
    zoom: float = _opt(0.1, min=0.0, max=0.9, doc="max zoom in/out, fraction")
    brightness: float = _opt(0.1, min=0.0, max=1.0, doc="max brightness shift, fraction of range")
    contrast: float = _opt(0.1, min=0.0, max=1.0, doc="max contrast change, fraction")


@dataclass(frozen=True)
class DataConfig:
    source: str = _opt(doc="folder, .zip or .tar(.gz) holding <class>/ folders (top or one level down)")
    classes: tuple[str, ...] = _opt(
        ("normal", "benign", "malignant"), min_items=2, unique=True,
        doc="class folder names; their order gives the label index (0, 1, 2, ...)",
    )
    image_size: int = _opt(224, min=32, max=1024, doc="side of the square model input, pixels")
    resize: ResizeMode = _opt("stretch", doc="stretch (as the notebook did) or pad to keep aspect")
    staging_dir: Union[str, None] = _opt(None, doc="where archives unpack; default $TMPDIR/busi-staging")
    max_archive_members: int = _archive_members()
    max_archive_bytes: int = _archive_bytes()
    max_archive_ratio: int = _archive_ratio()
    dedupe: Literal["none", "exact", "near"] = _opt("near", doc="group duplicate images so no group straddles splits")
    near_threshold: int = _opt(6, min=0, max=32, doc="max Hamming distance of 63-bit perceptual hashes")
    conflicts: Literal["drop", "keep"] = _opt("drop", doc="duplicate groups whose members carry different labels")
    split: SplitFractions = _opt(SplitFractions())
    splits: Union[str, None] = _opt(None, doc="a splits.csv (path,label,group,split) to reuse instead of splitting")
    augment: AugmentConfig = _opt(AugmentConfig())
    cache: bool = _opt(True, doc="cache decoded, resized images in memory after the first epoch")


@dataclass(frozen=True)
class ModelConfig:
    weights: str = _opt("imagenet", doc="imagenet (staged locally), a path to a weights file, or none")
    dropout: float = _opt(0.3, min=0.0, max=0.95, doc="dropout before the classifier")
    pooling: Literal["avg", "max"] = _opt("avg", doc="global pooling of backbone features")
    batchnorm: Literal["frozen", "train"] = _opt(
        "frozen", doc="frozen: BatchNorm in inference mode in every phase (pretrained); train: from scratch"
    )


@dataclass(frozen=True)
class PhaseConfig:
    epochs: int = _opt(10, min=0, limit=MAX_EPOCHS, doc="epochs of this phase (0 skips it)")
    learning_rate: float = _opt(1e-3, min=0.0, exclusive_min=True, doc="Adam learning rate")
    patience: int = _opt(5, min=1, limit=MAX_EPOCHS, doc="epochs without improvement of train.monitor before stopping")
    unfreeze: Literal["none", "conv5", "conv4", "all"] = _opt(
        "none", doc="backbone blocks made trainable in this phase"
    )


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _opt(32, min=1, max=4096, doc="images per step (per rank under Horovod)")
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = _opt(
        "auto", doc="auto: bf16 on CPUs with AMX/AVX512-BF16, fp16 on GPUs, else float32"
    )
    class_weights: Literal["balanced", "none"] = _opt("balanced", doc="weight the loss by inverse class frequency")
    monitor: Literal["val_loss", "val_accuracy"] = _opt("val_loss", doc="metric that picks the best epoch")
    head: PhaseConfig = _opt(PhaseConfig(epochs=10, learning_rate=1e-3, unfreeze="none"))
    finetune: PhaseConfig = _opt(PhaseConfig(epochs=10, learning_rate=1e-5, unfreeze="conv5"))
    scale_lr: bool = _opt(
        True, doc="multiply each phase's learning_rate by the number of ranks (the global batch is that much bigger)"
    )
    warmup_epochs: int = _opt(
        0, min=0, limit=MAX_EPOCHS, doc="head-phase epochs that ramp linearly from learning_rate to the scaled rate (0: none)"
    )
    feature_cache: Literal["none", "once", "variants"] = _opt(
        "once",
        doc="frozen layers (the whole backbone in the head phase, conv1-conv4 when fine-tuning conv5): "
        "compute their output once per image (once, unaugmented), once per augmentation variant (variants), "
        "or every epoch (none)",
    )
    feature_cache_variants: int = _opt(4, min=1, max=64, doc="augmented copies per image with feature_cache: variants")
    feature_cache_max_gb: float = _opt(
        4.0, min=0.0, doc="memory limit of a phase's feature cache per process; a phase over it runs uncached"
    )
    engine: Literal["auto", "tensorflow", "openvino"] = _opt(
        "auto",
        doc="engine of the frozen layers' forward passes (feature-cache fills) and the test-split evaluation, "
        "in train.precision's precision; auto: OpenVINO on a CPU-only node where it is installed (for a "
        "cache fill only when it is big enough to repay converting), else TensorFlow",
    )
    gradcam_masks: bool = _opt(
        True, doc="score the Grad-CAM heatmap of the true class against the lesion masks of the test images "
        "(busi.explain): share of its energy inside the mask and the pointing-game hit rate",
    )
    calibration: Literal["none", "temperature"] = _opt(
        "none",
        doc="temperature: after training, fit one temperature on the validation split (busi.calibration) and "
        "put it into the model's output layer; test metrics are reported before and after",
    )
    ema: Union[float, None] = _opt(
        None, min=0.5, max=0.99999,
        doc="decay of an exponential moving average of the trained weights (Keras' use_ema), e.g. 0.99; "
        "the averaged weights are validated, kept as best and saved; null: off",
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _opt(doc="the run directory; key it by ${SLURM_JOB_ID} on clusters")


@dataclass(frozen=True)
class RuntimeConfig:
    seed: int = _opt(42, min=0, limit=2**32 - 1, doc="one seed for Python, NumPy, TensorFlow and the split")
    cores: Union[int, Literal["auto"]] = _opt(
        "auto", min=1, limit=65_536, doc="auto: min of affinity mask, cgroup quota, SLURM_CPUS_PER_TASK"
    )
    deterministic: bool = _opt(False, doc="deterministic TF ops: same seed and data give the same metrics")
    distributed: Literal["auto", "none", "horovod"] = _opt(
        "auto", doc="auto: Horovod when a launcher (horovodrun, mpirun, srun --mpi) started several ranks"
    )
    log_all_ranks: bool = _opt(
        False, doc="every rank logs at INFO (debugging a multi-rank run); else only the primary, others warnings"
    )
    walltime: Union[int, str, None] = _opt(
        None, min=1, limit=10**9,
        doc="budget from the start: HH:MM:SS or seconds (YAML reads unquoted 1:00:00 as 3600: same thing), "
        "or auto (BUSI_WALLTIME_END, BUSI_WALLTIME, the Slurm job's end)",
    )
    walltime_margin: float = _opt(60.0, min=0.0, doc="seconds kept free before the walltime for checkpoint and exit")
    signals: tuple[str, ...] = _opt(
        ("SIGTERM", "SIGUSR1", "SIGINT"), doc="signals that checkpoint the run and exit 75"
    )
    checkpoint_minutes: float = _opt(10.0, min=0.0, doc="checkpoint at least this often, mid-epoch too (0: off)")
    checkpoint_epochs: int = _opt(1, min=0, limit=MAX_EPOCHS, doc="checkpoint every N epochs (0: off)")


@dataclass(frozen=True)
class JobConfig:
    data: DataConfig
    output: OutputConfig
    model: ModelConfig = _opt(ModelConfig())
    train: TrainConfig = _opt(TrainConfig())
    runtime: RuntimeConfig = _opt(RuntimeConfig())

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dict (tuples become lists)."""
        return _to_plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class PredictConfig:
    model: str = _opt(doc="a run directory or a model.keras file (labels.json beside it)")
    inputs: tuple[str, ...] = _opt(min_items=1, doc="folders (recursive), files, archives, @list.txt files")
    output: str = _opt("predictions.csv", doc="CSV path; shards write <stem>.part-IIIII-of-NNNNN.csv beside it")
    batch_size: int = _opt(32, min=1, max=4096, doc="images per forward pass")
    include_masks: bool = _opt(False, doc="also predict on *_mask files")
    resume: bool = _opt(False, doc="skip paths already in the output CSV")
    overwrite: bool = _opt(False, doc="replace an existing output CSV")
    shard: str = _opt("auto", doc="auto (array job env vars), none, or I/N")
    gradcam: Union[str, None] = _opt(None, doc="folder for Grad-CAM overlay PNGs, one per image")
    engine: Literal["auto", "tensorflow", "openvino"] = _opt(
        "auto", doc="inference engine; auto: OpenVINO on a CPU-only node where it is installed, else TensorFlow"
    )
    precision: Literal["auto", "float32", "bfloat16"] = _opt(
        "auto", doc="OpenVINO's inference precision; auto: the runtime's fastest on this CPU (bfloat16 on AMX)"
    )
    staging_dir: Union[str, None] = _opt(None, doc="where input archives unpack; default $TMPDIR/busi-staging")
    max_archive_members: int = _archive_members()
    max_archive_bytes: int = _archive_bytes()
    max_archive_ratio: int = _archive_ratio()


@dataclass(frozen=True)
class PredictJobConfig:
    predict: PredictConfig
    runtime: RuntimeConfig = _opt(RuntimeConfig())

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------- loading

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, path: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from env (a default may hold references
    itself: ``${A:-${HOME}/data}``); ``$${`` is a literal ``${``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("${", i) and _NAME.match(text, i + 2):
            value, i = _reference(text, i, path, env)
            out.append(value)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _reference(text: str, start: int, path: str, env: Mapping[str, str]) -> tuple[str, int]:
    """The value of the reference at ``text[start:]`` (``${NAME...}``) and the index after it."""
    m = _NAME.match(text, start + 2)
    assert m is not None
    name, i = m.group(0), m.end()
    default: str | None = None
    if text.startswith(":-", i):
        depth, j = 1, i + 2
        while j < len(text):
            if text.startswith("$${", j):
                j += 3
                continue
            if text.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            if text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if depth:
            raise _key_error(path, f"${{{name}:-...}} is not closed; add the missing }}")
        default, end = text[i + 2 : j], j + 1
    elif text.startswith("}", i):
        end = i + 1
    else:
        raise _key_error(path, f"expected ${{{name}}} or ${{{name}:-default}} in {text!r}")
    value = env.get(name)
    if value is None or (value == "" and default is not None):
        if default is None:
            raise _key_error(
                path, f"environment variable {name} is not set; export it or write ${{{name}:-default}}"
            )
        return interpolate(default, path, env), end
    return value, end


def _is_one_reference(text: str, path: str, env: Mapping[str, str]) -> bool:
    """True when ``text`` is exactly one ``${...}`` reference (its value then keeps YAML typing)."""
    if not (text.startswith("${") and _NAME.match(text, 2)):
        return False
    return _reference(text, 0, path, env)[1] == len(text)


def _interpolate_tree(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, _join(path, k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        whole = _is_one_reference(value, path, env)
        result = interpolate(value, path, env)
        if whole:
            # A value that is one ${...} keeps YAML typing: "4" -> 4, "true" -> True.
            try:
                typed = yaml.safe_load(result) if result.strip() else result
            except yaml.YAMLError:
                return result
            return typed if isinstance(typed, (str, int, float, bool)) or typed is None else result
        return result
    return value


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _key_error(path: str, text: str) -> ConfigError:
    """``path: text``, remembering ``path`` (a layered config names the file that set it)."""
    return ConfigError(f"{path}: {text}", keys=(path,))


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter for job files. It refuses anchors and aliases (``&a`` /
    ``*a``): a job file has no use for them, and they allow a recursive alias or a
    "billion laughs" file that exhausts memory before anything is validated. It refuses a key
    given twice in one mapping, naming both lines (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(problem="anchors and aliases (&name, *name) are not allowed in a job file",
                                       problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: construct_mapping below reports it
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} is given twice in this mapping (lines {seen[key].line + 1} and "
                            f"{key_node.start_mark.line + 1}); keep one",
                    problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    p = Path(path)
    try:
        text = read_regular_file(p).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: job file not found") from None
    except NotRegularFile as e:
        raise ConfigError(f"{p}: cannot read job file: it is {e}; give a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read job file: {e}") from None
    try:
        data = yaml.load(text, Loader=_JobLoader)  # noqa: S506 (a SafeLoader: no aliases, no duplicate keys)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: YAML error: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a job file must be a mapping of sections (data, model, train, output, runtime)")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.head.epochs=3`` -> (['train', 'head', 'epochs'], 3); the value is YAML-typed."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.head.epochs=3")
    try:
        value = yaml.load(raw, Loader=_JobLoader) if raw.strip() else ""  # noqa: S506 (safe, stricter)
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


JobFiles = Union[str, Path, Sequence[Union[str, Path]], None]

# Where a value of the resolved config came from (besides a job file's path).
DEFAULT_SOURCE = "default"
SET_SOURCE = "--set"
FLAG_SOURCE = "command line"


def job_files(paths: JobFiles) -> list[Path]:
    """One job file or several (layered left to right) as a list of paths."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


@dataclass
class Layered:
    """The raw job tree after merging its layers, and for each key path a layer set, the layer
    (a job file's path, ``--set`` or ``command line``) whose value is the one that stands."""

    data: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def merge(self, layer: Mapping[str, Any], source: str) -> None:
        """Deep-merge ``layer`` over the tree: a mapping merges into a mapping, anything else
        (a value, a list, null) replaces what was there."""
        _merge_into(self.data, layer, "", source, self.sources)

    def set(self, keys: Sequence[str], value: Any, source: str) -> None:
        """Set one key path (``--set``, a command-line flag), creating missing sections."""
        node = self.data
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = _deepcopy(value)
        _record(self.sources, ".".join(keys), value, source)

    def sources_of(self, key: str) -> list[str]:
        """The layers that set ``key`` (``data.classes[1]`` counts as ``data.classes``): the
        one that set it or a section holding it, else every layer that set a key inside it."""
        key = re.sub(r"\[\d+\]", "", key)
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            hit = self.sources.get(".".join(parts[:n]))
            if hit is not None:
                return [hit]
        inside = [src for k, src in self.sources.items() if k.startswith(key + ".")]
        return list(dict.fromkeys(inside))

    def locate(self, error: ConfigError) -> ConfigError:
        """``error`` with the layers that set its keys in front: ``site.yaml: train.x: ...``."""
        found = list(dict.fromkeys(src for key in error.keys for src in self.sources_of(key) if src))
        if not found:
            return error
        if found == [SET_SOURCE]:
            return ConfigError(f"{SET_SOURCE} {error}", keys=error.keys)  # "--set train.x: expected ..."
        return ConfigError(f"{', '.join(found)}: {error}", keys=error.keys)


def _merge_into(node: dict[str, Any], layer: Mapping[str, Any], prefix: str, source: str,
                sources: dict[str, str]) -> None:
    for k, v in layer.items():
        path = _join(prefix, k)
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            _merge_into(node[k], v, path, source, sources)
        else:
            node[k] = _deepcopy(v)
            _record(sources, path, v, source)


def _record(sources: dict[str, str], path: str, value: Any, source: str) -> None:
    """``path`` now holds ``value`` from ``source``: forget what earlier layers set there."""
    for k in [k for k in sources if k == path or k.startswith(path + ".")]:
        del sources[k]
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _record(sources, _join(path, k), v, source)
    else:
        sources[path] = source


def apply_overrides(data: dict[str, Any], overrides: Sequence[str],
                    settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return a copy of data with ``settings`` (``{"key.path": value}``, already typed: the
    command-line flags) and then each ``--set key.path=value`` (YAML-typed) applied in order."""
    layered = Layered()
    layered.merge(data, "")
    _apply(layered, overrides, settings)
    return layered.data


def _apply(layered: Layered, overrides: Sequence[str], settings: Mapping[str, Any] | None) -> None:
    for key, value in (settings or {}).items():
        layered.set(key.split("."), value, FLAG_SOURCE)
    for item in overrides:
        keys, value = parse_override(item)
        layered.set(keys, value, SET_SOURCE)


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def resolve_layers(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Layered:
    """The job files merged left to right (or ``base`` without any), then ``settings`` (the
    command-line flags), then each ``--set``; then the environment interpolated."""
    layered = Layered()
    files = job_files(paths)
    if not files and base:
        layered.merge(base, "")  # a program's own starting values: not named in errors
    for f in files:
        layered.merge(read_yaml(f), str(f))
    _apply(layered, overrides, settings)
    try:
        layered.data = _interpolate_tree(layered.data, "", os.environ if env is None else env)
    except ConfigError as e:
        raise layered.locate(e) from None
    return layered


def _build_located(cls: type, layered: Layered) -> Any:
    """``build`` + the checks across keys, errors naming the layer that set the bad key."""
    try:
        cfg = build(cls, layered.data, "")
        if isinstance(cfg, JobConfig):
            validate_semantics(cfg)
        else:
            check_signals(cfg.runtime.signals)
    except ConfigError as e:
        raise layered.locate(e) from None
    return cfg


def load_config(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> JobConfig:
    """Read a training job file, or several layered left to right (or start from ``base``),
    apply ``--set`` overrides, interpolate the environment, and validate against the schema."""
    return _build_located(JobConfig, resolve_layers(paths, overrides, env, base))


def load_predict_config(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> PredictJobConfig:
    """Like ``load_config`` for a prediction job file (a ``predict:`` section). ``settings``:
    ``{"predict.output": ...}`` from command-line flags, over the files, under ``--set``."""
    return _build_located(PredictJobConfig, resolve_layers(paths, overrides, env, base, settings))


def job_kind(paths: JobFiles) -> str:
    """``predict`` when one of the job files has a ``predict:`` section, else ``train``."""
    return "predict" if any("predict" in read_yaml(p) for p in job_files(paths)) else "train"


def explain_config(
    paths: JobFiles, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None,
) -> list[tuple[str, Any, str]]:
    """Every key of the resolved config, ``(key.path, value, source)`` in schema order; source:
    the job file, ``--set`` or ``default`` that gave the value."""
    layered = resolve_layers(paths, overrides, env)
    cls = PredictJobConfig if job_kind(paths) == "predict" else JobConfig
    cfg = _build_located(cls, layered)
    rows = []
    for key, value in _flat(cfg.to_dict()):
        found = layered.sources_of(key)
        rows.append((key, value, found[0] if len(found) == 1 else DEFAULT_SOURCE))
    return rows


def format_explain(rows: Sequence[tuple[str, Any, str]]) -> str:
    """``explain_config`` as aligned lines: ``key: value   # source``."""
    cells = [(f"{key}: {json.dumps(value, ensure_ascii=False)}", source) for key, value, source in rows]
    width = max((len(c) for c, _ in cells), default=0)
    return "".join(f"{c:<{width}}  # {source}\n" for c, source in cells)


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in value.items() for kv in _flat(v, _join(prefix, k))]
    return [(prefix, value)]


def dump_config(cfg: JobConfig | PredictJobConfig) -> str:
    """The resolved config as YAML, in schema order. A literal ``${`` is written as ``$${``,
    so loading the dump gives the same config."""
    return yaml.safe_dump(_escape_dollar(cfg.to_dict()), sort_keys=False, default_flow_style=False)


def _escape_dollar(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape_dollar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_dollar(v) for v in value]
    return value.replace("${", "$${") if isinstance(value, str) else value


# -------------------------------------------------------------------- validation


def build(cls: type, data: Any, path: str) -> Any:
    """Validate ``data`` against dataclass ``cls``; errors name the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<job>'}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise _key_error(_join(path, key), f"unknown key; known keys here: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
                kwargs[name] = build(hints[name], {}, key_path)  # a missing section: name its missing key
                continue
            if f.default is dataclasses.MISSING:
                raise _key_error(key_path, f"missing required key ({f.metadata.get('doc', '')})")
            if dataclasses.is_dataclass(f.default):
                kwargs[name] = f.default
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            # A section starts from the field's own default (phases differ in defaults).
            default = f.default if dataclasses.is_dataclass(f.default) else None
            kwargs[name] = _build_section(tp, data[name], key_path, default)
        else:
            kwargs[name] = _check(data[name], tp, key_path, f.metadata)
    return cls(**kwargs)


def _build_section(tp: type, value: Any, path: str, default: Any) -> Any:
    if value is None:
        value = {}
    if default is None or not isinstance(value, dict):
        return build(tp, value, path)
    merged = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(tp)}, **value}
    # nested dataclass defaults are instances, which build() accepts as already valid
    return build(tp, {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in merged.items()}, path)


def _check(value: Any, tp: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check(value, opt, path, meta)
            except ConfigError:
                continue
        raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and isinstance(value, str):
            return value
        raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
        items = tuple(_check(v, item_tp, f"{path}[{i}]", {}) for i, v in enumerate(value))
        if len(items) < meta.get("min_items", 0):
            raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
        if meta.get("unique") and len(set(items)) != len(items):
            raise _key_error(path, f"entries must be unique, got {_show(value)}")
        return items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _key_error(path, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
        _range(value, path, tp, meta)
        return value
    if tp is float:
        if isinstance(value, str) and _SCI_NUMBER.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; users mean a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise _key_error(path, f"expected {_describe(tp, meta)} (finite), got {_show(value)}")
        _range(number, path, tp, meta)
        return number
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise _key_error(path, f"expected a non-empty string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")  # a bug in the schema, not user input


_SCI_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _range(value: float, path: str, tp: Any, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    bad = (lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo))) or (
        hi is not None and value > hi
    )
    if bad:
        raise _key_error(path, f"expected {_describe(tp, meta)}, got {_show(value)}")
    limit = meta.get("limit")  # a bound no real job reaches: it only stops typos (1e30 epochs)
    if limit is not None and value > limit:
        raise _key_error(path, f"expected at most {limit:,}, got {_show(value)}")


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [_describe(o, meta) for o in typing.get_args(tp) if o is not type(None)]
        text = " or ".join(parts)
        return text + (" or null" if type(None) in typing.get_args(tp) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is tuple:
        n = meta.get("min_items", 0)
        return f"a list of at least {n} names" if n else "a list of names"
    lo, hi = meta.get("min"), meta.get("max")
    if tp is int:
        if lo == 1 and hi is None:
            return "a positive integer"
        if lo == 0 and hi is None:
            return "a non-negative integer"
        if lo is not None and hi is not None:
            return f"an integer from {lo} to {hi}"
        return "an integer"
    if tp is float:
        if meta.get("exclusive_min") and lo == 0 and hi is None:
            return "a positive number"
        if lo is not None and hi is not None:
            return f"a number from {lo} to {hi}"
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    return str(tp)


def _show(value: Any) -> str:
    return "nothing (null)" if value is None else repr(value)


# ------------------------------------------------------------------ derived values


UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")


def check_signals(names: Sequence[str]) -> None:
    """``runtime.signals``: names of signals a handler can catch (SIGKILL and SIGSTOP cannot be)."""
    import signal as _signal

    for name in names:
        if name not in _signal.Signals.__members__:
            raise ConfigError(f"runtime.signals: {name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)",
                              keys=("runtime.signals",))
        if name in UNCATCHABLE_SIGNALS:
            raise ConfigError(f"runtime.signals: {name} cannot be caught by any program; list signals such as "
                              "SIGTERM, SIGUSR1, SIGINT", keys=("runtime.signals",))


def validate_semantics(cfg: JobConfig) -> None:
    """Checks that span several keys."""
    s = cfg.data.split
    total = s.train + s.val + s.test
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split: train + val + test must sum to 1, got {s.train} + {s.val} + {s.test} = {total:g}",
            keys=("data.split",),
        )
    if s.train <= 0:
        raise _key_error("data.split.train", "expected a number above 0")
    walltime = cfg.runtime.walltime
    if isinstance(walltime, str) and walltime != "auto":
        from busi.stopper import parse_hms

        try:
            parse_hms(walltime)
        except ConfigError as e:
            raise ConfigError(str(e), keys=("runtime.walltime",)) from None
    check_signals(cfg.runtime.signals)
    for name in cfg.data.classes:
        if name in (".", "..") or "/" in name or "\0" in name or name != name.strip() or name.startswith("."):
            raise ConfigError(
                f"data.classes: {name!r} is not a folder name; each class is one folder directly under the "
                "dataset root (no '/', not '.', '..' or hidden, no leading or trailing spaces)",
                keys=("data.classes",),
            )
    if cfg.train.head.epochs + cfg.train.finetune.epochs == 0:
        raise ConfigError("train.head.epochs, train.finetune.epochs: at least one phase needs epochs > 0",
                          keys=("train.head.epochs", "train.finetune.epochs"))
    if cfg.train.warmup_epochs > cfg.train.head.epochs:
        raise ConfigError(
            f"train.warmup_epochs: the warmup ramps the head phase, so it needs at most train.head.epochs "
            f"({cfg.train.head.epochs}) epochs, got {cfg.train.warmup_epochs}",
            keys=("train.warmup_epochs", "train.head.epochs"),
        )
