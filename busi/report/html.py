"""``report.html``: one self-contained page for a run directory or a cross-validation folder.

Opened from a cluster's file browser (Open OnDemand, JupyterHub's file view) or copied to a
laptop, it needs nothing else: the plots are inlined (``data:`` URIs), there is no script, no
style sheet or font from the network. It shows what a reviewer asks first: the data and its
split, the metrics with their 95% intervals, calibration, the positive class vs the rest, Grad-CAM
against the lesion masks, the label conflicts and duplicate groups, and (cross-validation)
the figures across folds and out of fold. Every value comes from the JSON files beside it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from busi.report.format import format_interval

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 0.92em; } .warn { color: #a40000; font-weight: 600; }
figure { display: inline-block; margin: 0.4em; } figure img { max-width: 480px; border: 1px solid #ddd; }
"""

HEADLINE = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
            ("roc_auc_macro", "macro ROC AUC"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{_e(c)}</td>" if i >= numeric_from else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _facts(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of named facts: each row's name is its header cell (no header row)."""
    body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def page_plots(plots: Mapping[str, Path]) -> dict[str, Path]:
    """The plots of ``{caption: path}`` that were written (a split without images has none):
    the ones a page shows."""
    return {caption: path for caption, path in plots.items() if path.is_file()}


def _figures(plots: Mapping[str, Path]) -> str:
    out = []
    for caption, path in page_plots(plots).items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
                   f"<figcaption>{_e(caption)}</figcaption></figure>")
    return "".join(out)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def metrics_section(metrics: Mapping[str, Any], title: str) -> str:
    """Headline and per-class metrics with intervals, calibration, malignancy, Grad-CAM."""
    if not metrics.get("n"):
        return f"<h2>{_e(title)}</h2><p class=\"note\">no images: no metrics</p>"
    ci = metrics.get("ci95") or {}
    parts = [f"<h2>{_e(title)} (n = {_e(metrics['n'])})</h2>",
             _table(("metric", "value [95% interval]"),
                    ((name, format_interval(metrics.get(k), ci.get(k))) for k, name in HEADLINE))]
    if ci.get("resamples"):
        parts.append(f"<p class=\"note\">Intervals: {_e(ci['method'])}, {_e(ci['resamples'])} resamples of the "
                     f"images, seed {_e(ci['seed'])}.</p>")
    per = ci.get("per_class", {})
    parts.append(_table(("class", "precision", "recall", "F1", "support", "ROC AUC"), (
        (c, *(format_interval(m[k], per.get(c, {}).get(k)) for k in ("precision", "recall", "f1")), m["support"],
         format_interval(m["roc_auc"], per.get(c, {}).get("roc_auc")))
        for c, m in metrics.get("per_class", {}).items())))
    classes = metrics.get("classes", [])
    cm = metrics.get("confusion_matrix")
    if cm:
        parts.append("<p>Confusion matrix (rows: true, columns: predicted)</p>")
        parts.append(_table(("true \\ predicted", *classes), ([c, *row] for c, row in zip(classes, cm))))
    cal = metrics.get("calibration")
    if cal:
        line = (f"Calibration: expected calibration error {_fmt(cal['ece'])} ({_e(cal['ece_bins'])} equal-width "
                f"confidence bins), Brier score {_fmt(cal['brier'])}, NLL {_fmt(cal['nll'])}.")
        if metrics.get("temperature") is not None:
            pre = metrics.get("calibration_before_temperature") or {}
            line += (f" Temperature {metrics['temperature']:.3f} (fitted on the validation split, inside the model); "
                     f"without it ECE {_fmt(pre.get('ece'))}, Brier {_fmt(pre.get('brier'))}.")
        parts.append(f"<p>{line}</p>")
    screen = metrics.get("positive_vs_rest")
    if screen:
        from busi.report.format import rule_rows

        rows = rule_rows(screen)
        parts.append(f"<h3>{_e(screen['positive_class'])} vs the rest</h3>")
        parts.append(_table(("rule", "sensitivity", "specificity", "PPV", "NPV"), rows))
    cam = metrics.get("gradcam_vs_masks")
    if cam and cam["overall"]["images"]:
        parts.append("<h3>Grad-CAM of the true class against the lesion masks</h3>")
        parts.append(_table(("class", "images", "heatmap inside mask", "mask area", "pointing hits"), (
            (c, v["images"], _fmt(v["energy_inside"]), _fmt(v["mask_area"]), _fmt(v["pointing_hit_rate"]))
            for c, v in cam["per_class"].items() if v["images"])))
    engine = metrics.get("engine")
    if engine:
        parts.append(f"<p class=\"note\">Computed by {_e(engine['name'])} {_e(engine['version'])} "
                     f"({_e(engine['precision'])}).</p>")
    return "".join(parts)


