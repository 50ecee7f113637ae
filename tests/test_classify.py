"""`cvtool classify` end to end, on real images and real (small) weights. A few tests run the real `python -m
cvtool` process (streams, pipes, a whole batch); the rest run the same command in-process (invoke_cli)."""

import csv
import io
import json

import pytest
from conftest import SAMPLES, invoke_cli, jsonl, run_cli

DIGITS = SAMPLES / "digits"


def test_packaged_lenet_reads_real_handwritten_digits_offline():
    result = run_cli("--offline", "classify", str(DIGITS), "--model", "lenet5_digits", "--top-k", "3", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert len(records) == 10
    for record in records:
        expected = record["path"].rsplit("digit_", 1)[1][0]
        assert record["task"] == "classify" and record["model"] == "lenet5_digits"
        assert len(record["weights_sha256"]) == 64 and record["ms"] > 0
        top = record["result"]["top_k"]
        assert len(top) == 3 and top[0]["label"] == expected, record
        assert top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]


def test_a_bad_file_is_reported_in_one_line_and_the_batch_goes_on(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    result = invoke_cli("classify", str(DIGITS / "digit_1.png"), str(bad), str(DIGITS / "digit_2.png"),
                     "--model", "lenet5_digits", "--format", "jsonl")
    assert result.returncode == 1
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [str(DIGITS / "digit_1.png"), str(bad), str(DIGITS / "digit_2.png")]
    assert records[1] == {"path": str(bad), "error": "not an image (unrecognised format)"}
    assert f"cvtool: {bad}: not an image" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_is_reported_and_exit_1(tmp_path):
    result = invoke_cli("classify", str(tmp_path / "nope.jpg"), "--model", "lenet5_digits", "--format", "jsonl")
    assert result.returncode == 1
    assert f"cvtool: {tmp_path / 'nope.jpg'}: no such file" in result.stderr


def test_paths_from_stdin_with_one_model_load():
    paths = "\n".join(str(p) for p in sorted(DIGITS.glob("*.png"))[:4]) + "\n"
    result = invoke_cli("classify", "-", "--model", "lenet5_digits", "--format", "jsonl", stdin=paths)
    assert result.returncode == 0, result.stderr
    assert len(jsonl(result.stdout)) == 4
    assert result.stderr.count("lenet5_digits on cpu") == 1


def test_json_and_csv_formats_are_machine_readable():
    as_json = invoke_cli("classify", str(DIGITS / "digit_7.png"), "-m", "lenet5_digits", "-k", "2", "-f", "json")
    doc = json.loads(as_json.stdout)
    assert isinstance(doc, list) and doc[0]["result"]["top_k"][0]["label"] == "7"
    as_csv = invoke_cli("classify", str(DIGITS / "digit_7.png"), "-m", "lenet5_digits", "-k", "2", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["label"] == "7" and rows[0]["error"] == ""
    assert 0 < float(rows[0]["prob"]) <= 1


def test_logs_go_to_stderr_and_stdout_has_only_records():
    result = run_cli("classify", str(DIGITS / "digit_3.png"), "-m", "lenet5_digits", "-f", "jsonl")
    assert "lenet5_digits on cpu" in result.stderr and "1 ok, 0 failed" in result.stderr
    assert all(line.startswith("{") for line in result.stdout.splitlines())
    quiet = run_cli("-q", "classify", str(DIGITS / "digit_3.png"), "-m", "lenet5_digits", "-f", "jsonl")
    assert quiet.stderr == ""


def test_out_dir_gets_one_json_per_image_and_skip_existing_resumes(tmp_path):
    out = tmp_path / "results"
    first = invoke_cli("classify", str(DIGITS / "digit_0.png"), str(DIGITS / "digit_1.png"), "-m", "lenet5_digits",
                    "--out", str(out), "-f", "jsonl")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == [".cvtool-outputs", "digit_0.json", "digit_1.json"]
    saved = json.loads((out / "digit_0.json").read_text())
    assert saved["result"]["top_k"][0]["label"] == "0"
    assert jsonl(first.stdout)[0]["outputs"] == [str(out / "digit_0.json")]

    (out / "digit_1.json").unlink()  # as if the first run was interrupted
    again = invoke_cli("classify", str(DIGITS), "-m", "lenet5_digits", "--out", str(out), "--skip-existing", "-f", "jsonl")
    assert again.returncode == 0
    done = {r["path"] for r in jsonl(again.stdout)}
    assert str(DIGITS / "digit_0.png") not in done and str(DIGITS / "digit_1.png") in done and len(done) == 9
    assert "1 skipped" in again.stderr


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = invoke_cli("classify", str(DIGITS / "digit_0.png"), "-m", "lenet5_digits", "--out", str(target))
    assert result.returncode == 2 and "is not a directory" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet81"], "unknown model 'resnet81'; did you mean resnet18"),
        (["--model", "lenet5"], "lenet5 has no default weights; pass --weights FILE"),
        (["--skip-existing"], "--skip-existing needs --out DIR"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    result = invoke_cli("classify", str(DIGITS / "digit_0.png"), *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("cvtool: ")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_offline_without_cached_weights_fails_at_once_naming_the_file_and_the_fix(tmp_path):
    result = invoke_cli("classify", str(DIGITS / "digit_0.png"), "--model", "resnet18", env={"CVTOOL_OFFLINE": "1"})
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert "resnet18-f37072fd.pth" in line and "hub/checkpoints" in line and "--weights FILE" in line


def test_plain_state_dict_needs_model_and_then_runs(lenet_state_dict_file):
    without = invoke_cli("classify", str(DIGITS / "digit_0.png"), "--weights", str(lenet_state_dict_file))
    assert without.returncode == 2 and "add --model NAME" in without.stderr
    with_model = invoke_cli("classify", str(DIGITS / "digit_0.png"), "--weights", str(lenet_state_dict_file),
                         "--model", "lenet5", "-f", "jsonl", "-k", "10")
    assert with_model.returncode == 0, with_model.stderr
    labels = [e["label"] for e in jsonl(with_model.stdout)[0]["result"]["top_k"]]
    assert sorted(labels) == [f"class_{i}" for i in range(10)]


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    import functools

    import torch

    evil = tmp_path / "evil.pt"  # unpickling a partial would call print: weights_only loading must refuse it
    torch.save({"state_dict": {}, "payload": functools.partial(print, "code ran on load")}, evil)
    result = invoke_cli("classify", str(DIGITS / "digit_0.png"), "--weights", str(evil), "--model", "lenet5")
    assert result.returncode == 2
    assert "refused" in result.stderr and "Traceback" not in result.stderr


def test_inputs_are_never_overwritten_even_when_out_is_the_input_folder(tmp_path):
    source = tmp_path / "digit.json"  # an odd input name whose output name would collide with it
    source.write_bytes((DIGITS / "digit_4.png").read_bytes())
    before = source.read_bytes()
    result = invoke_cli("classify", str(source), "-m", "lenet5_digits", "--out", str(tmp_path), "-f", "jsonl")
    assert result.returncode == 1 and "would overwrite the input" in result.stderr
    assert source.read_bytes() == before


def test_a_closed_pipe_stops_quietly_like_a_shell_tool(tmp_path):
    import subprocess
    import sys

    pipeline = (f"{sys.executable} -m cvtool classify {DIGITS} -m lenet5_digits -f jsonl -b 1 2>err.txt | head -n 1;"
                " echo ${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    stderr = (tmp_path / "err.txt").read_text()
    first, status = result.stdout.splitlines()[0], result.stdout.splitlines()[-1]
    assert first.startswith('{"path"') and status in ("0", "141")  # 0 if it finished before head closed the pipe
    assert "Traceback" not in stderr and "internal error" not in stderr
