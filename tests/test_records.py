import csv
import io
import json

from cvtool.io.records import make_writer
from cvtool.tasks.classify import SPEC

COLUMNS, rows = list(SPEC.columns), SPEC.rows

GOOD = {"path": "a.jpg", "task": "classify", "model": "m", "weights_sha256": "ab", "ms": 1.5,
        "result": {"top_k": [{"label": "cat", "index": 3, "prob": 0.75}, {"label": "dog", "index": 1, "prob": 0.25}]}}
BAD = {"path": "b.jpg", "error": "empty file (0 bytes)"}


def written(fmt: str) -> str:
    stream = io.StringIO()
    writer = make_writer(fmt, COLUMNS, rows, stream)
    writer.write(GOOD)
    writer.write(BAD)
    writer.close()
    return stream.getvalue()


def test_jsonl_is_one_record_per_line():
    assert [json.loads(line) for line in written("jsonl").splitlines()] == [GOOD, BAD]


def test_json_is_one_array():
    assert json.loads(written("json")) == [GOOD, BAD]


def test_csv_flattens_top_k_and_puts_errors_in_their_column():
    table = list(csv.reader(io.StringIO(written("csv"))))
    assert table == [
        ["path", "frame", "rank", "label", "prob", "error"],
        ["a.jpg", "", "1", "cat", "0.75", ""],
        ["a.jpg", "", "2", "dog", "0.25", ""],
        ["b.jpg", "", "", "", "", "empty file (0 bytes)"],
    ]


def test_table_shows_labels_and_errors():
    text = written("table")
    assert "cat" in text and "0.7500" in text and "error: empty file (0 bytes)" in text


def test_default_is_jsonl_when_not_a_terminal():
    stream = io.StringIO()
    assert type(make_writer(None, COLUMNS, rows, stream)).__name__ == "JsonLinesWriter"
