"""The `cvtool` command as users and shell scripts meet it: help, version, exit codes, streams."""

import subprocess
import sys
from pathlib import Path

from conftest import invoke_cli, run_cli

from cvtool import __version__


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cvtool {__version__}"


def test_help_lists_only_working_commands_and_does_not_import_torch():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "classify" in result.stdout and "models" in result.stdout
    import importlib.util

    words = " ".join(result.stdout.split())  # the list wraps at 80 columns
    # a command whose optional extra is missing says so in the list (it listed `ray` as if it worked)
    marked = "ray Run a task over many inputs on Ray Data, in input order. [not installed: pip install 'cvtool[ray]']"
    assert (marked in words) == (importlib.util.find_spec("ray") is None)
    assert ("serve Serve the models over HTTP, kept loaded between requests. [not installed"
            in words) == (importlib.util.find_spec("fastapi") is None)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, cvtool.cli; print(sorted({'torch', 'torchvision', 'cv2'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_every_subcommand_help_has_an_example():
    for args in (["classify"], ["detect"], ["segment"], ["stylize"], ["models"], ["models", "pull"], ["models", "verify"], ["train"],
                 ["train", "classify"], ["train", "segment"], ["train", "style"]):
        result = invoke_cli(*args, "--help")  # in-process: the help text is the same
        assert result.returncode == 0, result.stderr
        assert "Example: cvtool" in result.stdout, args


def test_python_dash_m_entry_point_matches_the_script():
    from pathlib import Path

    script = Path(sys.executable).parent / "cvtool"  # installed beside the interpreter by pip
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == run_cli("--version").stdout


def test_unknown_option_is_a_usage_error_exit_2():
    result = run_cli("classify", "x.jpg", "--top-k", "zero")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_models_lists_every_model_with_source_licence_and_cache_state():
    import json

    result = invoke_cli("models", "-f", "json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["lenet5_digits"]["on_disk"] is True and rows["lenet5_digits"]["source"] == "packaged"
    assert rows["resnet18"]["on_disk"] is False and rows["resnet18"]["source"] == "download"
    assert rows["resnet18"]["weights"] == "resnet18-f37072fd.pth" and rows["resnet18"]["size_mb"] > 40
    assert rows["unet"]["task"] == "segment" and rows["unet"]["weights"] is None
    assert {"deeplabv3_resnet50", "lraspp_mobilenet_v3_large", "fcn_resnet50"} <= set(rows)
    assert all(row["licence"] for row in rows.values())
    only = json.loads(invoke_cli("models", "--task", "segment", "-f", "json").stdout)
    assert {row["task"] for row in only} == {"segment"}


def test_models_piped_is_json_and_lists_from_a_hash_checked_snapshot_without_torch(tmp_path):
    """`cvtool models | ...` printed an 80-column table that wrapped into slivers, and took seconds importing
    torch and torchvision to build the registry; piped it is JSON, and after the first listing the rows come
    from a hash-checked snapshot in the cache (on_disk looked up afresh), in a process that imports no torch."""
    import json
    import os

    env = {**os.environ, "CVTOOL_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")}
    first = run_cli("models", env=env)
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert rows == json.loads(invoke_cli("models", "-f", "json").stdout)  # the registry's own rows
    code = ("import sys, runpy; sys.argv = ['cvtool', 'models']; import cvtool.cli\n"
            "try:\n    cvtool.cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, 'torchvision' in sys.modules, file=sys.stderr)")
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert json.loads(again.stdout) == rows and "TORCH False False" in again.stderr
    snapshot, = (p for p in (tmp_path / "cache").glob("models-catalogue-*.json") if ".sha256" not in p.name)
    snapshot.write_text(snapshot.read_text().replace('"classify"', '"segment"', 1))  # altered: not trusted
    rebuilt = run_cli("models", env=env)
    assert json.loads(rebuilt.stdout) == rows
    assert next(r for r in rows if r["name"] == "resnet18")["on_disk"] is False
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"  # on_disk is looked up at each listing
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"weights")
    later = json.loads(run_cli("models", "--task", "classify", env=env).stdout)
    assert {row["name"] for row in later} == {row["name"] for row in rows if row["task"] == "classify"}
    assert next(r for r in later if r["name"] == "resnet18")["on_disk"] is True


def test_weights_cache_dir_is_torch_hubs_without_importing_torch(monkeypatch, tmp_path):
    import torch.hub

    import cvtool.models.weights as weights

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with monkeypatch.context() as patched:
            patched.delitem(sys.modules, "torch.hub")
            without_torch = weights.cache_dir()
        assert without_torch == weights.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_serve_option_defaults_are_the_servers_settings():
    """One source of truth: `cvtool serve`'s defaults are cvtool.serve.settings.Settings' (importable without the
    serve extra), sizes written as --max-bytes takes them."""
    import typer.main

    from cvtool.cli import app
    from cvtool.serve.security import parse_size
    from cvtool.serve.settings import Settings, size_text

    defaults = {p.name: p.default for p in typer.main.get_command(app).commands["serve"].params}
    settings = Settings()
    assert (defaults["host"], defaults["port"], defaults["max_batch"], defaults["batch_wait_ms"],
            defaults["max_batch_pixels"]) == (settings.host, settings.port, settings.max_batch, settings.batch_wait_ms,
                                              settings.max_batch_pixels)
    assert (parse_size(defaults["max_bytes"]), parse_size(defaults["memory_budget"])) == (settings.max_bytes,
                                                                                          settings.memory_budget)
    assert [size_text(n) for n in (50 * 1024**2, 4 * 1024**3, 3 * 1024, 1000)] == ["50MB", "4GB", "3KB", "1000"]


def test_a_file_named_like_an_option_gets_a_hint_with_the_usage_error(tmp_path):
    (tmp_path / "-leading.png").write_bytes(b"not read")
    result = run_cli("classify", "-leading.png", "--model", "lenet5_digits", cwd=tmp_path)
    assert result.returncode == 2 and "No such option: -l" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cvtool: -leading.png is a file whose name starts with '-': give it as ./-leading.png (or after --)")
    missing = run_cli("classify", "-x.png", cwd=tmp_path)  # no such file: typer's error alone
    assert missing.returncode == 2 and "starts with '-'" not in missing.stderr


def test_a_process_own_models_are_listed_there_and_never_written_into_the_shared_snapshot(tmp_path, monkeypatch):
    import json

    from cvtool.models.catalogue import describe_all
    from cvtool.models.lenet import LENET_PREPROCESS, LeNet5
    from cvtool.models.registry import ModelEntry, register, unregister

    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))
    register(ModelEntry(name="test_own_lenet", task="classify", family="lenet", builder=LeNet5,
                        preprocess=lambda: LENET_PREPROCESS, classes=lambda: ["a", "b"], build_kwargs={"num_classes": 2}))
    try:
        assert "test_own_lenet" in {row["name"] for row in describe_all()}
    finally:
        unregister("test_own_lenet")
    listed = run_cli("models", env={"CVTOOL_CACHE": str(tmp_path / "cache")})
    assert listed.returncode == 0, listed.stderr
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert "lenet5_digits" in names and "test_own_lenet" not in names
