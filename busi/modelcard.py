"""The model card written beside a trained model (``OUT/model/README.md``)."""

from __future__ import annotations

from typing import Any

from busi.config import JobConfig


def model_card(cfg: JobConfig, report: dict[str, Any], metrics: dict[str, Any], result: Any) -> str:
    """Markdown: what the model is, what it was trained on, how well it did, what it is not for."""
    classes = list(cfg.data.classes)
    counts = report["counts"]
    split_lines = "\n".join(
        f"| {c} | " + " | ".join(str(counts["per_split"][s][c]) for s in ("train", "val", "test")) + " |"
        for c in classes
    )
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    per_class = "\n".join(
        f"| {c} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | {m['support']} | {fmt(m['roc_auc'])} |"
        for c, m in metrics.get("per_class", {}).items()
    )
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
- accuracy {fmt(metrics.get('accuracy'))}, balanced accuracy {fmt(metrics.get('balanced_accuracy'))},
  macro F1 {fmt(metrics.get('macro_f1'))}, macro ROC AUC {fmt(metrics.get('roc_auc_macro'))}

| class | precision | recall | F1 | support | ROC AUC |
|---|---|---|---|---|---|
{per_class}

## Limitations
- BUSI comes from one hospital and one period (Al-Dhabyani et al., Data in Brief 28:104863, 2020);
  performance on other scanners and populations is unknown.
- The dataset holds duplicated and near-duplicated images, some under two labels; metrics on a
  small test split have wide confidence intervals.
"""
