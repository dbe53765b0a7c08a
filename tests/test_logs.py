"""busi.runtime.logs: a library's records one line each, without tracebacks, at most WARNING."""

from __future__ import annotations

import io
import logging
import warnings

from busi.runtime.logs import LibraryRecords, setup_logging


def _emit(name: str, level: int, exc: bool, verbose_name: str = "x") -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(LibraryRecords())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate, level_before = False, logger.level
    logger.setLevel(logging.DEBUG)
    try:
        if exc:
            try:
                raise RuntimeError("libjpeg error code '-1038'\nsecond line")
            except RuntimeError:
                logger.log(level, "Unable to decode %s", verbose_name, exc_info=True)
        else:
            logger.log(level, "plain %s\n  continued", verbose_name)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(level_before)
    return stream.getvalue()


def test_a_library_exception_is_one_warning_line_naming_the_library() -> None:
    out = _emit("pydicom.pixels.decoders.base", logging.ERROR, exc=True, verbose_name="frame 1")
    assert out == "WARNING pydicom: Unable to decode frame 1 (RuntimeError: libjpeg error code '-1038' second line)\n"
    assert _emit("openvino.runtime", logging.INFO, exc=False) == "INFO openvino: plain x continued\n"


def test_busis_own_records_are_left_as_they_are() -> None:
    out = _emit("busi.data", logging.ERROR, exc=True)
    assert out.startswith("ERROR Unable to decode x\nTraceback") and "RuntimeError" in out


def test_setup_quiets_highdicom_and_pydicoms_second_copy_of_a_warning() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging()
        assert all(any(isinstance(f, LibraryRecords) for f in h.filters) for h in root.handlers)
        assert logging.getLogger("highdicom").getEffectiveLevel() == logging.WARNING
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            setup_logging()  # twice: one filter a handler, not two
            warnings.warn_explicit("Expected explicit VR", UserWarning, "filereader.py", 1, module="pydicom.filereader")
        assert not caught
        assert all(sum(isinstance(f, LibraryRecords) for f in h.filters) == 1 for h in root.handlers)
    finally:
        for h in root.handlers:
            if h not in before:
                root.removeHandler(h)
        for h in before:
            h.filters = [f for f in h.filters if not isinstance(f, LibraryRecords)]
