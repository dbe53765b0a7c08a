"""DICOM files written for the tests (pydicom): ultrasound images from pixel arrays, with every
identifying header field set to a marker where a test asks, and hostile files (a bomb header,
truncated pixel data, an unsupported transfer syntax, a DICOMDIR, a structured report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# Identifying fields (names, IDs, dates, places, people, devices): DICOM PS3.15's
# de-identification profile's usual suspects; the PHI test sets each to its marker.
PHI_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientIDs",
    "OtherPatientNames", "PatientMotherBirthName", "PatientTelephoneNumbers", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "AccessionNumber", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyTime", "StudyID", "StudyDescription", "SeriesDescription", "StationName", "DeviceSerialNumber",
    "InstitutionalDepartmentName", "PatientComments", "AdditionalPatientHistory", "ImageComments",
)


def _base(sop_class: str, transfer_syntax: str = "1.2.840.10008.1.2.1", phi: str | None = None) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    if phi is not None:
        from pydicom.config import disable_value_validation

        with disable_value_validation():  # a marker is no valid date: the point of the test
            for name in PHI_FIELDS:
                setattr(ds, name, phi)
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric: str | None = None, phi: str | None = None,
                frames: int | None = None, regions: list[tuple[int, int, int, int]] | None = None,
                transfer_syntax: str = "1.2.840.10008.1.2.1", **elements: Any) -> Path:
    """An ultrasound image storage file of ``pixels`` (H x W, H x W x 3, or F x H x W[ x 3] with
    ``frames``), uncompressed unless ``transfer_syntax`` says (then ``pixels`` must be given
    already encoded as ``elements["PixelData"]``). Returns ``path``; its UIDs are in the file."""
    multi = frames is not None
    ds = _base(US_MULTIFRAME_STORAGE if multi else US_IMAGE_STORAGE, transfer_syntax, phi)
    colour = pixels.ndim == (4 if multi else 3)
    photometric = photometric or ("RGB" if colour else "MONOCHROME2")
    if transfer_syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, int(pixels.dtype.itemsize * 8))
    else:
        h, w = pixels.shape[int(multi) : int(multi) + 2]
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        if colour:
            ds.PlanarConfiguration = 0
    if multi:
        ds.NumberOfFrames = frames
    if regions:
        from pydicom.dataset import Dataset

        items = []
        for x0, y0, x1, y1 in regions:
            r = Dataset()
            r.RegionSpatialFormat = 1
            r.RegionDataType = 1
            r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
            r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
            items.append(r)
        ds.SequenceOfUltrasoundRegions = items
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def uids_of(path: Path) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
            "sop_instance_uid": ds.SOPInstanceUID}


def write_hostile(folder: Path) -> dict[str, Path]:
    """One file of each kind of hostile DICOM busi must refuse (never crash, hang or run out of
    memory on), by name: bomb, truncated, unsupported, dicomdir, sr, rtplan, garbage, jpeg_bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    small = np.zeros((16, 16), np.uint8)
    out: dict[str, Path] = {}
    # a header declaring 65535 x 65535 x 3 x 16 bits x 1000 frames over 256 bytes of pixels
    bomb = _base(US_MULTIFRAME_STORAGE)
    bomb.Rows = bomb.Columns = 65535
    bomb.SamplesPerPixel, bomb.PlanarConfiguration, bomb.PhotometricInterpretation = 3, 0, "RGB"
    bomb.BitsAllocated = bomb.BitsStored = 16
    bomb.HighBit, bomb.PixelRepresentation, bomb.NumberOfFrames = 15, 0, 1000
    bomb.PixelData = b"\0" * 256
    bomb.save_as(folder / "bomb", enforce_file_format=True)
    out["bomb"] = folder / "bomb"
    # pixel data cut short: the file ends half-way through the frame
    full = write_dicom(folder / "full.tmp", np.full((64, 64), 7, np.uint8))
    data = full.read_bytes()
    (folder / "truncated").write_bytes(data[: len(data) - 2048])
    full.unlink()
    out["truncated"] = folder / "truncated"
    # a transfer syntax pydicom has no decoder for (MPEG2 video)
    from pydicom.encaps import encapsulate

    out["unsupported"] = write_dicom(folder / "unsupported", small, transfer_syntax="1.2.840.10008.1.2.4.100",
                                     PixelData=encapsulate([b"\0" * 256]))
    d = _base(DICOMDIR_CLASS)
    d.FileSetID = "EXPORT"
    d.DirectoryRecordSequence = []
    d.save_as(folder / "DICOMDIR", enforce_file_format=True)
    out["dicomdir"] = folder / "DICOMDIR"
    sr = _base(COMPREHENSIVE_SR)
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    sr.save_as(folder / "report.dcm", enforce_file_format=True)
    out["sr"] = folder / "report.dcm"
    rt = _base(RT_PLAN)
    rt.Modality = "RTPLAN"
    rt.RTPlanLabel = "PLAN"
    rt.save_as(folder / "plan", enforce_file_format=True)
    out["rtplan"] = folder / "plan"
    (folder / "garbage").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    out["garbage"] = folder / "garbage"
    # a 16 x 16 header over a JPEG codestream that declares 60000 x 60000 pixels
    sof = (b"\xff\xd8\xff\xc0\x00\x11\x08" + (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
           + b"\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00\xff\xd9")
    out["jpeg_bomb"] = write_dicom(folder / "jpeg_bomb", np.zeros((16, 16, 3), np.uint8), photometric="YBR_FULL_422",
                                   transfer_syntax="1.2.840.10008.1.2.4.50", PixelData=encapsulate([sof]))
    return out
