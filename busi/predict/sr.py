"""DICOM Structured Reports of prediction (``predict.dicom_sr: DIR``, ``--dicom-sr DIR``): one
Comprehensive SR per classified DICOM input, written with highdicom, for a PACS to file beside
the image it classifies.

Each SR references its source instance (SOP class and instance UID, and the frame of a
multi-frame file) and holds the predicted class and every class's probability (numeric items
``busi-prob-<index>``, "Probability of <class>", in the private coding scheme ``99BUSI``), the
algorithm's name and version, and a comment that the result is unverified and not for
diagnostic use. DICOM files an SR with its study: highdicom copies
the source's patient and study modules into it, so **an SR holds the patient's identity** (the one
file busi writes that does; the CSV, logs and run directory never do). Its UIDs derive from the
source instance and the model, so predicting again writes the same instance, not a second one.
Files: ``DIR/<input path>.sr.dcm`` (the overlay naming rule; ``.frame-N`` before the suffix for
each frame of a cine loop under ``--dicom-frame all``). highdicom is imported inside.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.data.dicom import DicomSource
from busi.data.inputs import InputFile
from busi.files.atomic import atomic_write_with
from busi.predict.overlays import overlay_name

log = logging.getLogger("busi")

SR_SUFFIX = ".sr.dcm"
CODING_SCHEME = "99BUSI"  # private coding schemes start with 99 (DICOM PS3.16, 8.2)
# Type 2 elements of the Patient and General Study modules the SR copies from its source: present
# in every conforming image, absent from some exports; empty where absent (highdicom needs them)
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
NOTICE = "Automated classification by busi; not verified by a physician; not for diagnostic use."


def write_sr(f: InputFile, source: DicomSource, probs: np.ndarray, classes: Sequence[str], out_dir: Path,
             model: Path, version: str, frame: int | None = None) -> Path | None:
    """``out_dir/<path>.sr.dcm`` for the DICOM input ``f`` (``<path>.frame-N.sr.dcm`` for frame N
    of a cine loop that gave several images); None (with a warning that quotes no
    header value) where no SR can be made from it."""
    from busi.runtime.safeio import open_regular_file

    if not (source.sop_instance_uid and source.study_instance_uid):
        log.warning("dicom_sr: no SR for %s: its header has no valid instance UIDs", f.path)
        return None
    try:
        import pydicom

        with open_regular_file(f.file) as fh:
            header = pydicom.dcmread(fh, stop_before_pixels=True)
        with warnings.catch_warnings():  # highdicom's warnings about names quote the patient's name
            warnings.simplefilter("ignore")
            sr = build_sr(header, source, probs, classes, model, version)
    except Exception as e:  # a header highdicom refuses costs the SR, never the row; no header value logged
        log.warning("dicom_sr: no SR for %s (%s)", f.path, type(e).__name__)
        return None
    target = out_dir / (overlay_name(f.path, frame) + SR_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_with(target, lambda p: sr.save_as(p, enforce_file_format=True), ".dcm")


def _fill_type2(header: Any) -> None:
    """The Type 2 elements highdicom copies, present (empty where absent or not a valid date/time)."""
    from pydicom.valuerep import DA, TM

    for keyword in TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    for keyword, vr in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        try:
            vr(header.get(keyword) or None)
        except ValueError:  # not a date or time: empty in the SR rather than no SR
            setattr(header, keyword, None)


def build_sr(header: Any, source: DicomSource, probs: np.ndarray, classes: Sequence[str], model: Path,
             version: str) -> Any:
    """The Comprehensive SR (a pydicom dataset) of one classified instance, ``header`` its source."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        ContainerContentItem,
        ContentSequence,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )
    from pydicom.uid import generate_uid

    _fill_type2(header)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    top = int(np.argmax(probs))
    items = [
        TextContentItem(name=CodedConcept("111001", "DCM", "Algorithm Name"), value="busi",
                        relationship_type="HAS OBS CONTEXT"),
        TextContentItem(name=CodedConcept("111003", "DCM", "Algorithm Version"), value=version,
                        relationship_type="HAS OBS CONTEXT"),
        ImageContentItem(name=CodedConcept("121112", "DCM", "Source of Measurement"),
                         referenced_sop_class_uid=header.SOPClassUID,
                         referenced_sop_instance_uid=source.sop_instance_uid,
                         referenced_frame_numbers=source.frame if frames > 1 else None,  # only for multi-frame
                         relationship_type="CONTAINS"),
        TextContentItem(name=CodedConcept("121071", "DCM", "Finding"), value=classes[top], relationship_type="CONTAINS"),
    ]
    items += [
        NumContentItem(name=CodedConcept(f"busi-prob-{i}", CODING_SCHEME, f"Probability of {c}"), value=float(p),
                       unit=CodedConcept("1", "UCUM", "no units"), relationship_type="CONTAINS")
        for i, (c, p) in enumerate(zip(classes, probs))
    ]
    items.append(TextContentItem(name=CodedConcept("121106", "DCM", "Comment"), value=NOTICE,
                                 relationship_type="CONTAINS"))
    root = ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = ContentSequence(items)
    model_key = str(model)
    return hd.sr.ComprehensiveSR(
        evidence=[header],
        content=root,
        # the same source and model give the same UIDs: a second run replaces, never duplicates
        series_instance_uid=generate_uid(entropy_srcs=["busi-sr-series", source.study_instance_uid, model_key]),
        series_number=9901,
        sop_instance_uid=generate_uid(entropy_srcs=["busi-sr", source.sop_instance_uid, str(source.frame), model_key]),
        instance_number=1,
        manufacturer="busi",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
