"""Self-describing cvtool checkpoints, and loading any user weights file without running its code.

A weights file from the internet is a pickle, and unpickling can run arbitrary code, so every file is
read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers. cvtool's
own checkpoints hold nothing else, so they load that way too.
"""

from __future__ import annotations

import collections
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvtool.errors import WeightsError
from cvtool.io.atomic import atomic_open
from cvtool.models.weights import sha256_file

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = "cvtool-checkpoint"
FORMAT_VERSION = 1
# Where other tools put the state_dict: torchvision references and Lightning ("model", "state_dict"), tutorials.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PLAIN_TYPES = (str, int, float, bool, complex, bytes, type(None))
_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple, set)
_REFUSED = (
    "refused: the file contains pickled Python objects{names}, which could run code; save a plain state_dict "
    "(torch.save(model.state_dict(), ...)) or a cvtool checkpoint"
)


def save_checkpoint(
    path: str | Path,
    *,
    arch: str,
    task: str,
    state_dict: dict,
    classes: list[str] | None = None,
    preprocess: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Everything `--weights FILE` needs to rebuild and label the model, in types weights_only loading accepts."""
    import torch

    from cvtool import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cvtool_version": __version__,
        "arch": arch,
        "task": task,
        "classes": list(classes) if classes is not None else None,
        "preprocess": preprocess,
        "state_dict": state_dict,
    }
    clash = sorted(set(extra or {}) & set(payload))
    if clash:
        raise ValueError(f"extra checkpoint fields {clash} would overwrite the standard ones")
    payload.update(extra or {})
    _check_loadable(payload, "checkpoint")
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def _check_loadable(value, where: str) -> None:
    """Fail when saving, not months later when resuming, on anything weights_only=True would refuse."""
    import torch

    if isinstance(value, (torch.Tensor, torch.Size, torch.dtype, torch.device)) or type(value) in _PLAIN_TYPES:
        return
    if type(value) not in _CONTAINER_TYPES:  # exact types: subclasses (numpy floats, enums) are refused too
        kind = type(value).__qualname__
        raise TypeError(f"{where} is a {kind}, which weights_only loading refuses; store plain types")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        _check_loadable(key, f"{where} key")
        _check_loadable(item, f"{where}[{key!r}]")


@dataclass
class LoadedWeights:
    """A weights file's tensors, and what a cvtool checkpoint says about them (None for other files)."""

    state_dict: dict[str, Tensor]
    arch: str | None
    task: str | None
    classes: list[str] | None
    preprocess: dict | None
    meta: dict  # everything in the file except the state_dict
    sha256: str
    path: str


def load_weights_file(path: str | Path) -> LoadedWeights:
    """A cvtool checkpoint, a plain state_dict, or a {"state_dict"|"model": ...} wrapper, read with weights_only."""
    path = Path(path)
    _check_file(path)
    state_dict, meta = _unwrap(_torch_load(path), path)
    is_cvtool = meta.get("format") == FORMAT  # only our own format's metadata has a known meaning
    return LoadedWeights(
        state_dict=_strip_data_parallel(state_dict),
        arch=meta.get("arch") if is_cvtool else None,
        task=meta.get("task") if is_cvtool else None,
        classes=list(meta["classes"]) if is_cvtool and meta.get("classes") else None,
        preprocess=meta.get("preprocess") if is_cvtool else None,
        meta=meta,
        sha256=sha256_file(path),
        path=str(path),
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightsError("no such file", path)
    if path.is_dir():
        raise WeightsError("is a directory, not a weights file", path)
    if path.stat().st_size == 0:
        raise WeightsError("empty file (0 bytes)", path)


def _torch_load(path: Path):
    """torch.load with weights_only=True, its many failure types turned into one line each."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"cannot read ({exc.strerror or exc})", path) from None
    except pickle.UnpicklingError as exc:
        names = re.findall(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if names:
            raise WeightsError(_REFUSED.format(names=f" ({', '.join(dict.fromkeys(names))})"), path) from None
        raise WeightsError("not a PyTorch weights file (unrecognised content)", path) from None
    except RuntimeError as exc:  # the zip reader: truncated or damaged archive
        raise WeightsError(f"not a PyTorch weights file ({_first_sentence(exc)})", path) from None
    except Exception:  # the legacy reader fails on junk with KeyError, EOFError, ValueError...
        raise WeightsError("not a PyTorch weights file (unrecognised content)", path) from None


def _first_sentence(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:120] if text else type(exc).__name__


def _is_tensor_dict(value) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(content, path: Path) -> tuple[dict, dict]:
    """(state_dict, meta) from a cvtool checkpoint, a plain state_dict, or a wrapper dict."""
    if not isinstance(content, dict):
        raise WeightsError(f"not a state_dict or a cvtool checkpoint: the file holds a {type(content).__name__}", path)
    if _is_tensor_dict(content):
        return content, {}
    if content.get("format") == FORMAT:
        _check_version(content.get("format_version"), path)
        key = "state_dict"
    else:
        key = next((k for k in _WRAPPER_KEYS if _is_tensor_dict(content.get(k))), None)
    if key is None or not _is_tensor_dict(content.get(key)):
        raise WeightsError("no tensors found (expected a state_dict or a cvtool checkpoint)", path)
    return content[key], {k: v for k, v in content.items() if k != key}


def _check_version(version, path: Path) -> None:
    if not isinstance(version, int):
        raise WeightsError("cvtool checkpoint without a valid format_version", path)
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"checkpoint format {version} is newer than this cvtool understands ({FORMAT_VERSION}); upgrade cvtool",
            path,
        )


def _strip_data_parallel(state_dict: dict) -> dict:
    """nn.DataParallel saves every key as `module.<name>`; the bare model expects `<name>`."""
    if all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def apply_state_dict(
    model, state_dict: dict, *, source: str, model_name: str | None = None, assign: bool = False
) -> None:
    """Strict load, with one readable line on what does not fit instead of torch's multi-line dump.

    torch's own strict load decides (its per-module hooks accept some older layouts); the diagnosis
    is only built when it fails.
    """
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:
        why = _misfit(model.state_dict(), state_dict) or _torch_detail(exc)
        raise WeightsError(f"weights do not fit {model_name or type(model).__name__}: {why}", source) from None


def _misfit(own: dict, given: dict) -> str:
    """`2 missing keys (a, b), 1 unexpected (c); shape of d is [..] in the file but [..] in the model`."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    keys = []
    if missing:
        keys.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({_listed(missing)})")
    if unexpected:
        keys.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
    parts = [", ".join(keys)] if keys else []
    reshaped = [k for k in own if k in given and tuple(own[k].shape) != tuple(given[k].shape)]
    if reshaped:
        key = reshaped[0]
        more = f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
        parts.append(
            f"shape of {key} is {list(given[key].shape)} in the file but {list(own[key].shape)} in the model{more}"
        )
    return "; ".join(parts)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _torch_detail(exc: RuntimeError) -> str:
    """The first specific line of torch's error, for failures that are not about keys or shapes."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else "load_state_dict failed")[:200]
