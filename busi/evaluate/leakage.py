"""Overlap between external evaluation data and a model's training data.

External validation means something only if the evaluation images are not the training images
again, nor images of the training patients: public breast-ultrasound collections re-publish each
other's frames, and BUSI itself holds re-exported copies. Training writes the content hash (sha256
of the file), the perceptual hash (busi.data.scan's 63-bit DCT hash of a grayscale thumbnail) and
the patient ID (where the job gave them: ``data.table.group`` or ``data.group_pattern``) of every
image it trained or validated on into ``OUT/data/hashes.csv``; ``busi-job evaluate`` compares each
evaluation image with them: the same file, a perceptual hash within ``data.near_threshold`` bits
(the rule that groups duplicates in training, ``busi.data.dedupe``), or the same patient ID."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from busi.data.dedupe import popcount64
from busi.errors import DataError
from busi.files.text import csv_text, text_of
from busi.runtime.safeio import read_regular_file

HASHES_COLUMNS = ("path", "split", "sha256", "phash", "patient")
LEGACY_HASHES_COLUMNS = HASHES_COLUMNS[:4]  # a run from before patients: no patient column
TRAINING_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Fingerprint:
    path: str
    split: str
    sha256: str
    phash: int
    patient: str = ""  # "" where the job gave no patient IDs


OVERLAP_KINDS = ("exact", "near", "patient")  # Overlap.kind, in the order the summaries list them


@dataclass(frozen=True)
class Overlap:
    """An evaluation image that duplicates a training (or validation) image."""

    path: str  # the evaluation image
    training_path: str
    training_split: str
    distance: int | None  # Hamming distance of the perceptual hashes (0: the same file; None: another image)
    kind: str  # one of OVERLAP_KINDS (patient: another image of a training patient)


def training_fingerprints(prepared: Any) -> list[Fingerprint]:
    """The train and validation images of a ``busi.data.prepare.PreparedData``, with their hashes
    and patients."""
    patient_of = dict(zip((s.key for s in prepared.scan.samples), prepared.patients))
    return [Fingerprint(sample.key, row.split, sample.sha256, sample.phash, patient_of.get(sample.key) or "")
            for split in TRAINING_SPLITS for sample, row in prepared.split(split)]


def hashes_text(rows: Iterable[Fingerprint]) -> str:
    """``data/hashes.csv``: one row per training and validation image."""
    return csv_text(HASHES_COLUMNS, ([r.path, r.split, r.sha256, f"{r.phash:016x}", r.patient] for r in rows))


def read_hashes(path: Path) -> list[Fingerprint]:
    try:
        # the rule hashes.csv was written with: non-UTF-8 names keep their bytes; a FIFO never blocks
        reader = csv.DictReader(io.StringIO(text_of(read_regular_file(path)), newline=""))
        if tuple(reader.fieldnames or ()) not in (HASHES_COLUMNS, LEGACY_HASHES_COLUMNS):
            raise ValueError(f"columns {reader.fieldnames}, expected {','.join(HASHES_COLUMNS)}")
        return [Fingerprint(r["path"], r["split"], r["sha256"], int(r["phash"], 16), r.get("patient") or "")
                for r in reader]
    except FileNotFoundError:
        raise DataError(path, "not found; the model's run directory has no training hashes (trained before busi "
                        "wrote them, or copied without data/): pass --no-leakage-check to evaluate anyway") from None
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        raise DataError(path, f"cannot read the training hashes: {e}") from None


def count_kinds(overlap: Sequence[Overlap]) -> dict[str, int]:
    """How many overlaps of each kind, every kind listed."""
    return {k: sum(o.kind == k for o in overlap) for k in OVERLAP_KINDS}


def find_overlap(paths: Sequence[str], sha256: Sequence[str], phash: Sequence[int], training: Sequence[Fingerprint],
                 threshold: int, patients: Sequence[str | None] | None = None) -> list[Overlap]:
    """Each evaluation image (``paths`` with their hashes and, where given, patient IDs) that is a
    training image again (the same content hash, else the nearest perceptual hash within
    ``threshold`` bits) or another image of a training patient."""
    if not training or not paths:
        return []
    by_sha = {f.sha256: f for f in training}
    by_patient: dict[str, Fingerprint] = {}
    for f in training:
        if f.patient:
            by_patient.setdefault(f.patient, f)
    train_hashes = np.array([f.phash for f in training], dtype=np.uint64)
    out = []
    for i, (path, sha, ph) in enumerate(zip(paths, sha256, phash)):
        if sha in by_sha:
            f = by_sha[sha]
            out.append(Overlap(path, f.path, f.split, 0, "exact"))
            continue
        distance = popcount64(train_hashes ^ np.uint64(ph))
        j = int(np.argmin(distance))
        if int(distance[j]) <= threshold:
            f = training[j]
            out.append(Overlap(path, f.path, f.split, int(distance[j]), "near"))
            continue
        patient = patients[i] if patients is not None else None
        if patient and patient in by_patient:
            f = by_patient[patient]
            out.append(Overlap(path, f.path, f.split, None, "patient"))
    return out
