"""dlib's DNN container (`net_type` serialised with `serialize(net, out)`), read into plain records.

The format is not self-describing: tag/skip wrappers and the wiring between them are stored nowhere,
and a tag wrapper starts with the same bytes as an old `add_layer`. So the parser is driven by the
architecture the caller knows (a token list, outermost layer first) and proves the match three ways:
the version stack equals the one those tokens imply, every layer record carries an expected id
string, and every byte of the file is consumed. Training state (stale-gradient flags, cached outputs,
gradient tensors) is read and dropped. Layout: ../shared/specs/dlib-model-formats.md sections 2-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.models.dlib.serialize import DlibReader

# Architecture tokens and the record ids each accepts. "tag" and "skip" wrappers carry no record.
_RECORD_IDS = {
    "con": ("con_4", "con_5", "con_6"),
    "fc": ("fc_2", "fc_3"),
    "relu": ("relu_", "relu_2"),
    "affine": ("affine_", "affine_2", "bn_con2", "bn_fc2"),  # dlib turns a bn record in an affine slot into an affine
    "bn": ("bn_con2", "bn_fc2"),
    "max_pool": ("max_pool_2",),
    "avg_pool": ("avg_pool_2",),
    "add_prev": ("add_prev_",),
}
_WRAPPERS = ("tag", "skip")


@dataclass
class LayerRecord:
    """One layer's inference data; `kind` is the architecture token, `id` the record's own id string."""

    kind: str
    id: str
    params: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.params[key]


@dataclass
class DnnFile:
    path: str
    loss: dict  # {"id": ..., plus margin/dist_thresh or the mmod options}
    input: dict  # {"id": ..., "avg_rgb": (r, g, b), plus nr/nc or pyramid paddings}
    layers: list[LayerRecord]  # innermost (next to the input) first; tag/skip wrappers left out

    def of_kind(self, kind: str) -> list[LayerRecord]:
        return [r for r in self.layers if r.kind == kind]


def version_stack(tokens: list[str]) -> str:
    """The wrapper versions the tokens imply, outer to inner: 1 tag/skip, 2 add_layer, 3 the one over the input."""
    digits = ["1" if t in _WRAPPERS else "2" for t in tokens]
    if digits and digits[-1] == "2":
        digits[-1] = "3"
    return "".join(digits)


def parse_dnn(path: str | Path, tokens: list[str]) -> DnnFile:
    """Parse a dlib DNN file whose layers, outermost first, are `tokens` (the input layer not included)."""
    unknown = [t for t in tokens if t not in _RECORD_IDS and t not in _WRAPPERS]
    if unknown or not tokens or tokens[-1] in _WRAPPERS:
        raise ValueError(f"bad architecture tokens: {unknown or tokens[-1:]}")  # a bug in the caller, not the file
    reader = DlibReader.open(path)
    reader.expect_int(1, "loss layer version")
    loss = _read_loss(reader)
    expected = version_stack(tokens)
    found = []
    for i, want in enumerate(expected):
        version = reader.int()
        found.append(str(version))
        if str(version) != want:
            raise reader.fail(f"layer wrapper {i} has version {version}, expected {want} (the architecture differs)")
    net_input = _read_input(reader)
    layers = []
    for position, token in enumerate(reversed(tokens)):  # records run innermost first
        if token in _WRAPPERS:
            continue
        record = _read_layer(reader, token)
        _skip_training_state(reader, over_input=position == 0)
        layers.append(record)
    reader.expect_end()
    return DnnFile(path=str(path), loss=loss, input=net_input, layers=layers)


def _skip_training_state(reader: DlibReader, *, over_input: bool) -> None:
    for _ in range(3):  # setup called, gradient input stale, output/gradient disabled
        reader.bool()
    reader.tensor()  # x_grad
    reader.tensor()  # cached_output
    reader.tensor()  # params_grad, or grad_final for the layer over the input
    if over_input:
        reader.int()  # _sample_expansion_factor


def _reals(reader: DlibReader, n: int) -> list[float]:
    return [reader.real() for _ in range(n)]


def _read_layer(reader: DlibReader, token: str) -> LayerRecord:
    rid = reader.expect_string(*_RECORD_IDS[token])
    p: dict = {}
    if rid.startswith("con_"):
        p["params"] = reader.tensor()
        for name in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
            p[name] = reader.int()
        p["filters_shape"] = reader.alias_tensor()
        p["biases_shape"] = reader.alias_tensor()
        _reals(reader, 4)  # learning-rate / weight-decay multipliers
        p["use_bias"] = reader.bool() if rid in ("con_5", "con_6") else True
        p["use_relu"] = reader.bool() if rid == "con_6" else False
        _split_conv(reader, p)
    elif rid.startswith("fc_"):
        p["num_outputs"] = reader.int()
        p["num_inputs"] = reader.int()
        p["params"] = reader.tensor()
        p["weights_shape"] = reader.alias_tensor()
        p["biases_shape"] = reader.alias_tensor()
        p["bias_mode"] = reader.int()
        _reals(reader, 4)
        p["use_bias"] = reader.bool() if rid == "fc_3" else True
        _split_fc(reader, p)
    elif rid.startswith("relu"):
        p["disabled"] = reader.bool() if rid == "relu_2" else False
    elif rid.startswith("affine"):
        params = reader.tensor().reshape(-1)
        reader.alias_tensor()  # gamma
        reader.alias_tensor()  # beta
        p["mode"] = reader.int()
        p["disabled"] = reader.bool() if rid == "affine_2" else False
        half = params.size // 2
        if params.size % 2:
            raise reader.fail(f"{rid} holds {params.size} values, not gamma and beta")
        p["gamma"], p["beta"] = params[:half].copy(), params[half:].copy()
    elif rid.startswith("bn_"):
        params = reader.tensor().reshape(-1)
        reader.alias_tensor()
        reader.alias_tensor()
        reader.tensor()  # means of the last training batch
        reader.tensor()  # invstds of the last training batch
        p["running_mean"] = reader.tensor().reshape(-1).copy()
        p["running_var"] = reader.tensor().reshape(-1).copy()
        reader.int()  # num_updates
        reader.int()  # running_stats_window_size
        _reals(reader, 4)
        p["eps"] = reader.real()
        half = params.size // 2
        if params.size % 2 or p["running_mean"].size != half or p["running_var"].size != half:
            raise reader.fail(f"{rid} sizes do not agree")
        p["gamma"], p["beta"] = params[:half].copy(), params[half:].copy()
    elif rid.endswith("pool_2"):
        for name in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
            p[name] = reader.int()
    # add_prev_: nothing after the id
    return LayerRecord(kind=token, id=rid, params=p)


def _split_conv(reader: DlibReader, p: dict) -> None:
    n, k, nr, nc = p["filters_shape"]
    if (n, nr, nc) != (p["num_filters"], p["nr"], p["nc"]):
        raise reader.fail("convolution filter shape disagrees with its header")
    flat = p.pop("params").reshape(-1)
    count = n * k * nr * nc
    want = count + (n if p["use_bias"] else 0)
    if flat.size != want:
        raise reader.fail(f"convolution holds {flat.size} values, expected {want}")
    p["weight"] = flat[:count].reshape(n, k, nr, nc).copy()
    p["bias"] = flat[count:].copy() if p["use_bias"] else None


def _split_fc(reader: DlibReader, p: dict) -> None:
    n_in, n_out = p["num_inputs"], p["num_outputs"]
    has_bias = p["bias_mode"] == 0 and p["use_bias"]
    flat = p.pop("params").reshape(-1)
    want = (n_in + (1 if has_bias else 0)) * n_out
    if flat.size != want:
        raise reader.fail(f"fully connected layer holds {flat.size} values, expected {want}")
    matrix = flat.reshape(-1, n_out)
    p["weight"] = np.ascontiguousarray(matrix[:n_in].T)  # dlib computes x @ W with W (in, out); torch wants (out, in)
    p["bias"] = matrix[n_in].copy() if has_bias else None


def _read_input(reader: DlibReader) -> dict:
    rid = reader.expect_string("input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2")
    out = {"id": rid, "avg_rgb": tuple(_reals(reader, 3))}
    if rid == "input_rgb_image_sized":
        out["nr"], out["nc"] = reader.int(), reader.int()
    elif rid == "input_rgb_image_pyramid2":
        out["pyramid_padding"], out["pyramid_outer_padding"] = reader.int(), reader.int()
    else:
        out["pyramid_padding"], out["pyramid_outer_padding"] = 10, 11
    return out


def _read_loss(reader: DlibReader) -> dict:
    rid = reader.expect_string("loss_metric_2", "loss_metric_", "loss_mmod_")
    if rid == "loss_metric_2":
        return {"id": rid, "margin": reader.real(), "dist_thresh": reader.real()}
    if rid == "loss_metric_":
        return {"id": rid, "margin": 0.1, "dist_thresh": 0.75}
    return {"id": rid, **_read_mmod_options(reader)}


def _read_mmod_options(reader: DlibReader) -> dict:
    version = reader.int()
    if not 1 <= version <= 4:
        raise reader.fail(f"mmod_options version {version}")
    windows = []
    if version == 1:
        windows.append({"width": reader.int(), "height": reader.int(), "label": ""})
    else:
        for _ in range(reader.int()):
            wversion = reader.int()
            if wversion not in (1, 2):
                raise reader.fail(f"detector window version {wversion}")
            width, height = reader.int(), reader.int()
            windows.append({"width": width, "height": height, "label": reader.string() if wversion == 2 else ""})
    opts = {"version": version, "detector_windows": windows}
    opts["loss_per_false_alarm"], opts["loss_per_missed_target"], opts["truth_match_iou_threshold"] = _reals(reader, 3)
    opts["overlaps_nms"] = tuple(_reals(reader, 2))  # (iou_thresh, percent_covered_thresh)
    opts["overlaps_ignore"] = tuple(_reals(reader, 2))
    opts["assume_image_pyramid"] = bool(reader.byte()) if version >= 3 else True
    if version >= 4:
        opts["use_bounding_box_regression"] = reader.bool()
        opts["bbr_lambda"] = reader.real()
    else:
        opts["use_bounding_box_regression"], opts["bbr_lambda"] = False, 0.0
    return opts