def _patients(p: Mapping[str, Any] | None) -> str:
    """Patients per split (``busi.data.prepare``), or the plain note that none were given."""
    if not p:
        return ""  # a report from before patients were counted
    text = ""
    if p.get("from"):
        per = ", ".join(f"{_e(s)} {_e(n)}" for s, n in p.get("per_split", {}).items())
        text = f"<p>{_e(p.get('count', 0))} patients (from {_e(p['from'])}); per split: {per}.</p>"
    if p.get("note"):
        text += f"<p class=\"warn\">{_e(p['note'])}.</p>"
    return text


def data_section(report: Mapping[str, Any]) -> str:
    counts = report.get("counts", {})
    classes = report.get("classes", [])
    per_split = counts.get("per_split", {})
    parts = ["<h2>Data</h2>",
             f"<p>{_e(counts.get('images', 0))} images, {_e(counts.get('used', 0))} used, from "
             f"<code>{_e(report.get('root', ''))}</code>.</p>"]
    if per_split:
        parts.append(_table(("class", "train", "val", "test"),
                            ((c, *(per_split.get(s, {}).get(c, 0) for s in ("train", "val", "test"))) for c in classes)))
    parts.append(_patients(report.get("patients")))
    conflicts = report.get("label_conflicts", [])
    parts.append(f"<h3>Label conflicts ({len(conflicts)})</h3>")
    if conflicts:
        parts.append("<p class=\"warn\">Duplicate images filed under different labels:</p>")
        parts.append(_table(("group", "images", "labels", "action"),
                            ((g["id"], ", ".join(g["members"]), ", ".join(g["labels"]), g["action"]) for g in conflicts),
                            numeric_from=9))
    else:
        parts.append("<p>None.</p>")
    groups = report.get("duplicates", {}).get("groups", [])
    parts.append(f"<h3>Duplicate groups ({len(groups)})</h3><p class=\"note\">Each group (exact or perceptual-hash "
                 "copies) sits in one split only, so no copy of a test image was trained on.</p>")
    if groups:
        parts.append(_table(("group", "images", "exact"), ((g["id"], ", ".join(g["members"]), g["exact"]) for g in groups[:200]),
                            numeric_from=9))
    return "".join(parts)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"
            "<p class=\"warn\">Research software, not a medical device: not for diagnosis.</p>"
            f"{body}</body></html>\n")


def run_report(metrics: Mapping[str, Any], data_report: Mapping[str, Any], manifest: Mapping[str, Any],
               plots: Mapping[str, Path], title: str) -> str:
    """The page of a training run."""
    facts = _facts((
        ("busi", manifest.get("busi_version", "")), ("started", manifest.get("started_at", "")),
        ("host", manifest.get("host", "")), ("precision", manifest.get("precision", "")),
        ("best epoch", manifest.get("best_epoch", "")), ("seed", manifest.get("seed", ""))))
    split = metrics.get("split", "test")
    return page(title, "<h2>Run</h2>" + facts + metrics_section(metrics, f"Results on the {split} split")
                + "<h2>Plots</h2>" + _figures(plots) + data_section(data_report))


def evaluation_page(title: str, metrics: Mapping[str, Any], plots: Mapping[str, Path], findings: str) -> str:
    """The page of an external evaluation (``busi-job evaluate``): its metrics, what the caller
    found (HTML: the overlap with the training data), its plots."""
    return page(title, metrics_section(metrics, "External validation") + findings + "<h2>Plots</h2>"
                + _figures(plots))


def cv_page(report: Mapping[str, Any], plots: Mapping[str, Path], title: str) -> str:
    """The page of a cross-validation folder (``busi.evaluate.crossval.cv_report``'s result)."""
    rows = []
    for k, name in HEADLINE:
        s = report["across_folds"][k]
        interval = f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s.get("ci95") else "n/a"
        rows.append((name, _fmt(s["mean"]), _fmt(s["sd"]), interval,
                     ", ".join(f"{v:.3f}" for v in s.get("values", []))))
    body = (f"<h2>Across {report['folds']} folds</h2>"
            + _table(("metric", "mean", "sd", "95% interval of the mean", "per fold"), rows)
            + "<p class=\"note\">Folds are stratified and group-aware (no duplicate group in two folds); the "
              "interval is the t-interval of the mean over the folds.</p>"
            + metrics_section(report["pooled_out_of_fold"], "Pooled out of fold")
            + "<h2>Plots (out of fold)</h2>" + _figures(plots))
    return page(title, body)
