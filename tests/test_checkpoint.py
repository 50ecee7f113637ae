"""Loading user weight files: cvtool checkpoints, plain state_dicts, wrappers, and refusals."""

import collections
import hashlib
import os
import pathlib
import pickle

import pytest
import torch

import cvtool
from cvtool.errors import WeightsError
from cvtool.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    apply_state_dict,
    load_weights_file,
    save_checkpoint,
)

CODE_RAN = []


def _record_that_code_ran():
    CODE_RAN.append(True)


class RunsCodeOnLoad:
    """Unpickling this calls a function: what a malicious weights file would do."""

    def __reduce__(self):
        return (_record_that_code_ran, ())


class Payload(collections.OrderedDict):
    """An OrderedDict subclass: unpickling it imports this module's class."""


def _linear_state():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).state_dict()


def _one_line_error(path) -> str:
    with pytest.raises(WeightsError) as info:
        load_weights_file(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_checkpoint_round_trip(tmp_path):
    state = _linear_state()
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, arch="lenet5", task="classify", state_dict=state, classes=["a", "b"],
                    preprocess={"crop_size": 32, "mean": [0.5]}, extra={"epoch": 3, "best": (0.9, -0.1)})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # written atomically: no temp file left
    raw = torch.load(path, weights_only=True)  # the contract: plain types only
    assert (raw["format"], raw["format_version"], raw["cvtool_version"]) == (FORMAT, FORMAT_VERSION, cvtool.__version__)

    loaded = load_weights_file(path)
    assert (loaded.arch, loaded.task, loaded.classes) == ("lenet5", "classify", ["a", "b"])
    assert loaded.preprocess == {"crop_size": 32, "mean": [0.5]}
    assert loaded.meta["epoch"] == 3 and loaded.meta["best"] == (0.9, -0.1) and "state_dict" not in loaded.meta
    assert loaded.state_dict.keys() == state.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and loaded.path == str(path)


def test_save_refuses_what_weights_only_loading_would_refuse(tmp_path):
    path = tmp_path / "best.pt"
    with pytest.raises(TypeError, match=r"checkpoint\['args'\]\['data'\] is a PosixPath"):
        save_checkpoint(path, arch="lenet5", task="classify", state_dict=_linear_state(),
                        extra={"args": {"data": pathlib.Path("/data")}})
    with pytest.raises(ValueError, match="would overwrite"):
        save_checkpoint(path, arch="lenet5", task="classify", state_dict=_linear_state(), extra={"arch": "x"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 1},  # Lightning-style
        lambda s: {"model": s, "epoch": 1},  # torchvision references
        lambda s: {f"module.{k}": v for k, v in s.items()},  # nn.DataParallel
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 1},
    ],
    ids=["plain", "state_dict", "model", "module-prefix", "wrapped-module-prefix"],
)
def test_plain_and_wrapped_state_dicts(tmp_path, wrap):
    state = _linear_state()
    torch.save(wrap(state), tmp_path / "w.pt")
    loaded = load_weights_file(tmp_path / "w.pt")
    assert sorted(loaded.state_dict) == ["bias", "weight"]
    assert torch.equal(loaded.state_dict["weight"], state["weight"])
    assert (loaded.arch, loaded.task, loaded.classes, loaded.preprocess) == (None, None, None, None)
    assert "state_dict" not in loaded.meta and "model" not in loaded.meta


def test_wrapper_keeps_its_other_fields_as_meta(tmp_path):
    torch.save({"state_dict": _linear_state(), "epoch": 7, "arch": "resnet18"}, tmp_path / "w.pt")
    loaded = load_weights_file(tmp_path / "w.pt")
    assert loaded.meta == {"epoch": 7, "arch": "resnet18"}
    assert loaded.arch is None  # only a cvtool checkpoint's fields have a known meaning


