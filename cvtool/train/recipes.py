"""What each `cvtool train` task takes, declared once: every option's default, range and help (cvtool.train.args).

Per task, `<Task>TrainArgs` are the recipe's arguments, stored in every checkpoint so --resume needs nothing
else (the recipe modules beside this one train from them), and `<Task>Config` the rest of its options: the
engine's TrainConfig for that task and the run's folder. `RunOptions` are the options every task takes.
cvtool.cli_train builds the commands' options from these dataclasses, cvtool.train's entries take their keyword
defaults from them. Standard library only: `cvtool train X --help` imports this, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvtool.train.args import arg, comma_list


# -- options several tasks share, each declared once --------------------------------------------------------

def _epochs(text: str, fallback: int):
    return arg(None, short="-e", low=1, help=text, fallback=fallback)


def _batch_size(default: int):
    return arg(default, short="-b", low=1)


def _optimizer():
    return arg("adamw", help="adamw, adam or sgd.")


def _seed(text: str | None = None):
    return arg(0, help=text)


def _workers():
    return arg(None, low=0, help="DataLoader worker processes (default: min(4, cores - 1) on CUDA, 0 on the CPU).")


def _ema():
    return arg(0.0, low=0.0, help="Validate and save a moving average of the weights with this decay (e.g. 0.99; "
                                  "0: off).")


def _out(run: str):
    return arg(None, short="-o", type=Path, help=f"Run directory (default runs/{run}-TIME).")


@dataclass
class RunOptions:
    """Where and how any task's run goes: the options every `cvtool train` command and cvtool.train entry takes."""

    resume: Path | None = arg(None, help="Continue the run in this directory from last.pt.")
    device: str = arg("auto", help="auto, cpu, cuda or cuda:N.")
    devices: int = arg(1, low=1, help="Data-parallel: launch N processes on this machine (torchrun; --batch-size is "
                                      "the global batch). Under torchrun, leave it out.")
    sync_bn: bool = arg(False, help="Data-parallel: batch-norm statistics over the global batch (SyncBatchNorm on "
                                    "CUDA, all-reduced on the CPU).")
    cpu_bf16: bool = arg(False, help="On the CPU: train in bf16 mixed precision with channels-last tensors "
                                     "(measured 1.4-2.4x as fast) on a CPU with bfloat16 instructions (refused on "
                                     "others); results differ from float32's. CUDA always trains in mixed precision.")
    val_every: int = arg(1, low=1, metavar="N", help="Validate after every N-th epoch and after the last (best.pt is "
                                                     "picked among those): a long run spends its time training.")


# -- classify -----------------------------------------------------------------------------------------------

@dataclass
class ClassifyTrainArgs:
    """What `cvtool train classify` was asked; stored in every checkpoint so --resume needs nothing else."""

    data: str = arg(argument=True, help="ImageFolder directory (one folder per class), CSV of path,label, or MNIST "
                                        "IDX files.")
    arch: str = arg("resnet18", short="-a", help="Any classifier of `cvtool models --task classify`.")
    val: str | None = arg(None, help="Validation data (same layouts as DATA).")
    val_split: float = arg(0.1, help="Without --val: fraction of each class held out.")
    img_size: int | None = arg(None, low=8, help="Input size (default: the model's own).")
    pretrained: bool = arg(False, "--pretrained/--no-pretrained", help="Fine-tune from the model's weights.")
    hflip: bool = arg(False, help="Augment with horizontal flips (off: they change digits/text).")
    ema: float = _ema()  # > 0: validate and save an exponential moving average of the weights with this decay


@dataclass
class ClassifyConfig:
    epochs: int | None = _epochs("Epochs to train", 10)
    batch_size: int = _batch_size(32)
    lr: float = arg(1e-3, help="Peak learning rate (cosine schedule).")
    weight_decay: float = arg(1e-4)
    optimizer: str = _optimizer()
    seed: int = _seed("Seeds shuffling, augmentation and initialisation.")
    workers: int | None = _workers()
    out: Path | None = _out("classify-ARCH")


