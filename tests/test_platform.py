"""The small things users notice: shell completion works (and stays fast: no torch), and the cache folder
is where each OS expects it (platformdirs), still overridden by $CVTOOL_CACHE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import platformdirs
from conftest import ROOT, run_cli

from cvtool.cache import cache_root


def test_help_offers_completion_install():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_completion_answers_command_and_option_names_without_importing_torch():
    """What the shell runs on <TAB>: bash's protocol, through the real entry point, with torch refused."""
    script = ("import sys\n"
              "class NoTorch:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] in ('torch', 'torchvision', 'cv2'):\n"
              "            raise ImportError('completion must not import ' + name)\n"
              "sys.meta_path.insert(0, NoTorch())\n"
              "from cvtool.cli import main\nsys.argv = ['cvtool']\nmain()\n")

    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "_CVTOOL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("cvtool cla", 1) == ["classify"]
    assert "--format" in complete("cvtool detect --fo", 2)
    assert complete("cvtool detect --format c", 3) == ["csv", "coco"]


def test_cache_root_is_the_platforms_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CVTOOL_CACHE", raising=False)
    assert cache_root() == Path(platformdirs.user_cache_dir("cvtool", appauthor=False))
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_root() == tmp_path / "xdg" / "cvtool"
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
