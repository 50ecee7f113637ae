"""The task table (cvtool.tasks) is the one place each option is declared: driven by the table, as the registry's
contract tests are driven by the registry. For every task and option: the CLI's flag, default and range are the
table's; the API's keyword default is the table's and its range check runs before anything loads; `--help` and the
README's option tables say what the table says; the CLI's record is the API's on the same input."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import click
import pytest
import typer.main

from cvtool import UsageError
from cvtool.cli import app
from cvtool.cli_build import FORMAT, IMAGES, _cli_default
from cvtool.tasks import spec as task_spec, specs
from cvtool.tasks.doc import README_BEGIN, README_END, option_tables
from cvtool.tasks.options import CALL, PATHS, Option
from tests.conftest import invoke_cli, jsonl

ROOT = Path(__file__).resolve().parents[1]
DIGITS = sorted((ROOT / "sample_images" / "digits").glob("*.png"))

CLI_OPTIONS = [(s.name, o) for s in specs() for o in s.options.select(route="cli")]
API_OPTIONS = [(s.name, o) for s in specs() for o in s.options.select(route="api") if o.stage != "run"]
BOUNDED = [(name, o) for name, o in API_OPTIONS if o.low is not None or o.high is not None]


def _id(item) -> str:
    return f"{item[0]}:{item[1].name}" if isinstance(item, tuple) else str(item)


def click_command(task: str) -> click.Command:
    group = typer.main.get_command(app)
    return group.commands[task]  # type: ignore[attr-defined]


def click_param(task: str, name: str) -> click.Parameter:
    return next(p for p in click_command(task).params if p.name == name)


@pytest.mark.parametrize("item", CLI_OPTIONS, ids=_id)
def test_every_cli_option_has_the_tables_flag_default_range_and_help(item):
    task, option = item
    param = click_param(task, option.name)
    assert option.cli_flag in param.opts
    if option.short:
        assert option.short in param.opts
    default = _cli_default(option)
    if option.type is PATHS:
        assert param.default in (None, ())
    else:
        assert param.default == default or str(param.default) == str(default)
    if option.exclusive:  # typer has no open ranges: the help says it, the table's check refuses the bounds
        assert (param.min, param.max) == (None, None) and param.help.endswith(f"[{option.bounds_text()}]")
    else:
        assert (param.min, param.max) == (option.low, option.high)
        assert param.help == (option.help or None)


@pytest.mark.parametrize("task", [s.name for s in specs()])
def test_a_command_takes_exactly_the_tables_cli_options(task):
    names = {p.name for p in click_command(task).params} - {IMAGES, FORMAT}
    assert names == set(task_spec(task).options.names(route="cli"))
    fmt = click_param(task, FORMAT)
    assert tuple(f.value for f in fmt.type_descriptor.annotation) == task_spec(task).formats


@pytest.mark.parametrize("item", [i for i in CLI_OPTIONS if i[1].low is not None or i[1].high is not None], ids=_id)
def test_the_cli_refuses_a_value_outside_the_tables_range(item):
    task, option = item
    bad = (option.low - 1) if option.low is not None else option.high + 1
    args = [task, "x.jpg"] if task != "verify-face" else [task, "a.jpg", "b.jpg"]
    result = invoke_cli(*args, option.cli_flag, str(int(bad) if option.type is int else bad))
    assert result.returncode == 2
    assert option.cli_flag in result.stderr
    assert re.search(r"(greater|less) than or equal to" if not option.exclusive else "out of range", result.stderr)


@pytest.mark.parametrize("item", API_OPTIONS, ids=_id)
def test_every_api_keyword_default_is_the_tables(item):
    task, option = item
    parameters = inspect.signature(task_spec(task).api_class().__init__).parameters
    if option.name in parameters:
        assert parameters[option.name].default == option.default
    else:  # stylize's optimisation settings are keyword arguments, checked by name (test below)
        assert task == "stylize" and option.name in task_spec("stylize").options.names()


@pytest.mark.parametrize("item", BOUNDED, ids=_id)
def test_the_api_checks_the_tables_range_before_loading_anything(item):
    task, option = item
    bad = (option.low - 1) if option.low is not None else option.high + 1
    cls = task_spec(task).api_class()
    model = "no_such_model" if task != "stylize" else None  # a range error comes first, before the model is looked up
    with pytest.raises(UsageError, match=rf"^{option.name}=.* is out of range: "):
        cls(model, **{option.name: type(option.default or option.low or 0)(bad) if option.type is int else bad})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_the_api_refuses_a_number_that_is_not_finite(value):
    with pytest.raises(UsageError, match="not a finite number"):
        task_spec("detect").api_class()("no_such_model", iou=value)


def test_no_default_or_range_is_written_again_outside_the_table():
    """The literals of the table's non-trivial numeric defaults do not appear as defaults in the routes' code."""
    files = ["cvtool/cli.py", "cvtool/cli_build.py", "cvtool/api.py", "cvtool/serve/app.py", "cvtool/serve/client.py",
             "cvtool/pipelines/detect.py", "cvtool/pipelines/segment.py", "cvtool/pipelines/classify.py",
             "cvtool/pipelines/stylize.py", "cvtool/scale/ray_data.py"]
    text = {f: (ROOT / f).read_text() for f in files if (ROOT / f).is_file()}
    literals = {repr(o.default) for s in specs() for o in s.options
                if isinstance(o.default, (int, float)) and not isinstance(o.default, bool) and o.default not in (0, 1)}
    assert literals >= {"0.45", "300", "32", "0.5"}
    found = [(f, lit) for f, body in text.items() for lit in literals
             if re.search(rf"(:[^=\n:]+=\s*|Query\(|Option\(){re.escape(lit)}\b", body)]
    assert found == []


def test_the_readmes_option_tables_are_the_tables():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(README_BEGIN), readme.index(README_END)
    assert readme[start:end + len(README_END)] == option_tables()


@pytest.mark.parametrize("task", [s.name for s in specs()])
def test_help_lists_every_option_of_the_table(task):
    out = invoke_cli(task, "--help").stdout
    for option in task_spec(task).options.select(route="cli"):
        assert option.cli_flag in out


def test_with_options_changes_a_call_option_and_shares_the_network(tmp_path):
    from cvtool import Classifier

    clf = Classifier("lenet5_digits", top_k=2)
    three = clf.with_options(top_k=3)
    assert three is not clf and three.loaded is clf.loaded and three._lock is clf._lock
    assert len(three(DIGITS[0]).top_k) == 3 and len(clf(DIGITS[0]).top_k) == 2
    assert clf.with_options(top_k=2) is clf  # nothing changes: the same object
    with pytest.raises(UsageError, match="top_k=0 is out of range: at least 1"):
        clf.with_options(top_k=0)
    with pytest.raises(UsageError, match="device: not a per-call option of classify"):
        clf.with_options(device="cpu")


def test_call_options_are_the_objects_attributes():
    from cvtool import Classifier

    clf = Classifier("lenet5_digits", top_k=4)
    assert clf.top_k == 4 and clf.max_pixels == task_spec("classify").options["max_pixels"].default
    with pytest.raises(AttributeError):
        clf.no_such_option


def test_the_cli_record_is_the_api_record():
    from cvtool import Classifier

    result = invoke_cli("classify", *map(str, DIGITS[:3]), "--model", "lenet5_digits", "--top-k", "2", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    cli = jsonl(result.stdout)
    api = [r.to_dict() for r in Classifier("lenet5_digits", top_k=2)([str(p) for p in DIGITS[:3]])]
    for record in cli + api:
        record.pop("ms")
    assert cli == api


def test_stylize_refuses_an_unknown_setting_by_name():
    from cvtool import Stylizer

    with pytest.raises(UsageError, match="unknown style setting: stpes"):
        Stylizer(style="x.jpg", stpes=3)


def test_option_types_are_checked_when_declared():
    with pytest.raises(TypeError):
        Option("x", list)
    with pytest.raises(UsageError):
        Option("x", int, 0, low=1)  # a default outside its own range


def test_call_options_of_every_task_are_taken_by_its_api():
    for spec in specs():
        parameters = inspect.signature(spec.api_class().__init__).parameters
        for name in spec.options.names(stage=CALL, route="api"):
            assert name in parameters, (spec.name, name)


def test_tables_rows_match_their_columns():
    samples = {
        "classify": {"top_k": [{"label": "8", "index": 8, "prob": 0.9}]},
        "detect": {"detections": [{"label": "cat", "score": 0.5, "box": [1, 2, 3, 4]}]},
        "segment": {"classes": [{"label": "shape", "pixels": 10, "fraction": 0.1}]},
        "stylize": {"losses": {"content": 1.0, "style": 2.0}, "style_distance": {"result": 1.0, "content": 4.0}},
        "verify-face": {"faces": [{"name": "ann", "distance": 0.3, "box": [1, 2, 3, 4]}]},
        "landmarks": {"names": ["a", "b"], "faces": [{"box": [1, 2, 3, 4], "score": None,
                                                     "points": [[1, 2], [3, 4]]}]},
        "track": {"detections": [{"label": "cat", "score": 0.5, "box": [1, 2, 3, 4], "track_id": 7}]},
        "localize": {"pc": 0.9, "label": "cat", "class_prob": 0.8, "box": [1, 2, 3, 4], "detections": []},
    }
    for spec in specs():
        rows = spec.rows(samples[spec.name])
        assert rows and all(len(row) == len(spec.columns) for row in rows), spec.name
    assert task_spec("stylize").rows(samples["stylize"]) == [[1.0, 2.0, 0.25]]
    pair = task_spec("verify-face").tables["pair"]
    record = {"path_b": "b.jpg", "same": True, "distance": 0.4, "threshold": 0.6, "detector": "mmod", "model": "m"}
    assert pair.rows(record) == [[record[c] for c in pair.columns]]
    assert json.dumps(task_spec("stylize").tables["feed_forward"].rows({"size": [3, 5]})) == "[[3, 5]]"


@pytest.mark.parametrize("value", ["0", "1"])
def test_an_open_bound_is_refused_on_every_route(value, tmp_path):
    """segment --threshold is strictly between 0 and 1: the CLI, the API and the table say so alike."""
    option = task_spec("segment").options["threshold"]
    assert option.exclusive and option.bounds_text() == "strictly between 0 and 1"
    result = invoke_cli("segment", "x.png", "--threshold", value)
    assert result.returncode == 2 and "--threshold" in result.stderr and "strictly between 0 and 1" in result.stderr
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        task_spec("segment").api_class()("no_such_model", threshold=float(value))
    option.check(0.5)


def test_tiles_must_overlap_by_less_than_half(unet_checkpoint, tmp_path):
    import cv2
    import numpy as np

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    result = invoke_cli("segment", str(image), "--weights", str(unet_checkpoint), "--tile", "32", "--overlap", "16")
    assert result.returncode != 0 and "--overlap 16 must be less than half of --tile 32" in result.stderr


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_the_cli_record_is_the_api_record_for_detect_and_segment(task, yolo_checkpoint, unet_checkpoint, tmp_path):
    import cv2
    import numpy as np

    image = tmp_path / "shapes.png"
    canvas = np.zeros((96, 128, 3), np.uint8)
    cv2.rectangle(canvas, (20, 20), (60, 70), (255, 255, 255), -1)
    cv2.imwrite(str(image), canvas)
    weights = yolo_checkpoint if task == "detect" else unet_checkpoint
    options = {"conf": 0.0, "max_det": 5} if task == "detect" else {"alpha": 0.3}
    flags = [f for name, value in options.items() for f in (task_spec(task).options[name].cli_flag, str(value))]
    result = invoke_cli(task, str(image), "--weights", str(weights), *flags, "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    [cli] = jsonl(result.stdout)
    api = task_spec(task).api_class()(weights=weights, **options)(str(image)).to_dict()
    cli.pop("ms"), api.pop("ms")
    assert cli == api


def test_keep_classes_still_reads_the_kept_classes_with_a_deprecation_warning(yolo_checkpoint):
    from cvtool import Detector

    det = Detector(weights=yolo_checkpoint, classes=["square"])
    assert det.options["classes"] == ["square"] and det.classes == ["square", "disk"]  # the model's own list
    with pytest.warns(DeprecationWarning, match="keep_classes is deprecated"):
        assert det.keep_classes == ["square"]
    assert det.with_options(classes="square,disk".split(",")).options["classes"] == ["square", "disk"]


def test_ray_set_values_are_typed_and_checked_by_the_table():
    options = task_spec("detect").options
    assert options.setting("conf=0.5") == ("conf", 0.5)
    assert options.setting("max-det=3") == ("max_det", 3)
    assert options.setting("classes=person, car") == ("classes", ["person", "car"])
    assert options.setting("keypoints=true") == ("keypoints", True)
    for text, reason in [("conf", "expected KEY=VALUE"), ("nope=1", "no option 'nope'"), ("conf=x", "conf takes float"),
                         ("conf=2", "out of range: from 0 to 1"), ("keypoints=maybe", "keypoints takes bool")]:
        with pytest.raises(UsageError, match=re.escape(reason)):
            options.setting(text)