# -- detect -------------------------------------------------------------------------------------------------

@dataclass
class DetectTrainArgs:
    data: str = arg(argument=True, help="images/ + annotations/ (VOC XML) or labels/ (YOLO), or COCO .json.")
    arch: str = arg("yolo", short="-a", help="yolo (the YOLO-style detector of cvtool).")
    val: str | None = arg(None, help="Validation data (same layouts).")
    val_split: float = arg(0.2, help="Without --val: fraction of images held out.")
    img_size: int = arg(320, low=64, help="Letterboxed training size (a multiple of 32).")
    anchors: int = arg(3, low=1, high=9, help="Anchor shapes, chosen by k-means on the boxes.")
    width: int = arg(16, low=4, help="Channels of the first layer (doubled per stage).")
    hflip: bool = arg(True, "--hflip/--no-hflip", help="Augment with horizontal flips.")
    backbone: str = arg("csp", help="csp (from scratch), resnet18 or mobilenet_v3_small.")
    pretrained: bool = arg(False, "--pretrained/--no-pretrained",
                           help="Start the torchvision backbone from its ImageNet weights.")
    mosaic: float = arg(0.5, low=0.0, high=1.0, help="Probability of a 2x2 mosaic per image.")
    # the last N epochs train without mosaics (the photos as they are seen at test time)
    close_mosaic: int = arg(0, low=0, help="Train the last N epochs without mosaics.")
    ema: float = _ema()  # > 0: validate and save an exponential moving average of the weights with this decay


@dataclass
class DetectConfig:
    epochs: int | None = _epochs("Epochs", 50)
    batch_size: int = _batch_size(8)
    lr: float = arg(5e-3)
    weight_decay: float = arg(5e-4)
    optimizer: str = _optimizer()
    seed: int = _seed()
    workers: int | None = _workers()
    out: Path | None = _out("detect-yolo")


# -- segment ------------------------------------------------------------------------------------------------

@dataclass
class SegmentTrainArgs:
    data: str = arg(argument=True, help="Folder with images/ and masks/ (same file stems).")
    arch: str = arg("unet", short="-a", help="unet, or a segmenter of `cvtool models --task segment`.")
    val: str | None = arg(None, help="Validation folder (same layout).")
    val_split: float = arg(0.2, help="Without --val: fraction of the pairs held out.")
    crop: int | None = arg(256, low=16, type=int, help="Random training crops of this size (with flips).")
    loss: str = arg("ce+dice", help="ce, dice, ce+dice, weighted-ce or weighted-ce+dice (the U-Net paper's "
                                    "border-weighted cross-entropy).")
    width: int = arg(32, low=4, help="U-Net: channels of the first level (doubled per level).")
    depth: int = arg(4, low=1, high=6, help="U-Net: number of poolings.")
    in_channels: int = arg(1, help="U-Net: 1 (grey) or 3 (colour) input.")
    class_names: list[str] | None = arg(None, type=str, convert=comma_list,
                                        help="Comma-separated names for class 0, 1, ...")
    # the U-Net paper's elastic deformations (image and mask warped alike)
    elastic: bool = arg(False, help="U-Net paper: elastic deformations (one smooth random field warps image and "
                                    "mask).")
    elastic_sigma: float = arg(10.0, low=0, help="Pixels: std of the displacements on the 3x3 lattice.")
    elastic_grid: int = 3  # the lattice: grid x grid points, upsampled bicubically
    # pixels of mirrored context around each training image (crops may reach into it)
    mirror_pad: int = arg(0, low=0, help="Pixels of mirrored context around each training image (unscored).")
    border_w0: float = arg(10.0, help="--loss weighted-ce: the border weight map's w0.")
    border_sigma: float = arg(5.0, help="--loss weighted-ce: its sigma (pixels).")
    border_balance: bool = arg(True, "--border-balance/--no-border-balance",
                               help="w_c balances class frequencies (paper) or is 1.")
    ema: float = _ema()  # > 0: validate and save an exponential moving average of the weights with this decay


