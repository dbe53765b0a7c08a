"""The schema of job files: frozen dataclasses, one per section, each key with its type,
default, bounds and a ``doc`` line (the configuration reference in the docs is generated from
these lines: one source, no hand-kept copy).

Every list of allowed values is a ``Literal`` alias here, and every other module derives its
choices from it (``typing.get_args``): the command line's ``choices``, the engines, the model's
unfreeze table. Nothing here imports beyond the standard library.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from busi.config.tree import map_leaves


def _opt(default: Any = dataclasses.MISSING, *, doc: str = "", **check: Any) -> Any:
    """A dataclass field with validation metadata (min, max, min_items, ...) and a doc line.
    ``limit``: an upper bound no real job reaches, which stops typos (``epochs: 1e30``);
    ``names``: a name (a class, a column, a sheet) that YAML may read as a number (``2``: ``"2"``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"doc": doc, **check})


# ----------------------------------------------------------------- allowed values

ResizeMode = Literal["stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = typing.get_args(ResizeMode)  # also what a model's preprocessing.json may say
# top: the backbone's stride-32 stage; top2: its last two stages; conv5 and conv4 are their ResNet50 names
Unfreeze = Literal["none", "top", "top2", "conv5", "conv4", "all"]
UNFREEZE_MODES: tuple[str, ...] = typing.get_args(Unfreeze)  # busi.model.backbones.UNFREEZE_STAGE's keys
BackboneName = Literal["resnet50", "mobilenet", "mobilenet_v2", "efficientnet_b0", "efficientnet_b1",
                       "efficientnet_b2", "efficientnet_b3", "convnext_tiny"]
BACKBONES: tuple[str, ...] = typing.get_args(BackboneName)  # busi.model.backbones.TABLE's keys
TrainPrecision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
POLICIES: tuple[str, ...] = typing.get_args(TrainPrecision)[1:]  # Keras dtype policies (bench measures them)
EngineName = Literal["auto", "tensorflow", "openvino"]
ENGINES: tuple[str, ...] = typing.get_args(EngineName)
InferencePrecision = Literal["auto", "float32", "bfloat16", "int8"]
INFERENCE_PRECISIONS: tuple[str, ...] = typing.get_args(InferencePrecision)
# the precisions measured against float32 by an accuracy contract (model/precisions.json's keys)
CONTRACT_PRECISIONS: tuple[str, ...] = tuple(p for p in INFERENCE_PRECISIONS if p not in ("auto", "float32"))
Distributed = Literal["auto", "none", "horovod"]
DISTRIBUTED_MODES: tuple[str, ...] = typing.get_args(Distributed)
ExportFormat = Literal["openvino", "saved_model"]
EXPORT_FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)  # busi-job export --format
ExportPrecision = Literal["float32", "int8"]
EXPORT_PRECISIONS: tuple[str, ...] = typing.get_args(ExportPrecision)  # busi-job export --precision
TTA = Literal["none", "flip"]  # predict.tta (busi.model.ensemble)
TTA_MODES: tuple[str, ...] = typing.get_args(TTA)
DedupeMode = Literal["none", "exact", "near"]
Quantize = Literal["int8", "none"]
DicomFrame = Literal["first", "middle", "all"]
DICOM_FRAMES: tuple[str, ...] = typing.get_args(DicomFrame)  # which frames of a multi-frame DICOM (busi.data.dicom)
DICOM_ONE_FRAME: tuple[str, ...] = ("first", "middle")  # the policies that read one frame a file
DEFAULT_CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")  # BUSI's folders (synth writes them too)

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
    shift: float = _opt(0.0, min=0.0, max=0.5, doc="max shift up/down and left/right, fraction of the side")
    speckle: float = _opt(0.0, min=0.0, max=1.0, doc="multiplicative noise, x * (1 + speckle * N(0, 1)) per pixel: "
                          "ultrasound's speckle differs between machines and settings")


@dataclass(frozen=True)
class JoinConfig:
    file: str = _opt(doc="another table (CSV, TSV or .xlsx) relative to data.source, whose columns join the label "
                     "table's rows (BUS-BRA: 5-fold-cv.csv beside bus_data.csv)")
    column: str = _opt(names=True, doc="the label table's column whose value finds each row's match in this file")
    file_column: Union[str, None] = _opt(None, names=True, doc="this file's column holding that value; null: the one named "
                                         "by column")
    sheet: Union[str, None] = _opt(None, names=True, doc="the worksheet of a spreadsheet; null: its first")


