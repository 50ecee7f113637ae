"""Self-describing cvtool checkpoints, and loading any user weights file without running its code.

A weights file from the internet is a pickle, and unpickling can run arbitrary code, so every file is
read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers. cvtool's
own checkpoints hold nothing else, so they load that way too.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvtool.errors import WeightsError
from cvtool.io.atomic import atomic_open
from cvtool.cache import file_sha256

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = "cvtool-checkpoint"
FORMAT_VERSION = 1
# Where other tools put the state_dict: torchvision references and Lightning ("model", "state_dict"), tutorials.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PLAIN_TYPES = (str, int, float, bool, complex, bytes, type(None))
_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple, set)
_REFUSED = (
    "refused: the file carries pickled Python code{names}, which torch.load(weights_only=True) will not run; "
    "save a plain state_dict (torch.save(model.state_dict(), ...)) or a cvtool checkpoint"
)
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol <3 names, as pickle maps them
_MAX_PICKLES = 5  # a legacy torch.save file is a few pickles in a row (magic, version, info, object, keys)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


# A checkpoint's list of COCO category ids, one per class (`train detect` on COCO JSON stores its file's ids).
COCO_IDS_FIELD = "coco_category_ids"
# A two-class segmenter's threshold on class 1's probability, chosen on validation by `train segment`.
DECISION_THRESHOLD_FIELD = "decision_threshold"


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

    from cvtool.version import __version__

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
        sha256=file_sha256(path),  # remembered per file version: a cached download is not read twice
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
        with warnings.catch_warnings():  # a plain pickle's protocol warns (many lines) before our one-line refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"cannot read ({exc.strerror or exc})", path) from None
    except pickle.UnpicklingError:
        # torch's weights-only unpickler raises this type both for code it will not run and for junk, and
        # its wording changes between releases; the file itself says which: a well-formed pickle naming
        # globals outside torch's allow-list is code.
        names = _refused_globals(path)
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise WeightsError(_REFUSED.format(names=f" ({shown})"), path) from None
        raise WeightsError("not a PyTorch weights file (unrecognised content)", path) from None
    except RuntimeError as exc:  # the zip reader: truncated or damaged archive
        raise WeightsError(f"not a PyTorch weights file ({_first_sentence(exc)})", path) from None
    except Exception:  # the legacy reader fails on junk with KeyError, EOFError, ValueError...
        raise WeightsError("not a PyTorch weights file (unrecognised content)", path) from None


def _refused_globals(path: Path) -> list[str]:
    """The Python objects the file's pickle(s) would import that torch's weights-only loader does not
    allow; [] when the content is not a well-formed pickle. Read with pickletools: nothing is run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                streams = [io.BytesIO(archive.read(member))] if member else []
                names = [name for stream in streams for name in _pickle_globals(stream)]
        else:
            names = []
            with open(path, "rb") as stream:
                for _ in range(_MAX_PICKLES):
                    found = _pickle_globals(stream)
                    if found is None:
                        break
                    names += found
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    allowed = _allowed_globals()
    names = [_PY2_MODULES.get(n.split(".", 1)[0], n.split(".", 1)[0]) + n[n.find("."):] if "." in n else n
             for n in names]
    return [name for name in dict.fromkeys(names) if name not in allowed]


def _pickle_globals(stream) -> list[str] | None:
    """`module.name` of every global one pickle references; None when the stream is not a whole pickle."""
    names: list[str] = []
    pushed: list = []  # recent string operands (None for other pushes): STACK_GLOBAL takes the last two
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                module, name = (pushed[-2:] if len(pushed) >= 2 else (None, None))
                names.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
            elif op.name in _STRING_OPS:
                pushed.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            else:
                pushed.append(None)
    except (ValueError, EOFError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
        return None  # not a pickle (or cut short)
    return names


def _allowed_globals() -> set[str]:
    """What torch.load(weights_only=True) accepts by default or by the user's add_safe_globals."""
    import torch

    allowed: set[str] = set()
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: without it every global is listed, still refused
        pass
    for item in torch.serialization.get_safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
    return allowed


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
