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

from busi.data.dicom import DicomSource, read_dataset
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
# The groups of the modules highdicom copies from the source (Patient, Patient Study, General Study,
# Clinical Trial Subject and Study), and the text VRs checked in them (binary, numbers and sequences
# are not values a validator rejects from a source)
COPIED_GROUPS = (0x0008, 0x0010, 0x0012, 0x0020, 0x0032)
CHECKED_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
# words in the names of the image SOP classes ("Ultrasound Image Storage", "Enhanced US Volume Storage")
IMAGE_WORDS = ("Image", "Volume", "Tomosynthesis")
# words in the names of the SOP classes whose instances hold frames an SR may reference (DICOM PS3.3
# C.17.3.2.1: Referenced Frame Number only for a multi-frame SOP class)
MULTI_FRAME_WORDS = ("Multi-frame", "Enhanced", "Angiographic", "Radiofluoroscopic", "Nuclear Medicine",
                     "Tomosynthesis", "Volume", "Whole Slide", "Ophthalmic Tomography", "Parametric Map")


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
            header = read_dataset(pydicom, fh, stop_before_pixels=True)  # a bare dataset too
        with warnings.catch_warnings():  # highdicom's warnings about names quote the patient's name
            warnings.simplefilter("ignore")
            sr = build_sr(header, source, probs, classes, model, version)
    except Exception as e:  # a header highdicom refuses costs the SR, never the row; no header value logged
        log.warning("dicom_sr: no SR for %s (%s)", f.path, type(e).__name__)
        return None
    target = out_dir / (overlay_name(f.path, frame) + SR_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_with(target, lambda p: sr.save_as(p, enforce_file_format=True), ".dcm")


def _repair(header: Any) -> None:
    """The source's elements the SR copies, made valid DICOM (a validator such as dciodvfy reports
    no error the source brought): every Type 2 element highdicom needs present; a value its VR does
    not allow (a StudyDate of ``1997.04.24``, a lower-case code string, a name too long) emptied
    where the element is Type 2, else left out; a source that says its patient identity was
    removed without saying how gets the method "not stated in the source image" (Type 1C). The
    header is the SR's own copy: the source file is never changed."""
    from pydicom.config import RAISE
    from pydicom.valuerep import validate_value

    for keyword in TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    for elem in list(header):
        if elem.tag.group not in COPIED_GROUPS or elem.VR not in CHECKED_VRS or elem.value in (None, "", b""):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        try:
            for value in values:
                validate_value(elem.VR, str(value), RAISE)  # as written (an IS 5, a PN, a DA object)
        except (ValueError, TypeError, OverflowError):
            if elem.keyword in TYPE2:
                header[elem.tag].value = None
            else:
                del header[elem.tag]
    if str(header.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
            "DeidentificationMethod" in header or "DeidentificationMethodCodeSequence" in header):
        header.DeidentificationMethod = "not stated in the source image"


def is_image_class(sop_class_uid: str) -> bool:
    """Whether instances of the SOP class are images, which an SR references by an IMAGE content
    item (any other object, such as an RT Dose that holds pixels, by a COMPOSITE one)."""
    from pydicom.uid import UID

    name = UID(sop_class_uid).name if sop_class_uid else ""
    return any(word in name for word in IMAGE_WORDS)


def references_frames(sop_class_uid: str, frames: int) -> bool:
    """Whether an SR may name the frame of its source: only an instance of a multi-frame SOP class
    (a cine loop stored as Ultrasound Multi-frame, an enhanced or multi-frame secondary capture...).
    A Secondary Capture with several frames is not one, and a reference to its frame is an error."""
    from pydicom.uid import UID

    name = UID(sop_class_uid).name if sop_class_uid else ""
    return frames > 1 and any(word in name for word in MULTI_FRAME_WORDS)


def build_sr(header: Any, source: DicomSource, probs: np.ndarray, classes: Sequence[str], model: Path,
             version: str) -> Any:
    """The Comprehensive SR (a pydicom dataset) of one classified instance, ``header`` its source."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        CompositeContentItem,
        ContainerContentItem,
        ContentSequence,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )
    from pydicom.uid import generate_uid

    _repair(header)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    by_frame = references_frames(str(header.SOPClassUID), frames)
    top = int(np.argmax(probs))
    items = [
        TextContentItem(name=CodedConcept("111001", "DCM", "Algorithm Name"), value="busi",
                        relationship_type="HAS OBS CONTEXT"),
        TextContentItem(name=CodedConcept("111003", "DCM", "Algorithm Version"), value=version,
                        relationship_type="HAS OBS CONTEXT"),
        ImageContentItem(name=CodedConcept("121112", "DCM", "Source of Measurement"),
                         referenced_sop_class_uid=header.SOPClassUID,
                         referenced_sop_instance_uid=source.sop_instance_uid,
                         referenced_frame_numbers=source.frame if by_frame else None,
                         relationship_type="CONTAINS")
        if is_image_class(str(header.SOPClassUID)) else  # an RT Dose has pixels but is no image: COMPOSITE
        CompositeContentItem(name=CodedConcept("121112", "DCM", "Source of Measurement"),
                             referenced_sop_class_uid=header.SOPClassUID,
                             referenced_sop_instance_uid=source.sop_instance_uid, relationship_type="CONTAINS"),
        TextContentItem(name=CodedConcept("121071", "DCM", "Finding"), value=classes[top], relationship_type="CONTAINS"),
    ]
    items += [
        NumContentItem(name=CodedConcept(f"busi-prob-{i}", CODING_SCHEME, f"Probability of {c}"), value=float(p),
                       unit=CodedConcept("1", "UCUM", "no units"), relationship_type="CONTAINS")
        for i, (c, p) in enumerate(zip(classes, probs))
    ]
    which = f" Frame {source.frame} of {frames} of the source." if frames > 1 and not by_frame else ""
    items.append(TextContentItem(name=CodedConcept("121106", "DCM", "Comment"), value=NOTICE + which,
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