@dataclass(frozen=True)
class TableConfig:
    file: str = _opt(doc="the label table, relative to data.source (a folder or an archive holding the table and "
                     "the images): CSV or TSV (the delimiter is sniffed, Excel's UTF-8 BOM is fine) or an Excel "
                     "workbook (.xlsx, .xlsm)")
    path: str = _opt(names=True, doc="the column holding each image's path, relative to the table's folder")
    label: str = _opt(names=True, doc="the column holding each image's class (one of data.classes, or a key of label_map; "
                      "case and spacing are ignored)")
    sheet: Union[str, None] = _opt(None, names=True, doc="the worksheet of a workbook that holds the table; null: its first")
    join: tuple[JoinConfig, ...] = _opt((), doc="more tables whose columns join each row by a key column (rows "
                                        "without a match are left out and listed)")
    label_map: Union[dict[str, str], None] = _opt(
        None, doc="the class each label value stands for ({B: benign, M: malignant}; BI-RADS {2: benign, "
        "4a: malignant}); values not in it must name a class; null: the labels are class names")
    path_format: str = _opt("{}", doc="the image path made from the path column's value, {} standing for it, with "
                            "a format spec where one is needed (BUS-BRA: Images/{}.png; UDIAT B: original/{:06d}.png)")
    path_replace: tuple[str, ...] = _opt((), doc="[PATTERN, REPLACEMENT]: a regular-expression substitution made "
                                         "in the path column's value before path_format")
    group: Union[str, None] = _opt(None, names=True, doc="the column holding the patient (group) of each image: a patient "
                                   "never sits on two sides of a split or in two cv folds; null: data.group_pattern")
    masks: tuple[str, ...] = _opt((), names=True, doc="columns holding lesion-mask paths (relative to the table's folder), or "
                                  "the ID they are made from with mask_format and mask_replace")
    mask_format: str = _opt("{}", doc="each mask path made from a mask cell, as path_format (BUS-BRA: Masks/{}.png)")
    mask_replace: tuple[str, ...] = _opt((), doc="[PATTERN, REPLACEMENT] substituted in a mask cell before "
                                         "mask_format (BUS-BRA: ['^bus_', 'mask_'])")
    mask_separator: Union[str, None] = _opt(None, doc="the text between several mask names in one cell "
                                            "(BrEaST: '&'); null: a cell names one mask")
    split: Union[str, None] = _opt(None, names=True, doc="a column of predefined splits (train, val or test) used instead of "
                                   "data.split; null: busi splits")
    fold: Union[str, None] = _opt(None, names=True, doc="a column of predefined cross-validation folds that busi-job cv uses "
                                  "instead of assigning folds (--folds must match their number)")


@dataclass(frozen=True)
class DicomConfig:
    frame: DicomFrame = _opt(
        "first", doc="the frames of a multi-frame DICOM (a cine loop) to read: first, middle, or all (each frame "
        "its own sample, the frames of a loop on one side of the split, and in prediction its own row)",
    )
    crop_to_region: bool = _opt(
        False, doc="crop to the largest region of the header's Sequence of Ultrasound Regions (leaves out "
        "burned-in text and rulers); the whole frame where there is none",
    )


