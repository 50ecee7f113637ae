"""The runner's overlap (cvtool/pipelines/runner.py): forward passes in a device thread and outputs written by a
writer pool while the next batch runs, and records still come back one per input, in input order, each only
once its outputs are on disk; errors stay with their input; memory is bounded; stopping early leaves no write
half done and no thread behind."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cvtool.errors import InputError
from cvtool.io.atomic import atomic_write_text
from cvtool.io.inputs import InputItem
from cvtool.pipelines import runner
from cvtool.pipelines.runner import run

ROOT = Path(__file__).resolve().parents[1]


class _Writing:
    """A pipeline whose `save` writes one JSON file per input, atomically, slower for early inputs (so the
    writer pool finishes them out of order); 'bad-save' fails in save, 'bad-decode' in prepare."""

    task, model_name, weights_sha256 = "test", "writing", None
    max_pixels, no_video_reason = None, "a test pipeline"

    def __init__(self, delays: dict[str, float] | None = None, explode_on: str | None = None):
        self.delays = delays or {}
        self.explode_on = explode_on
        self.saved: list[str] = []
        self.save_threads: set[str] = set()
        self.predict_threads: set[str] = set()
        self.lock = threading.Lock()

    def already_done(self, path):
        return False

    def prepare(self, path):
        if "bad-decode" in path:
            raise InputError("could not decode image", path)
        return path

    def predict(self, samples):
        self.predict_threads.add(threading.current_thread().name)
        return [{"name": Path(s).name} for s in samples]

    def save(self, path, sample, result, out_dir):
        time.sleep(self.delays.get(Path(path).name, 0.0))
        if self.explode_on is not None and self.explode_on in path:
            raise RuntimeError("a bug in a renderer")
        if "bad-save" in path:
            raise InputError("cannot encode image as .png", path)
        target = Path(out_dir) / f"{Path(path).name}.json"
        atomic_write_text(target, json.dumps(result))
        with self.lock:
            self.saved.append(path)
            self.save_threads.add(threading.current_thread().name)
        return [str(target)]


def _items(names):
    return [InputItem(name) for name in names]


def test_the_first_inputs_outputs_are_written_before_any_others(tmp_path):
    """A file the run writes once (detect's classes.txt, claimed by the first save) is listed by the first record,
    as in a sequential run, however slow the first input's write is."""
    names = [f"in/{i:02d}.jpg" for i in range(6)]
    pipeline = _Writing({"00.jpg": 0.3})
    records = list(run(pipeline, _items(names), batch_size=2, workers=3, out_dir=tmp_path))
    assert pipeline.saved[0] == names[0]
    assert [r["path"] for r in records] == names


def test_records_come_in_input_order_with_their_outputs_written(tmp_path):
    names = [f"in/{i:02d}.jpg" for i in range(10)]
    # the first inputs of each batch take longest to write: the pool finishes them last
    pipeline = _Writing({f"{i:02d}.jpg": 0.05 * (3 - i % 4) for i in range(10)})
    seen = []
    for record in run(pipeline, _items(names), batch_size=4, workers=3, out_dir=tmp_path):
        # handed back only once its output is there (a --records journal never lists an unwritten output)
        assert Path(record["outputs"][0]).is_file()
        seen.append(record["path"])
    assert seen == names
    assert pipeline.save_threads and all(name.startswith("cvtool-write") for name in pipeline.save_threads)
    assert len(pipeline.predict_threads) == 1 and pipeline.predict_threads.pop().startswith("cvtool-device")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{Path(n).name}.json" for n in names)


def test_each_error_stays_with_its_own_input(tmp_path):
    names = ["a.jpg", "bad-decode.jpg", "b.jpg", "bad-save.jpg", "c.jpg"]
    items = _items(names[:2]) + [InputItem("missing.jpg", error="no such file")] + _items(names[2:])
    records = list(run(_Writing({"a.jpg": 0.1}), items, batch_size=2, workers=2, out_dir=tmp_path))
    assert [(r["path"], r.get("error")) for r in records] == [
        ("a.jpg", None), ("bad-decode.jpg", "could not decode image"), ("missing.jpg", "no such file"),
        ("b.jpg", None), ("bad-save.jpg", "cannot encode image as .png"), ("c.jpg", None)]
    assert [r["result"]["name"] for r in records if "result" in r] == ["a.jpg", "b.jpg", "c.jpg"]


def test_the_writer_holds_a_bounded_number_of_inputs(tmp_path):
    """The records wait for the slowest write; no more than 2 x batch + batch inputs are held meanwhile."""
    pipeline = _Writing({"000.jpg": 0.3})
    held = []
    for count, _ in enumerate(run(pipeline, _items([f"{i:03d}.jpg" for i in range(40)]), batch_size=2, workers=2,
                                  out_dir=tmp_path), 1):
        held.append(len(pipeline.saved) - count)
    assert max(held) <= 3 * 2


def test_stopping_early_drops_the_queued_writes_and_leaves_no_temp_files(tmp_path):
    pipeline = _Writing({f"{i:03d}.jpg": 0.02 for i in range(200)})
    records = run(pipeline, _items([f"{i:03d}.jpg" for i in range(200)]), batch_size=4, workers=2, out_dir=tmp_path)
    assert next(records)["path"] == "000.jpg"
    records.close()  # what a Ctrl-C or a closed stdout does to the generator
    written = len(pipeline.saved)
    time.sleep(0.2)
    assert len(pipeline.saved) == written < 200  # nothing more is written after close returns
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file of a write cut short
    ours = ("cvtool-write", "cvtool-decode", "cvtool-device")
    assert not [t for t in threading.enumerate() if t.name.startswith(ours)]


def test_an_unexpected_error_in_save_stops_the_batch_and_the_pool(tmp_path):
    pipeline = _Writing(explode_on="003")
    with pytest.raises(RuntimeError, match="a bug in a renderer"):
        list(run(pipeline, _items([f"{i:03d}.jpg" for i in range(50)]), batch_size=4, workers=2, out_dir=tmp_path))
    assert len(pipeline.saved) < 50
    assert not [t for t in threading.enumerate() if t.name.startswith("cvtool-write")]


def _classify_records(inputs, out: Path, **kwargs) -> list[dict]:
    import cvtool

    classifier = cvtool.Classifier("lenet5_digits", device="cpu")
    return [r.record for r in classifier.run(inputs, out=out, batch_size=3, workers=2, **kwargs)]


def _same_stem_inputs(tmp_path: Path) -> list[str]:
    """The ten digits twice, from two folders: the same stems, so the second folder's outputs get hashed names."""
    import shutil

    inputs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for digit in sorted((ROOT / "sample_images" / "digits").glob("*.png")):
            shutil.copy(digit, tmp_path / folder / digit.name)
            inputs.append(str(tmp_path / folder / digit.name))
    return inputs


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "ms"} for r in records]


