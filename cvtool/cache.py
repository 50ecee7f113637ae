"""cvtool's own cache folder: converted face models, ONNX exports, gallery descriptors.

Downloaded weights go to torch.hub's folder instead (see cvtool/models/weights.py), shared with torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$CVTOOL_CACHE, else $XDG_CACHE_HOME/cvtool, else ~/.cache/cvtool."""
    explicit = os.environ.get("CVTOOL_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cvtool"
