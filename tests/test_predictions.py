"""The prediction CSV: the sink (resume, lock, foreign files) and the merge of shards, checked
against their markers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from busi.data.dicom import DicomSource
from busi.errors import ConfigError, DataError
from busi.files.text import csv_text, open_text
from busi.predict.merge import merge_shards
from busi.predict.output import (
    CsvSink,
    done_marker,
    own_outputs,
    prediction_columns,
    prediction_row,
    row_key,
)

CLASSES = ("normal", "benign", "malignant")


def _shard(output: Path, index: int, count: int, paths: list[str], marker: bool = True) -> Path:
    part = output.with_name(f"{output.stem}.part-{index:05d}-of-{count:05d}{output.suffix}")
    with part.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(prediction_columns(CLASSES))
        for p in paths:
            w.writerow([p, "benign", 1, "0.1", "0.8", "0.1", ""])
    if marker:
        done_marker(part).write_text(json.dumps({"rows": len(paths)}))
    return part


@pytest.mark.parametrize("name", ["preds.csv", "br[1].csv", "a*b?.csv"])
def test_merge_joins_every_shard_in_natural_order_whatever_the_name(tmp_path: Path, name: str) -> None:
    output = tmp_path / name
    _shard(output, 0, 2, ["x (10).png", "x (2).png"])
    _shard(output, 1, 2, ["x (1).png"])
    assert merge_shards(output) == 3
    with output.open(newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["x (1).png", "x (2).png", "x (10).png"]


def test_merge_names_every_missing_or_incomplete_shard(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    _shard(output, 0, 3, ["a.png"])
    _shard(output, 2, 3, ["c.png"], marker=False)
    with pytest.raises(DataError, match=r"p.part-00001-of-00003.csv: missing.*p.part-00002-of-00003.csv: incomplete"):
        merge_shards(output)
    assert not output.exists()


# ------------------------------------------------------------------ the sink

AWKWARD = ["a\rb.png", "c\nd.png", "e\r\nf.png", "g\u2028h.png", "i\x1cj.png", "k\x85l.png", os.fsdecode(b"p\xffq.png")]
COLUMNS = prediction_columns(CLASSES)


def _rows(paths: list[str]) -> list[list[object]]:
    return [prediction_row(p, np.array([0.1, 0.8, 0.1]), CLASSES) for p in paths]


def test_resume_rereads_names_with_line_breaks_and_non_utf8_bytes_once_each(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    sink = CsvSink(out, COLUMNS, resume=False)
    sink.write(_rows(AWKWARD[:4]))
    sink.close()
    with out.open("ab") as fh:  # a kill mid-row: a partial last record
        fh.write(b'"x\ny.png,benign,1,0.1')
    sink = CsvSink(out, COLUMNS, resume=True)
    assert sink.done == set(AWKWARD[:4]) and len(sink.previous_rows) == 4
    sink.write(_rows([p for p in AWKWARD if p not in sink.done]))
    sink.close()
    with open_text(out) as fh:
        records = list(csv.reader(fh))
    assert records[0] == COLUMNS and [r[0] for r in records[1:]] == AWKWARD
    # the shard's marker agrees with the file, so merge takes it
    shard = tmp_path / "m.part-00000-of-00001.csv"
    shard.write_bytes(out.read_bytes())
    done_marker(shard).write_text(json.dumps({"rows": len(AWKWARD)}))
    assert merge_shards(tmp_path / "m.csv") == len(AWKWARD)


def _frame_rows(path: str, frames: range) -> list[list[object]]:
    """The rows of a cine loop's frames, as ``--dicom-frame all`` writes them."""
    return [prediction_row(path, np.array([0.1, 0.8, 0.1]), CLASSES, source=DicomSource("1.2", "1.2.3", "1.2.3.4", k))
            for k in frames]