class CallsOsSystem:
    """What a real attack looks like: unpickling runs a shell command (never reached: refused first)."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


_OS_SYSTEM = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)


def _save_legacy(payload, path):
    torch.save(payload, path, _use_new_zipfile_serialization=False)


def _save_raw_pickle(payload, path):
    path.write_bytes(pickle.dumps(payload))


@pytest.mark.parametrize(
    "payload, culprit, save",
    [
        ({"weight": torch.zeros(1), "hook": RunsCodeOnLoad()}, f"{__name__}._record_that_code_ran", torch.save),
        (Payload(weight=torch.zeros(1)), f"{__name__}.Payload", torch.save),
        ({"weight": torch.zeros(1), "hook": CallsOsSystem()}, _OS_SYSTEM, torch.save),
        ({"hook": CallsOsSystem()}, _OS_SYSTEM, _save_legacy),
        ({"hook": CallsOsSystem()}, _OS_SYSTEM, _save_raw_pickle),
        (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear", torch.save),  # a whole module, not a state_dict
    ],
    ids=["reduce-calls-a-function", "ordereddict-subclass", "os-system", "os-system-legacy-format",
         "os-system-plain-pickle", "whole-module"],
)
def test_pickled_code_is_refused_without_running_it(tmp_path, payload, culprit, save):
    path = tmp_path / "evil.pt"
    save(payload, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch itself refuses it, so cvtool's refusal rests on that
    assert _one_line_error(path) == (
        f"{path}: refused: the file carries pickled Python code ({culprit}), which torch.load(weights_only=True) "
        "will not run; save a plain state_dict (torch.save(model.state_dict(), ...)) or a cvtool checkpoint"
    )
    assert CODE_RAN == []


@pytest.mark.parametrize(
    "content",
    [b"just some text\n", b'{"weight": [1, 2, 3]}', b"\x89PNG\r\n\x1a\n" + bytes(64)],
    ids=["text", "json", "png"],
)
def test_files_that_are_not_weights(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert "not a PyTorch weights file (" in _one_line_error(path)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + bytes(64), bytes(100), b"{" * 50],
                         ids=["png", "zeros", "braces"])
def test_junk_that_torch_rejects_as_a_pickle_is_not_called_code(tmp_path, content):
    """torch raises the same UnpicklingError for these as for pickled code; only the content tells them apart."""
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert _one_line_error(path) == f"{path}: not a PyTorch weights file (unrecognised content)"


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(_linear_state(), path)
    path.write_bytes(path.read_bytes()[:200])
    assert "not a PyTorch weights file (" in _one_line_error(path)


def test_missing_empty_and_directory(tmp_path):
    assert _one_line_error(tmp_path / "nope.pt").endswith(": no such file")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert _one_line_error(tmp_path / "empty.pt").endswith(": empty file (0 bytes)")
    assert "is a directory" in _one_line_error(tmp_path)


def test_no_tensors(tmp_path):
    torch.save({"epoch": 1, "name": "x"}, tmp_path / "meta.pt")
    assert "no tensors found" in _one_line_error(tmp_path / "meta.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert "not a state_dict or a cvtool checkpoint: the file holds a list" in _one_line_error(tmp_path / "list.pt")


def test_newer_or_missing_format_version(tmp_path):
    newer = FORMAT_VERSION + 1
    torch.save({"format": FORMAT, "format_version": newer, "state_dict": _linear_state()}, tmp_path / "new.pt")
    assert _one_line_error(tmp_path / "new.pt").endswith(
        f"checkpoint format {newer} is newer than this cvtool understands ({FORMAT_VERSION}); upgrade cvtool"
    )
    torch.save({"format": FORMAT, "state_dict": _linear_state()}, tmp_path / "bare.pt")
    assert "without a valid format_version" in _one_line_error(tmp_path / "bare.pt")


def test_apply_state_dict_loads_a_fitting_file():
    model = torch.nn.Linear(3, 2)
    apply_state_dict(model, _linear_state(), source="w.pt")
    assert torch.equal(model.weight, _linear_state()["weight"])


def test_apply_state_dict_says_what_does_not_fit_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 4))
    state = {"0.weight": torch.zeros(2, 5), "0.bias": torch.zeros(2), "extra.weight": torch.zeros(1)}
    with pytest.raises(WeightsError) as info:
        apply_state_dict(model, state, source="w.pt", model_name="tiny")
    assert str(info.value) == (
        "w.pt: weights do not fit tiny: 2 missing keys (1.weight, 1.bias), 1 unexpected (extra.weight); "
        "shape of 0.weight is [2, 5] in the file but [2, 3] in the model"
    )


def test_apply_state_dict_shortens_long_key_lists():
    model = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(3)))
    with pytest.raises(WeightsError) as info:
        apply_state_dict(model, {"0.weight": torch.zeros(2, 2)}, source="w.pt")
    message = str(info.value)
    assert message == "w.pt: weights do not fit Sequential: 5 missing keys (0.bias, 1.weight, 1.bias and 2 more)"