def test_the_pool_writes_what_the_main_thread_wrote(tmp_path):
    """A real classifier with --out: the records, the output names (two inputs per stem) and the files are
    those of the old in-line writes."""
    inputs = _same_stem_inputs(tmp_path)
    pooled = _classify_records(inputs, tmp_path / "pooled")
    runner._SERIAL = True
    try:
        inline = _classify_records(inputs, tmp_path / "inline")
    finally:
        runner._SERIAL = False
    rename = lambda rs, d: json.loads(json.dumps(_without_timing(rs)).replace(str(tmp_path / d), "OUT"))  # noqa: E731
    assert rename(pooled, "pooled") == rename(inline, "inline")
    assert [r["path"] for r in pooled] == inputs
    names = [Path(r["outputs"][0]).name for r in pooled]
    assert names[:10] == [f"digit_{i}.json" for i in range(10)]
    assert all(n.startswith("digit_") and len(n) == len("digit_0-12345678.json") for n in names[10:])
    for record in pooled:
        assert json.loads(Path(record["outputs"][0]).read_text())["result"] == record["result"]


def test_a_journal_rerun_does_only_what_is_left(tmp_path):
    """--records: a batch stopped after 4 records leaves a journal of exactly those 4, their outputs written;
    the rerun does the other inputs only."""
    inputs = _same_stem_inputs(tmp_path)[:10]
    journal = tmp_path / "records.jsonl"
    import cvtool

    classifier = cvtool.Classifier("lenet5_digits", device="cpu")
    first = classifier.run(inputs, out=tmp_path / "out", batch_size=3, workers=2, records=journal)
    done = [next(first).record["path"] for _ in range(4)]
    first.close()
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r["path"] for r in lines] == done == inputs[:4]
    assert all(Path(r["outputs"][0]).is_file() for r in lines)
    rest = [r.record["path"] for r in classifier.run(inputs, out=tmp_path / "out", batch_size=3, workers=2,
                                                     records=journal)]
    assert rest == inputs[4:]
