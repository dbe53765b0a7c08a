"""Reports as text for the terminal: ``busi-job inspect``'s dataset report and
``busi-job cv-report``'s summary."""

from __future__ import annotations

from typing import Any


def format_cv(report: dict[str, Any]) -> str:
    """The report's headline, one line per metric: mean ± sd [95% interval] across folds, pooled."""
    lines = [f"cross-validation: {report['folds']} folds, {report['images']} images out of fold"]
    pooled = report["pooled_out_of_fold"]
    for m, s in report["across_folds"].items():
        if m == "per_class" or s["mean"] is None:
            continue
        spread = f" ± {s['sd']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s["ci95"] else ""
        ci = pooled["ci95"].get(m)
        pooled_text = f"{pooled[m]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") if pooled.get(m) is not None else "n/a"
        lines.append(f"  {m:<18} folds {s['mean']:.3f}{spread}; pooled {pooled_text}")
    return "\n".join(lines)




def format_inspect(r: dict[str, Any]) -> str:
    """Human-readable inspect report."""
    c = r["counts"]
    lines = [f"dataset: {r['root']}", f"images: {c['images']} ({c['used']} used)"]
    classes = r["classes"]
    width = max(len(x) for x in classes + ["class"])
    lines.append(f"  {'class':<{width}}  {'total':>6}  {'train':>6}  {'val':>6}  {'test':>6}")
    for cl in classes:
        cells = [c["per_split"][s][cl] for s in ("train", "val", "test")]
        lines.append(f"  {cl:<{width}}  {c['per_class'][cl]:>6}  " + "  ".join(f"{v:>6}" for v in cells))
    size = r["image_size"]
    if size["width"]:
        lines.append(
            f"image size: width {size['width'][0]}-{size['width'][1]} px, height {size['height'][0]}-{size['height'][1]} px"
        )
    lines.append("modes: " + ", ".join(f"{k} {v}" for k, v in r["modes"].items()))
    m = r["masks"]
    lines.append(
        f"masks: {m['mask_files']} files; {m['images_with_masks']} images with masks, "
        f"{len(m['images_without_masks'])} without, {len(m['orphan_masks'])} masks without an image"
    )
    for p in m["orphan_masks"][:20]:
        lines.append(f"  orphan mask: {p}")
    d = r["duplicates"]
    lines.append(f"duplicate groups ({d['mode']}, threshold {d['near_threshold']}): {len(d['groups'])}")
    for g in d["groups"]:
        kind = "exact" if g["exact"] else "near"
        lines.append(f"  {g['id']} [{kind}]: " + ", ".join(g["members"]))
    lines.append(f"label conflicts: {len(r['label_conflicts'])}")
    for g in r["label_conflicts"]:
        lines.append(f"  {g['id']} ({'/'.join(g['labels'])}, {g['action']}): " + ", ".join(g["members"]))
    lines.append(f"skipped (not images): {len(r['skipped_files'])}")
    for p in r["skipped_files"][:20]:
        lines.append(f"  {p}")
    lines.append(f"corrupt images: {len(r['corrupt_images'])}")
    for e in r["corrupt_images"]:
        lines.append(f"  {e['path']}: {e['error']}")
    if r["excluded"]["not_in_splits_file"]:
        lines.append(f"not in data.splits file (excluded): {len(r['excluded']['not_in_splits_file'])}")
    lines += _source_lines(r)
    return "\n".join(lines) + "\n"


def _source_lines(r: dict[str, Any]) -> list[str]:
    """The label table's rows left out, the patients per split, where the split came from."""
    lines = []
    t = r.get("table")
    if t:
        problems = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in t["problems"].items()) or "none"
        sheet = f" sheet {t['sheet']!r}" if t.get("sheet") else ""
        lines.append(f"label table: {t['file']}{sheet} ({t['rows']} rows, {t['images']} images; rows left out or "
                     f"flagged: {problems})")
        for j in t.get("joins", []):
            lines.append(f"  joined: {j['file']}{' sheet ' + repr(j['sheet']) if j['sheet'] else ''} ({j['rows']} rows; "
                         f"label-table rows without a match: {j['unmatched']})")
        for p in t["rows_left_out"][:50]:
            lines.append(f"  line {p['line']}: {p['path']}: {p['kind'].replace('_', ' ')}: {p['detail']}")
        if len(t["rows_left_out"]) > 50:
            lines.append(f"  ... {len(t['rows_left_out']) - 50} more in --json")
    p = r.get("patients")
    if p:
        if p["from"]:
            per = ", ".join(f"{s} {n}" for s, n in p["per_split"].items())
            lines.append(f"patients: {p['count']} from {p['from']}; per split: {per}")
        else:
            per = ", ".join(f"{s} {n}" for s, n in p["groups_per_split"].items())
            lines.append(f"patients: not given; groups (duplicates) per split: {per}")
        if p["note"]:
            lines.append(f"  note: {p['note']}")
    s = r.get("split")
    if s:
        lines.append(f"split: {s['from']}")
        for c in s["crossings"]:
            lines.append(f"  warning: duplicates {', '.join(c['members'])} sit in {', '.join(c['sides'])}")
    f = r.get("folds")
    if f:
        lines.append(f"folds: {f['count']} from {f['from']} (images per fold: {', '.join(map(str, f['sizes']))})")
        for c in f["crossings"]:
            lines.append(f"  warning: duplicates {', '.join(c['members'])} sit in folds {', '.join(c['sides'])}")
    return lines
