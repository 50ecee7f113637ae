"""The `cvtool` command as users and shell scripts meet it: help, version, exit codes, streams."""

import subprocess
import sys

from conftest import invoke_cli, run_cli

from cvtool import __version__


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cvtool {__version__}"


def test_help_lists_only_working_commands_and_does_not_import_torch():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "classify" in result.stdout and "models" in result.stdout
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
