"""The server's endpoints are made from the task table (issue 29): each endpoint's OpenAPI parameters are exactly
its task's `server` options, with the table's defaults and inclusive bounds, beside the server's own parameters;
and its record is the API object's `to_dict()` (but `ms`) for the same image and options, per-call options
included (they reach the loaded network through `with_options`). Tiny random-weight networks, the app called in
this process over ASGI."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES, save_random_unet, save_random_yolo

pytest.importorskip("fastapi")

DIGIT = SAMPLES / "digits" / "digit_3.png"
ASTRONAUT = SAMPLES / "photos" / "astronaut.jpg"

# the server's own parameters per endpoint (not task options), and the table's options an endpoint leaves out:
# verify-face's mode options (the endpoint is the mode; /identify declares `gallery` itself) and a pair's face_index
OWN = {"/classify": {"name", "path"}, "/detect": {"with_classes", "name", "path"}, "/localize": {"name", "path"},
       "/landmarks": {"name", "path"},
       "/segment": {"format", "name", "path"}, "/stylize": {"format", "name", "path"},
       "/verify-face": {"path_a", "path_b"}, "/identify": {"gallery", "name", "path"}}
LEFT_OUT = {"/verify-face": {"gallery", "calibrate"}, "/identify": {"gallery", "calibrate", "face_index"}}
JSON_TYPES = {int: "integer", float: "number", bool: "boolean"}


def without_ms(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "ms"}


def endpoints():
    from cvtool import tasks

    for spec in tasks.specs():
        if spec.endpoint is not None:
            yield spec, spec.endpoint
        if spec.name == "verify-face":
            yield spec, "/identify"


def test_every_endpoint_takes_exactly_its_tasks_server_options_with_the_tables_defaults_and_bounds():
    from cvtool.serve.app import create_app
    from cvtool.serve.settings import Settings

    schema = create_app(Settings(log=False)).openapi()
    seen = set()
    for spec, path in endpoints():
        seen.add(path)
        params = {p["name"]: p for p in schema["paths"][path]["post"]["parameters"]}
        options = [o for o in spec.options.select(route="server") if o.name not in LEFT_OUT.get(path, set())]
        aliases = {alias: o for o in options for alias in o.aliases}
        assert set(params) == {o.name for o in options} | set(aliases) | OWN[path], path
        for option in options:
            param = params[option.name]
            kinds = param["schema"].get("anyOf", [param["schema"]])
            [kind] = [k for k in kinds if k.get("type") != "null"]
            assert kind["type"] == JSON_TYPES.get(option.type, "string"), (path, option.name)
            low, high = ("exclusiveMinimum", "exclusiveMaximum") if option.exclusive else ("minimum", "maximum")
            assert (kind.get(low), kind.get(high)) == (option.low, option.high), (path, option.name)
            if param["required"]:  # the server runs feed-forward networks only: /stylize needs its network
                assert (path, option.name) == ("/stylize", "model")
            else:
                assert param["schema"].get("default") == option.default, (path, option.name)
            assert param["description"].startswith(option.help), (path, option.name)
        for alias, option in aliases.items():
            assert params[alias]["deprecated"] is True and option.name in params[alias]["description"]
    assert seen == {"/classify", "/detect", "/landmarks", "/localize", "/segment", "/stylize", "/verify-face",
                    "/identify"}
    categories = {p["name"] for p in schema["paths"]["/detect/categories"]["get"]["parameters"]}
    assert categories == {"model", "weights", "backend"}  # detect's LOAD options: what names the detector


# -- the records ------------------------------------------------------------------------------------

async def _call(app, path: str, params: dict, body: bytes, content_type: str):
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect while the answer is made

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def served(app, *requests) -> list[tuple[int, dict, bytes]]:
    """(status, headers, body) of each request (path, params, image path or multipart files), in one event loop."""
    from cvtool.serve.client import multipart

    async def main():
        answers = []
        for path, params, image in requests:
            if isinstance(image, dict):
                body, kind = multipart({part: (str(p), Path(p).read_bytes()) for part, p in image.items()})
                answers.append(await _call(app, path, params, body, kind))
            else:
                answers.append(await _call(app, path, {**params, "name": str(image)}, Path(image).read_bytes(),
                                           "application/octet-stream"))
        return answers

    return asyncio.run(main())


def record(answer) -> dict:
    status, headers, body = answer
    assert status == 200, body
    return without_ms(json.loads(headers["x-cvtool-record"]) if "x-cvtool-record" in headers else json.loads(body))


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    """The server's --allow-paths: a YOLO detector, a U-Net, a fast-style network (random weights, seed 0), a
    photo of a shape and a gallery of one person."""
    import cv2
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS, TransformerNet

    root = tmp_path_factory.mktemp("table_nets")
    save_random_yolo(root / "yolo.pt", ["square", "disk"])
    save_random_unet(root / "unet.pt", ["background", "shape"])
    torch.manual_seed(0)
    save_checkpoint(root / "style.pt", arch="fast_style", task="stylize",
                    state_dict=TransformerNet(width=4).state_dict(), preprocess=FAST_STYLE_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4}})
    photo = cv2.resize(cv2.imread(str(SAMPLES / "photos" / "chelsea.jpg")), (90, 60), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "chelsea.png"), photo)
    (root / "known").mkdir()
    (root / "known" / "eileen.jpg").write_bytes(ASTRONAUT.read_bytes())
    cv2.imwrite(str(root / "mirrored.jpg"), cv2.imread(str(ASTRONAUT))[:, ::-1])
    return root


@pytest.fixture()
def app(nets):
    from cvtool.serve.app import create_app
    from cvtool.serve.settings import Settings

    return create_app(Settings(log=False, allow_paths=nets, device="cpu"))


def test_classify_detect_and_segment_records_are_the_api_objects(app, nets):
    import cvtool

    photo, yolo, unet = nets / "chelsea.png", str(nets / "yolo.pt"), str(nets / "unet.pt")
    detect = {"weights": yolo, "conf": 0.2, "iou": 0.5, "classes": "square,disk", "max_det": 20}
    segment = {"weights": unet, "alpha": 0.3, "threshold": 0.45}
    tiled = {"weights": unet, "tile": 32, "overlap": 8, "tile_batch": 2}
    answers = served(app, ("/classify", {"model": "lenet5_digits", "top_k": 2}, DIGIT),
                     ("/detect", {**detect, "with_classes": "true"}, photo),
                     ("/detect", {"weights": yolo}, photo),
                     ("/segment", segment, photo), ("/segment", {**segment, "format": "png"}, photo),
                     ("/segment", tiled, photo))
    expected = [cvtool.Classifier("lenet5_digits", top_k=2, device="cpu")(str(DIGIT)),
                cvtool.Detector(weights=yolo, conf=0.2, iou=0.5, classes=["square", "disk"], max_det=20,
                                device="cpu")(str(photo)),
                cvtool.Detector(weights=yolo, device="cpu")(str(photo))]
    masked = cvtool.Segmenter(weights=unet, alpha=0.3, threshold=0.45, device="cpu")(str(photo))
    expected += [masked, masked,
                 cvtool.Segmenter(weights=unet, tile=32, overlap=8, tile_batch=2, device="cpu")(str(photo))]
    assert [record(a) for a in answers] == [without_ms(e.to_dict()) for e in expected]
    assert json.loads(answers[1][1]["x-cvtool-classes"]) == ["square", "disk"]
    from PIL import Image

    assert answers[4][1]["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answers[4][2]))), masked.mask)


def test_segment_takes_batch_size_as_tile_batchs_deprecated_name_and_the_tables_threshold_range(app, nets):
    import cvtool

    photo, unet = nets / "chelsea.png", str(nets / "unet.pt")
    old, both, low, high, over = served(
        app, ("/segment", {"weights": unet, "tile": 32, "overlap": 8, "batch_size": 3}, photo),
        ("/segment", {"weights": unet, "tile": 32, "overlap": 8, "batch_size": 3, "tile_batch": 2}, photo),
        ("/segment", {"weights": unet, "threshold": 0}, photo), ("/segment", {"weights": unet, "threshold": 1}, photo),
        ("/segment", {"weights": unet, "threshold": 1.5}, photo))
    assert record(old) == without_ms(cvtool.Segmenter(weights=unet, tile=32, overlap=8, tile_batch=3, device="cpu")(
        str(photo)).to_dict())
    assert (old[1]["deprecation"], old[1]["warning"]) == ("true", '299 - "batch_size is deprecated; use tile_batch"')
    assert (both[0], json.loads(both[2])) == (400, {"path": None, "error": "give tile_batch or batch_size (its "
                                                                           "deprecated name), not both"})
    assert (low[0], json.loads(low[2])) == (400, {"path": None, "error": "threshold: Input should be greater than 0"})
    for answer in (high, over):  # the table's range is open: strictly between 0 and 1
        assert (answer[0], json.loads(answer[2])) == (400, {"path": None, "error": "threshold: Input should be less "
                                                                                   "than 1"})


def test_stylize_records_and_pixels_are_the_api_objects(app, nets):
    import cv2

    import cvtool

    photo, style = nets / "chelsea.png", str(nets / "style.pt")
    as_json, as_png = served(app, ("/stylize", {"model": style, "size": 48, "format": "json"}, photo),
                             ("/stylize", {"model": style, "size": 48}, photo))
    expected = cvtool.Stylizer(style, size=48, device="cpu")(str(photo))
    assert record(as_json) == record(as_png) == without_ms(expected.to_dict())
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(as_png[2], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, expected.stylized)


def test_verify_face_and_identify_records_are_the_api_objects(app, nets):
    import cvtool

    mirrored = nets / "mirrored.jpg"
    pair, named = served(app, ("/verify-face", {"min_face": 30}, {"a": ASTRONAUT, "b": mirrored}),
                         ("/identify", {"gallery": "known", "min_face": 30}, mirrored))
    verifier = cvtool.FaceVerifier(min_face=30, device="cpu")
    assert record(pair) == without_ms(verifier.verify(str(ASTRONAUT), str(mirrored)).to_dict())
    found = verifier.identify(str(mirrored), verifier.gallery(nets / "known"))
    assert record(named) == without_ms(found.to_dict())
    assert [face["name"] for face in found.result["faces"]] == ["eileen"]
