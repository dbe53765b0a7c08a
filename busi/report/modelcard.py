"""The model card written beside a trained model (``OUT/model/README.md``): what the model is,
how to load it, what it was trained on, how well it did, and what it is not for."""

from __future__ import annotations

from typing import Any

from busi.config.schema import JobConfig
from busi.model.backbones import backbone
from busi.report.format import format_interval, rule_rows

SPLITS = ("train", "val", "test")


PREPROCESS_WORDS = {"caffe": "RGB to BGR, minus the ImageNet mean", "tf": "scaled to -1..1",
                    "inside": "its own normalisation of 0-255 input"}


def model_card(cfg: JobConfig, report: dict[str, Any], metrics: dict[str, Any], result: Any,
               weights: dict[str, Any] | None = None) -> str:
    """Markdown, one section after the other. ``weights``: the manifest's record of the weights
    file (its sha256)."""
    return "\n".join([
        f"# busi {backbone(cfg.model.backbone).application} breast ultrasound classifier\n",
        "**Intended use: research and education only. Not a medical device; not for diagnosis or\n"
        "any clinical decision.**\n",
        _model(cfg, result, weights or {}), _loading(cfg), _data(cfg, report), _results(metrics), _precisions(metrics),
        _limitations(),
    ])


def _model(cfg: JobConfig, result: Any, weights: dict[str, Any]) -> str:
    classes = cfg.data.classes
    label_map = ", ".join(f"{i} {c}" for i, c in enumerate(classes))
    t = cfg.train
    b = backbone(cfg.model.backbone)
    width = f", alpha {cfg.model.alpha:g}" if len(b.alphas) > 1 else ""
    sha = f", sha256 `{weights['sha256']}`" if weights.get("sha256") else ""
    return f"""## Model
- {b.application} backbone (`model.backbone: {b.name}`{width}; `model.weights: {cfg.model.weights}`{sha}),
  {cfg.model.pooling} pooling, dropout {cfg.model.dropout}, softmax over {len(classes)} classes.
- Input: RGB image, {cfg.data.image_size} x {cfg.data.image_size} pixels, float 0-255
  (resize: {cfg.data.resize}); {b.application}'s preprocessing ({PREPROCESS_WORDS[b.preprocess]}) is inside the model.
- Output: class probabilities; label map: {label_map} (`labels.json`).
- Training: head {t.head.epochs} epochs (lr {t.head.learning_rate:g}), fine-tune
  {t.finetune.epochs} epochs (lr {t.finetune.learning_rate:g}, unfreeze
  {t.finetune.unfreeze}); best epoch {result.best_epoch} by {t.monitor}; seed {cfg.runtime.seed}.
"""


def _dicom_args(cfg: JobConfig) -> str:
    d = cfg.data.dicom
    return f"frame={d.frame!r}, crop_to_region={d.crop_to_region}"


def _frame_arg(cfg: JobConfig) -> str:
    """Under ``frame: all`` each frame of a cine loop was a sample: the snippet names one."""
    return ", frame=1" if cfg.data.dicom.frame == "all" else ""


def _loading(cfg: JobConfig) -> str:
    """The snippet calls the decode training and prediction use (``busi.data.images.load_image``):
    16-bit, palette, alpha and grayscale images and ``resize: pad`` come out as they did in training."""
    side = cfg.data.image_size
    return f"""## Loading it
Plain Keras loads `model.keras`, no busi needed (the preprocessing is built from Keras' own layers).
Decode images with busi's own decode, the one training and `busi-job predict` use, so that
16-bit, palette, alpha and grayscale images and the resize (`{cfg.data.resize}`) come out as in training:

```python
import keras
from busi.data.images import load_image
model = keras.saving.load_model("model.keras")
image = load_image("scan.png", {side}, "{cfg.data.resize}")  # {side} x {side} x 3, RGB, uint8
# a DICOM file, read as training read them (data.dicom):
# from busi.config.schema import DicomConfig
# image = load_image("IM0001", {side}, "{cfg.data.resize}", DicomConfig({_dicom_args(cfg)}){_frame_arg(cfg)})
probabilities = model.predict(image[None].astype("float32"), verbose=0)[0]  # order: labels.json
```

`busi-job predict --model RUN_DIR` does the same for whole folders. `saved_model/` is the
TensorFlow SavedModel (serving), `openvino/` the OpenVINO model.
"""


def _data(cfg: JobConfig, report: dict[str, Any]) -> str:
    counts = report["counts"]
    rows = "\n".join(f"| {c} | " + " | ".join(str(counts["per_split"][s][c]) for s in SPLITS) + " |"
                     for c in cfg.data.classes)
    conflicts = len(report.get("label_conflicts", []))
    patients = report.get("patients") or {}
    who = (f"{patients['count']} patients from {patients['from']}; no patient straddles splits" if patients.get("from")
           else "no patient IDs given: images of one patient may sit on both sides")
    return f"""## Data
- Source: `{cfg.data.source}` ({counts['images']} images, {counts['used']} used).
- De-duplication: {cfg.data.dedupe} (threshold {cfg.data.near_threshold}); label conflicts: {conflicts}
  ({cfg.data.conflicts}). Split: see `../data/splits.csv` (no duplicate group straddles splits).
- Patients: {who}.

| class | train | val | test |
|---|---|---|---|
{rows}
"""


