"""The model card written beside a trained model (``OUT/model/README.md``)."""

from __future__ import annotations

from typing import Any

from busi.bootstrap import format_interval
from busi.config import JobConfig


def model_card(cfg: JobConfig, report: dict[str, Any], metrics: dict[str, Any], result: Any) -> str:
    """Markdown: what the model is, what it was trained on, how well it did, what it is not for."""
    classes = list(cfg.data.classes)
    counts = report["counts"]
    split_lines = "\n".join(
        f"| {c} | " + " | ".join(str(counts["per_split"][s][c]) for s in ("train", "val", "test")) + " |"
        for c in classes
    )
    ci = metrics.get("ci95") or {}
    ci_class = ci.get("per_class", {})

    def fmt(v: Any, interval: Any = None) -> str:
        return format_interval(v, interval)

    per_class = "\n".join(
        f"| {c} | " + " | ".join(fmt(m[k], ci_class.get(c, {}).get(k)) for k in ("precision", "recall", "f1"))
        + f" | {m['support']} | {fmt(m['roc_auc'], ci_class.get(c, {}).get('roc_auc'))} |"
        for c, m in metrics.get("per_class", {}).items()
    )
    cal = metrics.get("calibration") or {}
    calibration = (f"Calibration: expected calibration error {fmt(cal.get('ece'))} ({cal.get('ece_bins')} equal-width "
                   f"confidence bins), Brier score {fmt(cal.get('brier'))} (`../plots/calibration.png`)."
                   if cal else "")
    if metrics.get("temperature") is not None:
        pre = metrics.get("calibration_before_temperature") or {}
        calibration += (f" The output layer holds a temperature of {metrics['temperature']:.3f} fitted on the "
                        f"validation split (`train.calibration: temperature`; labels unchanged); without it: "
                        f"ECE {fmt(pre.get('ece'))}, Brier score {fmt(pre.get('brier'))}.")
    screening = _screening_table(metrics.get("malignant_vs_rest"))
    screening += _explanations(metrics.get("gradcam_vs_masks"))
    intervals = (f"Intervals: 95% {ci['method']} over {ci['resamples']} resamples of the split's images "
                 f"(seed {ci['seed']}; `metrics.json` \"ci95\")." if "resamples" in ci else "")
    label_map = ", ".join(f"{i} {c}" for i, c in enumerate(classes))
    conflicts = len(report.get("label_conflicts", []))
    resize_note = (" (stretched to the square, as above)" if cfg.data.resize == "stretch" else
                   " (paste onto a black square keeping the aspect ratio, then resize, instead of stretching)")
    return f"""# busi ResNet50 breast ultrasound classifier

**Intended use: research and education only. Not a medical device; not for diagnosis or
any clinical decision.**

## Model
- ResNet50 backbone (`model.weights: {cfg.model.weights}`), {cfg.model.pooling} pooling, dropout {cfg.model.dropout},
  softmax over {len(classes)} classes.
- Input: RGB image, {cfg.data.image_size} x {cfg.data.image_size} pixels, float 0-255
  (resize: {cfg.data.resize}); ResNet50 preprocessing is inside the model.
- Output: class probabilities; label map: {label_map} (`labels.json`).
- Training: head {cfg.train.head.epochs} epochs (lr {cfg.train.head.learning_rate:g}), fine-tune
  {cfg.train.finetune.epochs} epochs (lr {cfg.train.finetune.learning_rate:g}, unfreeze
  {cfg.train.finetune.unfreeze}); best epoch {result.best_epoch} by {cfg.train.monitor}; seed {cfg.runtime.seed}.

## Loading it
Plain Keras loads `model.keras`, no busi needed (the preprocessing is built from Keras' own layers):

```python
import keras, numpy as np
from PIL import Image
model = keras.saving.load_model("model.keras")
side = {cfg.data.image_size}
image = Image.open("scan.png").convert("RGB").resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0)
image = np.asarray(image, np.float32)  # RGB, 0-255
probabilities = model.predict(image[None])[0]   # order: labels.json
```

`resize: {cfg.data.resize}`{resize_note}; busi's own `busi-job predict --model RUN_DIR`
does the same for whole folders. `../model/saved_model/` is the TensorFlow SavedModel (serving).

## Data
- Source: `{cfg.data.source}` ({counts['images']} images, {counts['used']} used).
- De-duplication: {cfg.data.dedupe} (threshold {cfg.data.near_threshold}); label conflicts: {conflicts}
  ({cfg.data.conflicts}). Split: see `../data/splits.csv` (no duplicate group straddles splits).

| class | train | val | test |
|---|---|---|---|
{split_lines}

## Results on the {metrics.get('split', 'test')} split (n = {metrics.get('n', 0)})
- accuracy {fmt(metrics.get('accuracy'), ci.get('accuracy'))},
  balanced accuracy {fmt(metrics.get('balanced_accuracy'), ci.get('balanced_accuracy'))},
  macro F1 {fmt(metrics.get('macro_f1'), ci.get('macro_f1'))},
  macro ROC AUC {fmt(metrics.get('roc_auc_macro'), ci.get('roc_auc_macro'))}

{intervals}
{calibration}
{screening}

| class | precision | recall | F1 | support | ROC AUC |
|---|---|---|---|---|---|
{per_class}

## Limitations
- BUSI comes from one hospital and one period (Al-Dhabyani et al., Data in Brief 28:104863, 2020);
  performance on other scanners and populations is unknown.
- The dataset holds duplicated and near-duplicated images, some under two labels; metrics on a
  small test split have wide confidence intervals.
"""


def _screening_table(screen: dict[str, Any] | None) -> str:
    """Malignant vs the rest at the argmax rule and at the validation-chosen threshold."""
    if not screen:
        return ""
    from busi.screening import rule_rows

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
