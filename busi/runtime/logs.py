"""The job's log: one place that sets it up (``busi-job``'s ``main``).

busi's own records are written as they are. Records of the libraries busi drives (pydicom when a
file will not decode, highdicom as it builds a report, OpenVINO, NNCF...) are one line each,
prefixed with the library's name: a library that logs an exception with its traceback (pydicom's
decoders do, for every plugin that fails on a file) would otherwise write a dozen lines into a log
that a hospital pipeline scans for errors, for a file whose row already says what failed. So a
library's record never carries a traceback, and above WARNING it is a WARNING: whether the job
failed is busi's to say. highdicom's INFO records (one per module it copies into each report)
are not written; pydicom's warnings, which it also logs, are not printed a second time.
"""

from __future__ import annotations

import logging
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%H:%M:%S"
# libraries whose INFO records say nothing a user of busi needs, per file
QUIET = {"highdicom": logging.WARNING}


class LibraryRecords(logging.Filter):
    """A record not from busi: its message on one line, after the library's name, without the
    traceback, and at most a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "busi" or record.name.startswith("busi.") or record.name == "root":
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None and str(record.exc_info[1]) not in text:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        record.msg, record.args = f"{record.name.split('.')[0]}: {' '.join(text.split())}", None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def setup_logging(verbose: bool = False) -> None:
    """busi's format on stderr (INFO, or DEBUG with ``verbose``), with ``LibraryRecords`` on every
    handler of the root logger."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, datefmt=DATEFMT,
                        stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LibraryRecords) for f in handler.filters):
            handler.addFilter(LibraryRecords())
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    # pydicom logs each warning it raises (warn_and_log): the log line is enough
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