@pytest.mark.parametrize("cut", ["at_a_row", "mid_row"])
def test_resume_predicts_a_cine_loop_cut_short_again_and_keeps_whole_files(tmp_path: Path, cut: str) -> None:
    """A file's rows are written together, but a kill mid-write may leave some frames of the last
    cine loop: resume drops that loop's rows (and only those) and predicts it again."""
    out = tmp_path / "p.csv"
    sink = CsvSink(out, COLUMNS, resume=False)
    sink.write([*_rows(["a.png"]), *_frame_rows("loop1", range(1, 4)), *_rows(["b.png"]),
                *_frame_rows("loop2", range(1, 6))])
    sink.close()
    lines = out.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:-2])  # loop2's frames 4 and 5 never reached the disk
    out.write_bytes(kept + (lines[-2][:25] if cut == "mid_row" else b""))
    sink = CsvSink(out, COLUMNS, resume=True)
    assert sink.done == {"a.png", "loop1", "b.png"}
    assert [r["frame"] for r in sink.previous_rows] == ["", "1", "2", "3", ""]
    sink.write(_frame_rows("loop2", range(1, 6)))
    sink.close()
    with open_text(out) as fh:
        keys = [row_key(r, COLUMNS) for r in list(csv.reader(fh))[1:]]
    assert keys == [("a.png", 0), ("loop1", 1), ("loop1", 2), ("loop1", 3), ("b.png", 0),
                    *[("loop2", k) for k in range(1, 6)]]
    # the rows cannot tell a whole loop from a cut one: every resume predicts the last loop again
    sink = CsvSink(out, COLUMNS, resume=True)
    assert "loop2" not in sink.done and len(sink.previous_rows) == 5
    sink.close()


