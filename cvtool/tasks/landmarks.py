"""`cvtool landmarks`: N (x, y) points per detected face (or per image), from a `cvtool train landmarks` checkpoint."""

from cvtool.tasks.common import BATCH, BATCH_SIZE, LOADING, model_option, with_default
from cvtool.tasks.options import LOAD, Option, Options
from cvtool.tasks.spec import TaskSpec

DEFAULT_MIN_FACE = 80  # px: `train landmarks` measures the detector's boxes at this setting (--fit-faces)

SPEC = TaskSpec(
    name="landmarks",
    api="cvtool.api:LandmarkDetector",
    summary="Landmarks: N (x, y) points per face found by the face detector (or per image), in the input's own "
            "pixels; annotated images (or videos) with --out.",
    epilog="Example: cvtool landmarks photos/ --weights runs/helen/best.pt --out marked/ --save-pts",
    default_model="landmark_net",
    options=Options([
        model_option("Model name (see `cvtool models --task landmarks`); a checkpoint from `cvtool train landmarks` "
                     "(--weights) names its own."),
        Option("no_detect", bool, False, "Take each image as one crop instead of finding faces (a face's crop for a "
               "--region box model; a --region image model never detects)."),
        Option("detector", str, "mmod", "mmod (dlib's CNN: the detector `train landmarks` measured its boxes on) "
               "or haar.", stage=LOAD),
        Option("min_face", float, DEFAULT_MIN_FACE, "mmod: the smallest face to find, in pixels of the photo.",
               low=8, stage=LOAD),
        Option("max_faces", int, 20, "At most this many faces per image (the largest).", low=1),
        Option("save_pts", bool, False, "With --out: also NAME.faceNN.pts per face (iBUG's format, which `train "
               "landmarks` reads).", needs_out=True, server=False),
        *LOADING,
        with_default(BATCH_SIZE, 4, help="Images per pass."),
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("face", "point", "name", "x", "y"),
    rows=lambda result: [[i, j, name, x, y] for i, face in enumerate(result["faces"])
                         for j, (name, (x, y)) in enumerate(zip(result["names"], face["points"]))],
    endpoint="/landmarks",
)
