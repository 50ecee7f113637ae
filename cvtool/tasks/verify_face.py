"""`cvtool verify-face`: are A and B the same person; names for faces from a gallery; threshold calibration.

Mode rules (`mode()`): two positionals compare a pair (exit 0 same person, 1 different, 2 error); --gallery KNOWN
names the faces in the positionals, as a batch; --calibrate PAIRS.csv fits the threshold and takes no
positionals."""

from __future__ import annotations

from cvtool.errors import UsageError
from cvtool.tasks.common import BATCH, BATCH_SIZE, LOADING, MAX_PIXELS, model_option, with_default
from cvtool.tasks.options import LOAD, PATH, RUN, Option, Options, split_csv
from cvtool.tasks.spec import Table, TaskSpec

DEFAULT_MIN_FACE = 40  # px: what the detector's `auto` upsampling aims to find

SPEC = TaskSpec(
    name="verify-face",
    api="cvtool.api:FaceVerifier",
    summary="Face verification (are A and B the same person?), one-shot identification against a gallery, and "
            "threshold calibration; each verdict shows the distance, the threshold, the detector and the model.",
    epilog="Examples: cvtool verify-face id_photo.jpg selfie.jpg  (exit 0 same person, 1 different, 2 error) | "
           "cvtool verify-face --gallery known/ party/*.jpg --out named/ | cvtool verify-face --calibrate pairs.csv",
    inputs=("A B | IMAGES...", "Two images to compare; with --gallery, images whose faces to name."),
    default_model="dlib_face_resnet",
    options=Options([
        Option("gallery", PATH, None, "Known people: KNOWN/name.jpg or KNOWN/name/*.jpg.", stage=RUN, short="-g",
               api=False, server=False),
        Option("calibrate", PATH, None, "A CSV of path_a,path_b,same: fit the threshold.", stage=RUN, api=False,
               server=False),
        Option("threshold", float, None, "Same person below this distance (default: the model's, 0.6 for dlib).",
               low=0, short="-t", stage=LOAD),
        Option("face_index", str, None, "Which face when several: N for both images, or N,M; numbered from 0, left "
               "to right.", stage=RUN, api=False),
        Option("detector", str, "mmod", "mmod (dlib's CNN, accurate) or haar (OpenCV, fast).", stage=LOAD),
        Option("upsample", int, None, "mmod: enlarge images N times (default: as --min-face asks, within a pixel "
               "budget).", low=0, high=3, stage=LOAD),
        Option("min_face", float, DEFAULT_MIN_FACE, "mmod: the smallest face to find, in pixels of the photo (the "
               "image is scaled so it reaches the detector's ~80 px).", low=8, stage=LOAD),
        model_option("Face embedder (default dlib_face_resnet)."),
        Option("weights", PATH, None, "An embedder checkpoint from `cvtool train face`.", stage=LOAD,
               short="-w"),
        *(o for o in LOADING if o.name not in ("weights", "backend", "max_pixels")),
        with_default(MAX_PIXELS, MAX_PIXELS.default, stage=LOAD),
        Option("backend", str, "auto", "auto (the ONNX exports an earlier run cached, no torch; else exported now), "
               "onnxruntime (detector CNN and embedder), or torch.", stage=LOAD),
        with_default(BATCH_SIZE, 4, help="Images per pass (with --gallery)."),
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("name", "distance", "x1", "y1", "x2", "y2"),
    rows=lambda result: ([[f["name"], f["distance"], *f["box"]] for f in result["faces"]]
                         or [["(no face)", "", "", "", "", ""]]),
    tables={"pair": Table(("path_b", "same", "distance", "threshold", "detector", "model"),
                          lambda r: [[r["path_b"], r["same"], r["distance"], r["threshold"], r["detector"],
                                      r["model"]]])},
    endpoint="/verify-face",
)


def mode(images: list[str], *, gallery, calibrate, shard=None, records=None) -> str:
    """"pair", "gallery" or "calibrate": the mode the options ask for, or a UsageError saying what is wrong."""
    if gallery is not None and calibrate is not None:
        raise UsageError("--gallery and --calibrate are separate modes; use one")
    if calibrate is not None:
        if images:
            raise UsageError("--calibrate reads its image pairs from the CSV; drop the positional images")
        return "calibrate"
    if gallery is None:
        if len(images) != 2:
            raise UsageError(f"give two images to compare (got {len(images)}), or --gallery KNOWN IMAGES...")
        if shard is not None or records is not None:
            raise UsageError("--shard and --records are for --gallery batches")
        return "pair"
    if not images:
        raise UsageError("--gallery needs images whose faces to name")
    return "gallery"


def face_indices(text: str | None, *, where: str = "--face-index") -> tuple[int | None, int | None]:
    """--face-index N (both images) or N,M -> (index_a, index_b); `where`: how the caller spells the option."""
    if text is None:
        return None, None
    parts = split_csv(text)
    if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and len(p) < 10 for p in parts):
        raise UsageError(f"{where} {text!r}: expected N or N,M (face numbers from 0)")
    values = [int(p) for p in parts]
    return values[0], values[-1]