@dataclass(frozen=True)
class DataConfig:
    source: str = _opt(doc="folder, .zip or .tar(.gz) holding <class>/ folders (top or one level down), or the "
                       "images and the label table of data.table")
    table: Union[TableConfig, None] = _opt(None, doc="labels (and patients) from a table instead of class folders; "
                                           "null: class folders")
    group_pattern: Union[str, None] = _opt(
        None, doc="a regular expression whose group named 'group' (else its first group) taken from each image's "
        "file name is the patient, e.g. ^(bus_\\d+) or ^(?P<group>[A-Z]+)_\\d+; null: data.table.group or none",
    )
    classes: tuple[str, ...] = _opt(
        DEFAULT_CLASSES, min_items=2, unique=True, names=True,
        doc="class folder names (or data.table's label values); their order gives the label index (0, 1, 2, ...)",
    )
    image_size: int = _opt(224, min=32, max=1024, doc="side of the square model input, pixels")
    resize: ResizeMode = _opt("stretch", doc="stretch (as the notebook did) or pad to keep aspect")
    staging_dir: Union[str, None] = _opt(None, doc="where archives unpack; default $TMPDIR/busi-staging")
    max_archive_members: int = _archive_members()
    max_archive_bytes: int = _archive_bytes()
    max_archive_ratio: int = _archive_ratio()
    dedupe: DedupeMode = _opt("near", doc="group duplicate images so no group straddles splits")
    near_threshold: int = _opt(6, min=0, max=32, doc="max Hamming distance of 63-bit perceptual hashes")
    conflicts: Literal["drop", "keep"] = _opt("drop", doc="duplicate groups whose members carry different labels")
    split: SplitFractions = _opt(SplitFractions(), doc="how busi splits the data (stratified, seeded, whole patients and duplicate groups)")
    splits: Union[str, None] = _opt(None, doc="a splits.csv (path,label,group,split) to reuse instead of splitting")
    augment: AugmentConfig = _opt(AugmentConfig(), doc="random augmentation of training images (seeded, resumable)")
    cache: bool = _opt(True, doc="cache decoded, resized images in memory after the first epoch")
    dicom: DicomConfig = _opt(
        DicomConfig(), doc="how DICOM files (recognised by content) are read; recorded with the model, so "
        "prediction reads them the same way",
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneName = _opt("resnet50", doc="the keras.applications network under the head (docs: Backbones)")
    alpha: float = _opt(1.0, min=0.0, exclusive_min=True, max=2.0,
                        doc="width multiplier of mobilenet and mobilenet_v2 (one their ImageNet files exist for)")
    weights: str = _opt("imagenet", doc="imagenet (the backbone's Keras file, staged locally), a path to a weights "
                        "file, or none")
    weights_sha256: Union[str, None] = _opt(None, doc="the sha256 the weights file must have (exit 3 where not)")
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
    unfreeze: Unfreeze = _opt(
        "none", doc="backbone blocks made trainable in this phase"
    )


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _opt(32, min=1, max=4096, doc="images per step (per rank under Horovod)")
    precision: TrainPrecision = _opt(
        "auto", doc="auto: bf16 on CPUs with AMX/AVX512-BF16, fp16 on GPUs, else float32"
    )
    class_weights: Literal["balanced", "none"] = _opt("balanced", doc="weight the loss by inverse class frequency")
    monitor: Literal["val_loss", "val_accuracy"] = _opt("val_loss", doc="metric that picks the best epoch")
    head: PhaseConfig = _opt(PhaseConfig(epochs=10, learning_rate=1e-3, unfreeze="none"),
                             doc="phase 1: the backbone frozen, the new head trained")
    finetune: PhaseConfig = _opt(PhaseConfig(epochs=10, learning_rate=1e-5, unfreeze="conv5"),
                                 doc="phase 2: the top of the backbone unfrozen, fine-tuned at a low rate")
    scale_lr: bool = _opt(
        True, doc="multiply each phase's learning_rate by the number of ranks (the global batch is that much bigger)"
    )
    warmup_epochs: int = _opt(
        0, min=0, limit=MAX_EPOCHS, doc="head-phase epochs that ramp linearly from learning_rate to the scaled rate (0: none)"
    )
    schedule: Literal["constant", "cosine"] = _opt(
        "constant", doc="each phase's rate per epoch: constant, or cosine decay from the phase's rate towards 0 over "
        "its epochs (busi.train.lr)")
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
    engine: EngineName = _opt(
        "auto",
        doc="engine of the frozen layers' forward passes (feature-cache fills) and the test-split evaluation, "
        "in train.precision's precision; auto: OpenVINO on a CPU-only node where it is installed (for a "
        "cache fill only when it is big enough to repay converting), else TensorFlow",
    )
    gradcam_masks: bool = _opt(
        True, doc="score the Grad-CAM heatmap of the true class against the lesion masks of the test images "
        "(busi.evaluate.explain): share of its energy inside the mask and the pointing-game hit rate",
    )
    calibration: Literal["none", "temperature"] = _opt(
        "none",
        doc="temperature: after training, fit one temperature on the validation split (busi.evaluate.calibration) and "
        "put it into the model's output layer; test metrics are reported before and after",
    )
    quantize: Quantize = _opt(
        "int8",
        doc="int8: after training, quantize the OpenVINO model with NNCF on training images (model/openvino-int8/) "
        "and measure the INT8 and bfloat16 accuracy contracts on the test split (metrics.json precisions); none: "
        "float model only",
    )
    ema: Union[float, None] = _opt(
        None, min=0.5, max=0.99999,
        doc="decay of an exponential moving average of the trained weights (Keras' use_ema), e.g. 0.99; "
        "the averaged weights are validated, kept as best and saved; null: off",
    )


@dataclass(frozen=True)
class EvaluateConfig:
    positive_class: Union[str, None] = _opt(
        None,
        doc="the class a reader screens for (e.g. malignant; one of data.classes): metrics.json then holds it "
        "against the rest (sensitivity, specificity, PPV, NPV at the top class and at a threshold chosen on the "
        "validation split, model/thresholds.json); null: no such table",
    )
    target_sensitivity: float = _opt(
        0.95, min=0.0, max=1.0, exclusive_min=True,
        doc="the threshold is the highest one that still finds this share of the validation split's positive images",
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _opt(doc="the run directory; key it by ${SLURM_JOB_ID} on clusters")
    saved_model: bool = _opt(True, doc="write model/saved_model/ (TensorFlow Serving); false saves its export "
                             "time, and `busi-job export --format saved_model` writes it later")


@dataclass(frozen=True)
class RuntimeConfig:
    seed: int = _opt(42, min=0, limit=2**32 - 1, doc="one seed for Python, NumPy, TensorFlow and the split")
    cores: Union[int, Literal["auto"]] = _opt(
        "auto", min=1, limit=65_536, doc="auto: min of affinity mask, cgroup quota, SLURM_CPUS_PER_TASK"
    )
    deterministic: bool = _opt(False, doc="deterministic TF ops: same seed and data give the same metrics")
    distributed: Distributed = _opt(
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
    data: DataConfig = _opt(doc="the dataset and how it is split")
    output: OutputConfig = _opt(doc="where the run directory goes")
    model: ModelConfig = _opt(ModelConfig(), doc="the network")
    train: TrainConfig = _opt(TrainConfig(), doc="the two training phases, precision, engines, calibration")
    evaluate: EvaluateConfig = _opt(EvaluateConfig(), doc="what the test-split evaluation reports beyond the metrics")
    runtime: RuntimeConfig = _opt(RuntimeConfig(), doc="cores, seed, ranks, walltime, signals, checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dict (tuples become lists)."""
        return map_leaves(dataclasses.asdict(self))


@dataclass(frozen=True)
class PredictConfig:
    model: str = _opt(doc="a run directory, a model.keras file (labels.json beside it), or a cross-validation's "
                      "output.dir (its fold models predict together, averaged; fold_sd their spread)")
    inputs: tuple[str, ...] = _opt(min_items=1, doc="folders (recursive), files, archives, @list.txt files")
    output: str = _opt("predictions.csv", doc="CSV path; shards write <stem>.part-IIIII-of-NNNNN.csv beside it")
    batch_size: int = _opt(32, min=1, max=4096, doc="images per forward pass")
    include_masks: bool = _opt(False, doc="also predict on *_mask files")
    resume: bool = _opt(False, doc="skip paths already in the output CSV")
    overwrite: bool = _opt(False, doc="replace an existing output CSV")
    shard: str = _opt("auto", doc="auto (array job env vars), none, or I/N")
    gradcam: Union[str, None] = _opt(None, doc="folder for Grad-CAM overlay PNGs, one per image")
    dicom_sr: Union[str, None] = _opt(
        None, doc="folder for DICOM Comprehensive Structured Reports, one per classified DICOM input, referencing it "
        "(they carry the source's patient and study identity, as DICOM requires: meant for the PACS)",
    )
    dicom_frame: Union[DicomFrame, None] = _opt(
        None, doc="the frames of a multi-frame DICOM to classify: first, middle, or all (a row per frame, with its "
        "frame number); null: as the model was trained (its preprocessing.json)",
    )
    engine: EngineName = _opt(
        "auto", doc="inference engine; auto: OpenVINO on a CPU-only node where it is installed, else TensorFlow"
    )
    precision: InferencePrecision = _opt(
        "auto", doc="OpenVINO's inference precision; auto: the fastest that passed its accuracy contract and this "
        "CPU runs fast (int8 with VNNI/AMX-INT8, bfloat16 with AMX/AVX512-BF16, else float32)"
    )
    tta: TTA = _opt(
        "none", doc="test-time augmentation: flip averages each image's probabilities with its mirror image's")
    staging_dir: Union[str, None] = _opt(None, doc="where input archives unpack; default $TMPDIR/busi-staging")
    max_archive_members: int = _archive_members()
    max_archive_bytes: int = _archive_bytes()
    max_archive_ratio: int = _archive_ratio()


@dataclass(frozen=True)
class PredictJobConfig:
    predict: PredictConfig = _opt(doc="what to predict on, with which model, into which CSV")
    runtime: RuntimeConfig = _opt(RuntimeConfig(), doc="cores, seed, walltime, signals")

    def to_dict(self) -> dict[str, Any]:
        return map_leaves(dataclasses.asdict(self))