@dataclass
class SegmentConfig:
    epochs: int | None = _epochs("Epochs to train", 30)
    batch_size: int = _batch_size(4)
    lr: float = arg(1e-3, help="Peak learning rate (cosine schedule).")
    weight_decay: float = arg(1e-4)
    optimizer: str = _optimizer()
    select: str = arg("miou", help="What picks best.pt on the validation set: miou, or rand (two classes: ISBI "
                                   "2012's Rand F-score of the cells between membranes).")
    seed: int = _seed()
    workers: int | None = _workers()
    out: Path | None = _out("segment-ARCH")


# -- style --------------------------------------------------------------------------------------------------

@dataclass
class StyleTrainArgs:
    style: str = arg(argument=True, name="style_image", metavar="STYLE_IMAGE", help="The style to learn.")
    data: str = arg(help="Folder of content photos (searched recursively).")
    vgg: str = arg("vgg16", help="Loss network: vgg16 (Johnson et al.) or vgg19.")
    vgg_weights: str | None = arg(None, type=Path, help="The VGG's weights file, instead of the download.")
    img_size: int = arg(256, low=32, help="Training crops, in pixels.")
    content_weight: float = arg(1.0)
    style_weight: float = arg(1e5)
    tv_weight: float = arg(1e-6)
    width: int = arg(32, low=4, help="Channels of the network's first layer.")
    val_split: float = 0.1


@dataclass
class StyleConfig:
    epochs: int | None = _epochs("Epochs", 10)
    batch_size: int = _batch_size(4)
    lr: float = arg(1e-3)
    seed: int = _seed()
    out: Path | None = _out("stylize-fast_style")


# -- face ---------------------------------------------------------------------------------------------------

@dataclass
class FaceTrainArgs:
    """What `cvtool train face` was asked; stored in every checkpoint so --resume needs nothing else."""

    data: str = arg(argument=True, help="One sub-folder of face images per person (2+ images each).")
    arch: str = arg("face_embed_small", short="-a", help="face_embed_small (from scratch) or dlib_face_resnet "
                                                         "(fine-tuned; 150 px aligned chips).")
    loss: str = arg("triplet", help="triplet, or binary (|e1 - e2| -> logistic unit, BCE on pairs).")
    margin: float = arg(0.2, low=0.0, help="Triplet margin alpha (squared distances).")
    mining: str = arg("semi-hard", help="semi-hard (FaceNet) or hard (batch-hard).")
    identities_per_batch: int = arg(8, short="-P", low=2, help="P people per batch.")
    images_per_identity: int = arg(4, short="-K", low=2, help="K images of each.")
    img_size: int | None = arg(None, low=16, help="Input size (default: the model's own).")
    val_split: float = arg(0.25, help="Fraction of the people held out (whole identities).")
    hflip: bool = arg(True, "--hflip/--no-hflip", help="Augment with horizontal flips.")


@dataclass
class FaceConfig:
    epochs: int | None = _epochs("Epochs to train", 30)
    lr: float | None = arg(None, help="Peak learning rate (default 1e-3 from scratch, 1e-4 fine-tuning).")
    weight_decay: float = arg(0.05, help="AdamW decoupled weight decay (regularises small face sets).")
    seed: int = _seed("Seeds the identity split, batches, augmentation and initialisation.")
    workers: int | None = _workers()
    out: Path | None = _out("face-ARCH")


# -- localize -----------------------------------------------------------------------------------------------

