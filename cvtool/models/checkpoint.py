"""Self-describing cvtool checkpoints, and loading any user weights file without running its code."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from cvtool.errors import WeightsError
from cvtool.io.atomic import atomic_open

FORMAT = "cvtool-checkpoint"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


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
    """Everything `--weights FILE` needs, in plain types only, so it loads with weights_only=True."""
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
        **(extra or {}),
    }
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


@dataclass
class LoadedWeights:
    state_dict: dict
    arch: str | None
    task: str | None
    classes: list[str] | None
    preprocess: dict | None
    meta: dict = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise WeightsError(
                "refused: the file contains pickled Python objects, which could run code; save a plain "
                "state_dict (torch.save(model.state_dict(), ...)) or a cvtool checkpoint",
                path,
            ) from None
        raise WeightsError(f"not a PyTorch weights file ({_short(exc)})", path) from None
    except Exception as exc:  # torch's unpickler raises many types (KeyError, EOFError, RuntimeError...) on junk
        raise WeightsError(f"not a PyTorch weights file ({_short(exc)})", path) from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


def _is_tensor_dict(value) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _strip_data_parallel(state_dict: dict) -> dict:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_weights_file(path: str | Path) -> LoadedWeights:
    """A cvtool checkpoint, a plain state_dict, or a {"state_dict"|"model": ...} wrapper — always weights_only."""
    path = Path(path)
    if not path.exists():
        raise WeightsError("no such file", path)
    if path.is_dir():
        raise WeightsError("is a directory, not a weights file", path)
    if path.stat().st_size == 0:
        raise WeightsError("empty file (0 bytes)", path)
    content = _torch_load(path)
    if not isinstance(content, dict):
        raise WeightsError(f"not a weights file: holds a {type(content).__name__}, not a dict of tensors", path)

    meta: dict = {}
    if content.get("format") == FORMAT:
        version = int(content.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise WeightsError(
                f"checkpoint format {version} is newer than this cvtool understands ({FORMAT_VERSION}); upgrade cvtool",
                path,
            )
        meta = {k: v for k, v in content.items() if k != "state_dict"}
        state_dict = content.get("state_dict")
    elif _is_tensor_dict(content):
        state_dict = content
    else:
        wrapped = next((content[k] for k in _WRAPPER_KEYS if _is_tensor_dict(content.get(k))), None)
        state_dict = wrapped
        meta = {k: v for k, v in content.items() if k not in _WRAPPER_KEYS}
    if not _is_tensor_dict(state_dict):
        raise WeightsError("no tensors found (expected a state_dict or a cvtool checkpoint)", path)
    return LoadedWeights(
        state_dict=_strip_data_parallel(state_dict),
        arch=meta.get("arch"),
        task=meta.get("task"),
        classes=list(meta["classes"]) if meta.get("classes") else None,
        preprocess=meta.get("preprocess"),
        meta=meta,
        sha256=_sha256(path),
        path=str(path),
    )


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def apply_state_dict(
    model, state_dict: dict, *, source: str, model_name: str | None = None, assign: bool = False
) -> None:
    """Strict load with one readable line about what does not fit, instead of torch's multi-line dump."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
        if wrong_shape:
            key = wrong_shape[0]
            problems.append(
                f"shape of {key} is {list(state_dict[key].shape)} in the file but {list(own[key].shape)} in the model"
                + (f" ({len(wrong_shape) - 1} more mismatches)" if len(wrong_shape) > 1 else "")
            )
        name = model_name or type(model).__name__
        raise WeightsError(f"weights do not fit {name}: " + "; ".join(problems), source)
    model.load_state_dict(state_dict, strict=True, assign=assign)
