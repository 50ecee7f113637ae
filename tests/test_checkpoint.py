"""Loading user weight files: cvtool checkpoints, plain state_dicts, wrappers, and refusals."""

import collections
import re

import pytest
import torch

from cvtool.errors import WeightsError
from cvtool.models.checkpoint import FORMAT, apply_state_dict, load_weights_file, save_checkpoint


def _linear_state():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).state_dict()


class Payload(collections.OrderedDict):
    """A pickled class: loading it would import and run code from this module."""


def test_checkpoint_round_trip(tmp_path):
    state = _linear_state()
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, arch="lenet5", task="classify", state_dict=state, classes=["a", "b"],
                    preprocess={"crop_size": 32}, extra={"epoch": 3})
    loaded = load_weights_file(path)
    assert (loaded.arch, loaded.task, loaded.classes, loaded.preprocess) == ("lenet5", "classify", ["a", "b"], {"crop_size": 32})
    assert loaded.meta["epoch"] == 3 and loaded.meta["format"] == FORMAT
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    assert len(loaded.sha256) == 64 and loaded.path == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 1}, lambda s: {"model": s},
                                  lambda s: {f"module.{k}": v for k, v in s.items()}])
def test_plain_and_wrapped_state_dicts(tmp_path, wrap):
    state = _linear_state()
    torch.save(wrap(state), tmp_path / "w.pt")
    loaded = load_weights_file(tmp_path / "w.pt")
    assert sorted(loaded.state_dict) == ["bias", "weight"] and loaded.arch is None and loaded.classes is None


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file (0 bytes)"),
        (b"just some text\n", "not a PyTorch weights file"),
    ],
)
def test_files_that_are_not_weights(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=re.escape(message)) as info:
        load_weights_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(Payload(weight=torch.zeros(1)), path)
    with pytest.raises(WeightsError, match="refused: the file contains pickled Python objects"):
        load_weights_file(path)


def test_missing_no_tensors_and_newer_format(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_weights_file(tmp_path / "nope.pt")
    torch.save({"epoch": 1, "name": "x"}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="no tensors found"):
        load_weights_file(tmp_path / "meta.pt")
    torch.save({"format": FORMAT, "format_version": 99, "state_dict": _linear_state()}, tmp_path / "new.pt")
    with pytest.raises(WeightsError, match="newer than this cvtool understands"):
        load_weights_file(tmp_path / "new.pt")


def test_apply_state_dict_says_what_does_not_fit_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 4))
    state = {"0.weight": torch.zeros(2, 5), "0.bias": torch.zeros(2), "extra.weight": torch.zeros(1)}
    with pytest.raises(WeightsError) as info:
        apply_state_dict(model, state, source="w.pt", model_name="tiny")
    message = str(info.value)
    assert message.startswith("w.pt: weights do not fit tiny: 2 missing keys (1.weight, 1.bias)")
    assert "1 unexpected (extra.weight)" in message
    assert "shape of 0.weight is [2, 5] in the file but [2, 3] in the model" in message and "\n" not in message