@dataclass
class LocalizeTrainArgs:
    """What `cvtool train localize` was asked; stored in every checkpoint so --resume needs nothing else."""

    data: str = arg(argument=True, help="images/ + annotations/ (VOC XML) or labels/ (YOLO), or COCO .json; an "
                                        "image with no box is a Pc = 0 example.")
    arch: str = arg("resnet18", short="-a", help="The backbone: any classifier of `cvtool models --task classify` "
                                                 "(lenet5, resnet18, mobilenet_v3_small, ...).")
    val: str | None = arg(None, help="Validation data (same layouts).")
    val_split: float = arg(0.2, help="Without --val: fraction of each class (and of the negatives) held out.")
    img_size: int | None = arg(None, low=16, help="Square input side, the whole image stretched to it (default: "
                                                  "the backbone's crop, 128 for ImageNet backbones).")
    multi: str = arg("refuse", help="An image with more than one box: refuse (one line naming the file), largest "
                                    "(keep its largest box) or skip (leave the image out).")
    pretrained: bool = arg(False, "--pretrained/--no-pretrained", help="Start the backbone from its weights.")
    hflip: bool = arg(True, "--hflip/--no-hflip", help="Augment with horizontal flips (the box flips too).")
    ema: float = _ema()  # > 0: validate and save an exponential moving average of the weights with this decay


@dataclass
class LocalizeConfig:
    epochs: int | None = _epochs("Epochs to train", 30)
    batch_size: int = _batch_size(16)
    lr: float = arg(1e-3, help="Peak learning rate (cosine schedule).")
    weight_decay: float = arg(1e-4)
    optimizer: str = _optimizer()
    seed: int = _seed("Seeds the split, shuffling, augmentation and initialisation.")
    workers: int | None = _workers()
    out: Path | None = _out("localize-ARCH")


# -- landmarks ----------------------------------------------------------------------------------------------

@dataclass
class LandmarksTrainArgs:
    """What `cvtool train landmarks` was asked; stored in every checkpoint so --resume needs nothing else."""

    data: str = arg(argument=True, help="A folder of images with iBUG .pts files beside them or in labels/ (with or "
                                        "without the version/n_points/{ } header), or a CSV (path,x0,y0,x1,y1,...) "
                                        "or JSON ([{\"path\", \"points\": [[x, y], ...]}]) of points in pixels.")
    arch: str = arg("resnet18", short="-a", help="The backbone: any classifier of `cvtool models --task classify` "
                                                 "(lenet5, resnet18, mobilenet_v3_small, ...).")
    val: str | None = arg(None, help="Validation data (same layouts).")
    val_split: float = arg(0.2, help="Without --val: fraction of the images held out.")
    img_size: int | None = arg(None, low=16, help="Crop side the network takes (default: 128; lenet5: 32).")
    region: str = arg("box", help="box: each face's square crop (1.3 x the points' bounding box; at inference a "
                                  "face detector's box, mapped as measured on training faces); image: the whole "
                                  "image stretched square (points as fractions of the image).")
    flip_pairs: str | None = arg(None, metavar="A:B,...", help="Left/right point pairs a horizontal flip swaps "
                                                              "(default: iBUG's for 68 points, dlib's for 5).")
    hflip: bool = arg(True, "--hflip/--no-hflip", help="Augment with horizontal flips (pairs swapped; not for "
                                                       "points without declared pairs).")
    rotate: float = arg(15.0, low=0.0, high=90.0, help="Augment: random rotation up to this many degrees.")
    jitter: float = arg(0.1, low=0.0, high=0.5, help="Augment: random box shift (fraction of its side) and scale "
                                                     "(1 +- this).")
    fit_faces: int = arg(60, low=0, help="--region box: training images the face detector (dlib's CNN) is run on to "
                                         "measure its boxes against the points' (0: no detection at inference).")
    pretrained: bool = arg(False, "--pretrained/--no-pretrained", help="Start the backbone from its weights.")
    ema: float = _ema()  # > 0: validate and save an exponential moving average of the weights with this decay


@dataclass
class LandmarksConfig:
    epochs: int | None = _epochs("Epochs to train", 60)
    batch_size: int = _batch_size(16)
    lr: float = arg(1e-3, help="Peak learning rate (cosine schedule).")
    weight_decay: float = arg(1e-4)
    optimizer: str = _optimizer()
    seed: int = _seed("Seeds the split, shuffling, augmentation and initialisation.")
    workers: int | None = _workers()
    out: Path | None = _out("landmarks-ARCH")