def _results(metrics: dict[str, Any]) -> str:
    ci = metrics.get("ci95") or {}
    ci_class = ci.get("per_class", {})
    per_class = "\n".join(
        f"| {c} | " + " | ".join(format_interval(m[k], ci_class.get(c, {}).get(k)) for k in ("precision", "recall", "f1"))
        + f" | {m['support']} | {format_interval(m['roc_auc'], ci_class.get(c, {}).get('roc_auc'))} |"
        for c, m in metrics.get("per_class", {}).items()
    )
    intervals = (f"Intervals: 95% {ci['method']} over {ci['resamples']} resamples of the split's images "
                 f"(seed {ci['seed']}; `metrics.json` \"ci95\")." if "resamples" in ci else "")
    headline = ", ".join(f"{name} {format_interval(metrics.get(k), ci.get(k))}" for k, name in (
        ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
        ("roc_auc_macro", "macro ROC AUC")))
    return f"""## Results on the {metrics.get('split', 'test')} split (n = {metrics.get('n', 0)})
- {headline}

{intervals}
{_calibration(metrics)}
{_screening_table(metrics.get("positive_vs_rest"))}{_explanations(metrics.get("gradcam_vs_masks"))}
| class | precision | recall | F1 | support | ROC AUC |
|---|---|---|---|---|---|
{per_class}
"""


def _precisions(metrics: dict[str, Any]) -> str:
    """The reduced precisions' accuracy contracts (``busi.evaluate.precision``)."""
    results = metrics.get("precisions") or {}
    if not results:
        return ""
    rows = []
    for name, r in results.items():
        if not r.get("measured"):
            rows.append(f"| {name} | not measured | | | {r.get('reason', '')} |")
            continue
        figures = ", ".join(f"{k} {format_interval(v, None)}" for k, v in r["metrics"].items() if v is not None)
        rows.append(f"| {name} | {'passed' if r['passed'] else 'missed'} | {r['label_agreement']:.1%} | {figures} "
                    f"| {r['reason']} |")
    return ("## Reduced precisions\n\nEach precision against float32 on the same images (labels agree on at least "
            "99%, and accuracy, macro F1 and macro ROC AUC inside float32's 95% intervals); `--precision auto` "
            "uses only one that passed (`model/precisions.json`).\n\n"
            "| precision | contract | label agreement | metrics | why |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def _calibration(metrics: dict[str, Any]) -> str:
    cal = metrics.get("calibration") or {}
    if not cal:
        return ""
    text = (f"Calibration: expected calibration error {format_interval(cal.get('ece'), None)} ({cal.get('ece_bins')} "
            f"equal-width confidence bins), Brier score {format_interval(cal.get('brier'), None)} "
            "(`../plots/calibration.png`).")
    if metrics.get("temperature") is not None:
        pre = metrics.get("calibration_before_temperature") or {}
        text += (f" The output layer holds a temperature of {metrics['temperature']:.3f} fitted on the "
                 f"validation split (`train.calibration: temperature`; labels unchanged); without it: "
                 f"ECE {format_interval(pre.get('ece'), None)}, Brier score {format_interval(pre.get('brier'), None)}.")
    return text


def _limitations() -> str:
    return """## Limitations
- BUSI comes from one hospital and one period (Al-Dhabyani et al., Data in Brief 28:104863, 2020);
  performance on other scanners and populations is unknown.
- The dataset holds duplicated and near-duplicated images, some under two labels; metrics on a
  small test split have wide confidence intervals.
"""


def _screening_table(screen: dict[str, Any] | None) -> str:
    """The positive class (``evaluate.positive_class``) vs the rest at the argmax rule and at the validation-chosen threshold."""
    if not screen:
        return ""
    rows = ["| " + " | ".join(row) + " |" for row in rule_rows(screen)]
    return (f"\n### {screen['positive_class'].capitalize()} vs the rest\n"
            f"The threshold is {screen['threshold_rule']} (`thresholds.json`); intervals as above.\n\n"
            "| rule | sensitivity | specificity | PPV | NPV |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def _explanations(scores: dict[str, Any] | None) -> str:
    """Grad-CAM against the lesion masks, per class with lesions."""
    if not scores or not scores["overall"]["images"]:
        return ""
    rows = [f"| {c} | {v['images']} | {v['energy_inside']:.3f} | {v['mask_area']:.3f} | {v['pointing_hit_rate']:.3f} |"
            for c, v in scores["per_class"].items() if v["images"]]
    return ("\n### Explanations against the lesion masks\n"
            "Grad-CAM of the true class on test images with a lesion mask: the share of the heatmap inside the mask "
            "(against the mask's share of the image, what a uniform heatmap would score) and how often its "
            "maximum falls inside (pointing game).\n\n"
            "| class | images | heatmap inside mask | mask area | pointing hits |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
