"""What ``busi-job evaluate`` evaluates: an external set read the way training reads its data.

Two ways in, one result (``ExternalSet``):

* ``--data SOURCE`` alone: class folders named by the model's classes, top or one level down,
  as before; a set that holds only some of them (benign and malignant images for a
  normal/benign/malignant model) is evaluated on those, the others named as absent.
* job files and ``--set`` (their ``data:`` section only; ``--data`` replaces ``data.source``): a
  label table with its joins, templates and label map (``busi.data.table``), or class folders for
  ``data.classes``; the patients come from ``data.table.group`` or ``data.group_pattern``.
  ``data.classes`` (default: the model's) must be classes of the model: the set's labels are
  the model's output indices, whatever order the job file lists them in.

Images are decoded as the model was trained (its ``preprocessing.json``: size, resize, DICOM
frame and crop), never as the job file's ``data.dicom`` says. The whole set is evaluated: no split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from busi.config.schema import DataConfig, DicomConfig
from busi.data.scan import Sample, ScanResult
from busi.errors import ConfigError, DataError


NO_SET = ("evaluate: give the external set: --data SOURCE (class folders), or a job file whose data: section "
          "reads it (a label table, its joins and label map)")


@dataclass(frozen=True)
class ExternalSet:
    """The samples to evaluate, each with its label as the model's output index and its patient."""

    source: str  # as given (--data or data.source)
    scan: ScanResult
    y_true: tuple[int, ...]  # index in the model's classes, aligned to scan.samples
    patients: tuple[str | None, ...] | None  # aligned to scan.samples; None: no patient source
    patient_source: str | None  # "data.table.group (column 'Case')", "group pattern '^(P\\d+)_'"; None: none
    group_pattern: str | None  # the pattern the patients come from (None: none, or a group column)
    present: tuple[str, ...]  # the model's classes the set has images of, in the model's order
    absent: tuple[str, ...]  # the model's classes it has none of
    table: dict | None = None  # the label table's rows left out, as the training report gives them


def read_external(data: str | None, jobs: Sequence[str], overrides: Sequence[str], model_classes: Sequence[str],
                  dicom: DicomConfig, group_pattern: str | None) -> ExternalSet:
    """The set ``busi-job evaluate`` was given (``data``: ``--data``; ``jobs``/``overrides``: job
    files and ``--set``), labelled in ``model_classes``' order. ``group_pattern``: ``--group-pattern``."""
    if jobs or overrides:
        cfg = data_section(jobs, overrides, data, model_classes)
        return _from_config(cfg, model_classes, dicom, group_pattern)
    if data is None:
        raise ConfigError(NO_SET, keys=("--data",))
    return _from_folders(data, model_classes, dicom, group_pattern)


def data_section(jobs: Sequence[str], overrides: Sequence[str], data: str | None,
                 model_classes: Sequence[str]) -> DataConfig:
    """The ``data:`` section of ``jobs`` layered with ``overrides`` (``data.source`` replaced by
    ``data`` where given; ``data.classes`` the model's where no layer names them); the other
    sections take their defaults and are not used. ConfigError naming the key, as for training."""
    from busi.config.load import load_config

    settings = [*overrides, *([f"data.source={data}"] if data is not None else [])]
    layered = _layers(jobs, settings)
    given = layered.get("data", {}) if isinstance(layered.get("data"), dict) else {}
    if "source" not in given:
        raise ConfigError("evaluate: no data.source in the job files; give --data SOURCE or set data.source",
                          keys=("data.source",))
    extra = [] if "classes" in given else [f"data.classes=[{', '.join(_quoted(c) for c in model_classes)}]"]
    cfg = load_config(list(jobs), [*extra, *settings, "output.dir=."])
    unknown = [c for c in cfg.data.classes if c not in model_classes]
    if unknown:
        raise ConfigError(f"data.classes: {', '.join(repr(c) for c in unknown)} not among the model's classes "
                          f"({', '.join(model_classes)}); list the model's names (a label_map maps the set's labels "
                          "to them)", keys=("data.classes",))
    return cfg.data


def _layers(jobs: Sequence[str], settings: Sequence[str]) -> dict:
    from busi.config.load import resolve_layers

    return resolve_layers(list(jobs), list(settings)).data


def _quoted(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def _from_config(cfg: DataConfig, model_classes: Sequence[str], dicom: DicomConfig,
                 group_pattern: str | None) -> ExternalSet:
    from busi.data.archives import ArchiveLimits
    from busi.data.prepare import table_report
    from busi.data.scan import scan_dataset
    from busi.data.staging import stage_source
    from busi.data.table import read_table

    root = stage_source(cfg.source, cfg.staging_dir, ArchiveLimits.from_config(cfg))
    patients: tuple[str | None, ...] | None = None
    source = None
    report = None
    if cfg.table is not None:
        table = read_table(root, cfg.table, cfg.classes, dicom)
        scan, report = table.scan, table_report(table)
        if cfg.table.group is not None:
            patients, source = table.patients, f"data.table.group (column {cfg.table.group!r})"
    else:
        scan = scan_dataset(root, cfg.classes, dicom=dicom)
    pattern = group_pattern or (cfg.group_pattern if patients is None else None)
    if pattern is not None:
        patients, source = _patients(scan.samples, pattern), f"group pattern {pattern!r}"
    return _labelled(cfg.source, scan, model_classes, patients, source, pattern, report)


def _from_folders(data: str, model_classes: Sequence[str], dicom: DicomConfig, group_pattern: str | None) -> ExternalSet:
    from busi.data.scan import find_dataset_root, scan_dataset
    from busi.data.staging import stage_source

    root = stage_source(data)
    base = find_dataset_root(root, model_classes)  # DataError where no class folder of the model's is there
    present = [c for c in model_classes if (base / c).is_dir()]
    scan = scan_dataset(base, present, dicom=dicom)
    patients = _patients(scan.samples, group_pattern) if group_pattern else None
    return _labelled(data, scan, model_classes, patients, f"group pattern {group_pattern!r}" if group_pattern else None,
                     group_pattern, None)


def _patients(samples: Sequence[Sample], pattern: str) -> tuple[str | None, ...]:
    from busi.data.dedupe import patients_from_names

    return tuple(patients_from_names([s.path for s in samples], pattern))


def _labelled(source: str, scan: ScanResult, model_classes: Sequence[str], patients: tuple[str | None, ...] | None,
              patient_source: str | None, pattern: str | None, table: dict | None) -> ExternalSet:
    if not scan.samples:
        raise DataError(source, f"no images of the model's classes ({', '.join(model_classes)}) to evaluate")
    y = tuple(model_classes.index(s.label) for s in scan.samples)
    present = tuple(c for i, c in enumerate(model_classes) if i in set(y))
    absent = tuple(c for c in model_classes if c not in present)
    return ExternalSet(source, scan, y, patients, patient_source, pattern, present, absent, table)