def test_merge_orders_a_loops_frames_and_refuses_one_frame_twice(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    for i, rows in enumerate([[*_frame_rows("loop", range(10, 12)), *_rows(["z.png"])],
                              [*_rows(["a.png"]), *_frame_rows("loop", range(1, 10))]]):
        part = output.with_name(f"p.part-{i:05d}-of-00002.csv")
        part.write_bytes(csv_text(COLUMNS, rows).encode())
        done_marker(part).write_text(json.dumps({"rows": len(rows)}))
    assert merge_shards(output) == 13
    with output.open(newline="") as fh:
        assert [row_key(r, COLUMNS) for r in list(csv.reader(fh))[1:]] == \
            [("a.png", 0), *[("loop", k) for k in range(1, 12)], ("z.png", 0)]
    part = output.with_name("p.part-00001-of-00002.csv")
    part.write_bytes(csv_text(COLUMNS, [*_rows(["a.png"]), *_frame_rows("loop", range(1, 11))]).encode())
    done_marker(part).write_text(json.dumps({"rows": 11}))
    with pytest.raises(DataError, match=r"paths in more than one shard, e.g. \['loop'\]"):
        merge_shards(output)


@pytest.mark.parametrize("content", [b"my notes\n", b"path,label\nx.png,benign\n", b"\x89PNG\r\n\x1a\n\x00\xff" * 50,
                                     ",".join(prediction_columns(("a", "b"))).encode() + b"\nx.png,a,0,0.9,0.1,\n"])
def test_resume_changes_nothing_that_is_not_this_jobs_csv(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(ConfigError, match=r"notes.txt is not this job's prediction CSV.*left as it was"):
        CsvSink(out, COLUMNS, resume=True)
    assert out.read_bytes() == content


def test_resume_refuses_another_models_finished_csv(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    sink = CsvSink(out, COLUMNS, resume=False)
    sink.write(_rows(["a.png"]))
    sink.close()
    done_marker(out).write_text(json.dumps({"rows": 1, "model": "/models/a/model.keras"}))
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="says model /models/a/model.keras"):
        CsvSink(out, COLUMNS, resume=True, model=Path("/models/b/model.keras"))
    assert out.read_bytes() == before and done_marker(out).exists()


def test_output_that_is_a_folder_or_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        CsvSink(tmp_path / "out", COLUMNS, resume=False)
    first = CsvSink(tmp_path / "p.csv", COLUMNS, resume=False)
    try:
        with pytest.raises(ConfigError, match=rf"--output {tmp_path / 'p.csv'} is in use .*pid {os.getpid()}"):
            CsvSink(tmp_path / "p.csv", COLUMNS, resume=True)
    finally:
        first.close()
    CsvSink(tmp_path / "p.csv", COLUMNS, resume=True).close()  # released on close


@pytest.mark.integration
def test_merge_names_damaged_markers_and_shards(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    _shard(output, 0, 4, ["a.png"])
    done_marker(_shard(output, 1, 4, ["b.png"])).write_text("{half")
    done_marker(_shard(output, 2, 4, ["c.png"])).write_text(json.dumps({"inputs": 1}))
    part = _shard(output, 3, 4, [])
    part.write_bytes(b"")
    with pytest.raises(DataError) as e:
        merge_shards(output)
    msg = str(e.value)
    assert "p.part-00001-of-00004.csv.done.json: not a done marker" in msg
    assert "p.part-00002-of-00004.csv.done.json: not a done marker" in msg
    assert "p.part-00003-of-00004.csv: empty" in msg
    assert not output.exists()


def test_merge_keeps_non_utf8_names_and_refuses_a_folder_output(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    name = os.fsdecode(b"scan\xe9.png")  # Latin-1 bytes from an old share
    part = output.with_name("p.part-00000-of-00001.csv")
    part.write_bytes(",".join(COLUMNS).encode() + b"\nscan\xe9.png,benign,1,0.1,0.8,0.1,\n")
    done_marker(part).write_text(json.dumps({"rows": 1}))
    assert merge_shards(output) == 1
    with open_text(output) as fh:
        assert list(csv.reader(fh))[1][0] == name
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        merge_shards(tmp_path / "dir.csv")


def test_own_outputs_are_never_inputs(tmp_path: Path) -> None:
    from busi.data.inputs import expand_inputs

    (tmp_path / "in").mkdir()
    for n in ("a.png", "p.csv", "p.csv.done.json", "p.part-00001-of-00002.csv", "p.part-00001-of-00002.csv.done.json",
              "other.csv"):
        (tmp_path / "in" / n).write_bytes(b"x")
    (tmp_path / "in" / "cams" / "x").mkdir(parents=True)
    (tmp_path / "in" / "cams" / "x" / "a.png.gradcam.png").write_bytes(b"x")
    found = expand_inputs([str(tmp_path / "in")], skip=own_outputs(tmp_path / "in" / "p.csv", tmp_path / "in" / "cams"))
    assert sorted(Path(f.path).name for f in found) == ["a.png", "other.csv"]


def test_merge_refuses_shards_of_different_engines_unless_allowed(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    engines = [{"name": "openvino", "version": "2026.4.1", "precision": "bfloat16"},
               {"name": "tensorflow", "version": "2.21.0", "precision": "float32"}]
    for i, (engine, path) in enumerate(zip(engines, ["a.png", "b.png"])):
        part = _shard(output, i, 2, [path], marker=False)
        done_marker(part).write_text(json.dumps({"rows": 1, "engine": engine}))
    with pytest.raises(DataError) as info:
        merge_shards(output)
    message = str(info.value)
    assert "openvino bfloat16: p.part-00000-of-00002.csv" in message
    assert "tensorflow float32: p.part-00001-of-00002.csv" in message and "--allow-mixed-engines" in message
    assert not output.exists()
    assert merge_shards(output, allow_mixed_engines=True) == 2
    # the same engine and precision on every shard (versions may differ): merged
    for i in range(2):
        marker = done_marker(output.with_name(f"p.part-0000{i}-of-00002.csv"))
        marker.write_text(json.dumps({"rows": 1, "engine": {**engines[0], "version": f"2026.4.{i}"}}))
    output.unlink()
    assert merge_shards(output) == 2


OLD_COLUMNS = ["path", "label", "label_index", "prob_normal", "prob_benign", "prob_malignant", "error"]


def test_merge_joins_shards_written_before_the_frame_column(tmp_path: Path) -> None:
    """Shards of the header busi wrote before DICOM's columns (an older busi on the same array
    job, or a CSV made by hand) merge as they did: no frame column is no frame. A shard with no
    path column is named, never a traceback."""
    output = tmp_path / "p.csv"
    for i, paths in enumerate((["b (2).png", "b (10).png"], ["a.png"])):
        part = output.with_name(f"p.part-{i:05d}-of-00002.csv")
        part.write_text(csv_text(OLD_COLUMNS, [[p, "benign", 1, "0.1", "0.8", "0.1", ""] for p in paths]))
        done_marker(part).write_text(json.dumps({"rows": len(paths)}))
    assert merge_shards(output) == 3
    with output.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["a.png", "b (2).png", "b (10).png"] and list(rows[0]) == OLD_COLUMNS
    assert row_key(["a.png", "benign"], OLD_COLUMNS) == ("a.png", 0)
    part = output.with_name("p.part-00001-of-00002.csv")
    part.write_text(csv_text(["file", "label"], [["a.png", "benign"]]))
    done_marker(part).write_text(json.dumps({"rows": 1}))
    with pytest.raises(DataError, match="p.part-00001-of-00002.csv: no path column"):
        merge_shards(output)
