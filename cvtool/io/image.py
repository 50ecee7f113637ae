"""Reading and writing images with OpenCV, the way users' files actually arrive.

Phone photos carry an EXIF rotation, scanners write 16-bit or palette PNGs, screenshots have an
alpha channel, cameras embed wide-gamut ICC profiles, and some files are broken or hostile. Every
reader in cvtool comes through `read_image`, which turns all of that into one HxWx3 uint8 RGB
array or one `InputError` with a short reason.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from cvtool.errors import InputError
from cvtool.io.atomic import atomic_write_bytes
from cvtool.io.opencv import cv2

if TYPE_CHECKING:
    import PIL.Image

from cvtool.tasks.common import DEFAULT_MAX_PIXELS  # noqa: E402 - the task table's --max-pixels
from cvtool.io.kinds import IMAGE_SUFFIXES  # noqa: E402,F401 - here before


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a C-contiguous HxWx3 uint8 RGB array, or raise InputError saying why not."""
    return decode_image(_read_bytes(path), path, max_pixels=max_pixels)


# What the Python API takes as an image (see `load_image`).
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, "PIL.Image.Image"]


def image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the array `read_image` gives for `path` (EXIF orientation applied), from the header
    when Pillow reads one, without decoding the pixels; else decoded. InputError for a file read_image refuses
    before decoding (missing, not an image, over max_pixels)."""
    data = _read_bytes(path)
    header = _header(data)
    if header is None:
        return decode_image(data, path, max_pixels=max_pixels).shape[:2]
    check_pixels(header.size, max_pixels, path)
    w, h = header.size
    return (w, h) if header.orientation in (5, 6, 7, 8) else (h, w)  # these four turn the image a quarter


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image the Python API accepts -> a C-contiguous HxWx3 uint8 RGB array, or an InputError.

    - a path (str or os.PathLike): read as `read_image` reads files (EXIF rotation, 16-bit, alpha, ICC);
    - encoded bytes (JPEG, PNG, ...): decoded the same way;
    - a NumPy array: **RGB** channel order, dtype uint8, shape HxWx3 (HxW grey and HxWx4 RGBA are
      accepted: grey is repeated, RGBA is composited over white, as files with alpha are). Arrays from
      `cv2.imread` are BGR: convert them first (`img[..., ::-1]`). Other dtypes are refused rather than
      guessed at (is a float image in 0-1 or 0-255?);
    - a PIL image: converted to RGB.
    """
    if isinstance(source, (str, os.PathLike)):
        return read_image(source, max_pixels=max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("empty bytes (0 bytes)", BYTES_NAME)
        return decode_image(data, BYTES_NAME, max_pixels=max_pixels)
    if isinstance(source, np.ndarray):
        return _checked_array(source, max_pixels)
    pil_image = _pil_image_type()
    if pil_image is not None and isinstance(source, pil_image):
        return _checked_array(np.asarray(source.convert("RGB")), max_pixels)
    kind = type(source).__name__
    raise InputError(f"unsupported image type {kind}: give a path, encoded bytes, a NumPy array (H x W x 3, RGB, "
                     "uint8) or a PIL image", f"<{kind}>")  # named by its type: it is no array


BYTES_NAME = "<bytes>"  # how errors name an input that has no path
ARRAY_NAME = "<array>"


def _pil_image_type():
    import sys

    module = sys.modules.get("PIL.Image")  # a PIL image can only exist when PIL is imported already
    return None if module is None else module.Image


def _checked_array(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InputError(f"a {array.dtype} array; images are uint8 arrays (0-255, RGB): convert with "
                         "(x * 255).round().astype(np.uint8) if yours is in 0-1", ARRAY_NAME)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"an array of shape {tuple(array.shape)}; images are H x W x 3 (RGB), H x W x 4 (RGBA) "
                         "or H x W (grey)", ARRAY_NAME)
    h, w = array.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"an empty image ({h}x{w} pixels)", ARRAY_NAME)
    check_pixels((w, h), max_pixels, ARRAY_NAME)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        array = (array[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def decode_image(data: bytes, path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (named `path` in errors) -> HxWx3 uint8 RGB, or InputError."""
    return decode_reduced(data, path, max_pixels=max_pixels).rgb


# -- reduced-size decoding -------------------------------------------------------------------------------------
# libjpeg scales a JPEG down by 1/2, 1/4 or 1/8 while decoding (its inverse DCT makes fewer pixels), which is
# cheaper than decoding in full and resizing. A pipeline whose network takes a smaller image than the photo may
# ask for it: `Reduction` says, from the photo's upright width and height, by how much (see `largest_reduction`).

REDUCTIONS = (8, 4, 2)  # the factors OpenCV exposes (IMREAD_REDUCED_COLOR_N), largest first
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

Reduction = Callable[[int, int], int]  # (width, height) of the upright photo -> 1, 2, 4 or 8
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone's JPEG with a second picture appended (Pillow's name for it)


def reduced_side(side: int, factor: int) -> int:
    """The side libjpeg's 1/factor scaling gives: rounded up (a partial 8 x 8 block still makes a pixel)."""
    return -(-side // factor)


def largest_reduction(width: int, height: int, fits: Callable[[int, int], bool]) -> int:
    """The largest of 8, 4, 2 whose reduced (width, height) still `fits` (serves the network's input); else 1."""
    for factor in REDUCTIONS:
        if fits(reduced_side(width, factor), reduced_side(height, factor)):
            return factor
    return 1


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what it was decoded from: `factor` 1 is the photo in full; else `rgb` is the photo
    reduced `factor` times per side (x in `rgb` is x * factor in the photo), and `size` is the photo's own
    upright (height, width), the size every record and output of it is in."""

    rgb: np.ndarray
    factor: int
    size: tuple[int, int]


def read_reduced(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 reduction: Reduction | None = None) -> Decoded:
    """`read_image`, decoded smaller where `reduction` allows it (JPEG only; see `decode_reduced`)."""
    return decode_reduced(_read_bytes(path), path, max_pixels=max_pixels, reduction=reduction)


def decode_reduced(data: bytes, path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   reduction: Reduction | None = None) -> Decoded:
    """Encoded image bytes (named `path` in errors) -> Decoded, or InputError. With `reduction`, a JPEG is decoded
    at the factor it returns for the photo's upright size (read from the header: the pixel limit is checked on the
    full size before any decoding); other formats, and factor 1, decode in full. EXIF orientation and the ICC
    conversion apply to the reduced pixels as to full ones (orientation after decoding, never by OpenCV)."""
    header = _header(data)
    if header is not None:
        check_pixels(header.size, max_pixels, path)
    _check_complete(data, path)
    factor = 1
    if reduction is not None and header is not None and header.format in _JPEG_FORMATS:
        w, h = header.size
        factor = reduction(*((h, w) if header.orientation in (5, 6, 7, 8) else (w, h)))
    flags = cv2.IMREAD_UNCHANGED if factor == 1 else _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if decoded is None:
        raise InputError("not an image (unrecognised format)" if header is None else "could not decode image", path)
    if header is None:
        check_pixels((decoded.shape[1], decoded.shape[0]), max_pixels, path)
    rgb = _to_rgb8(decoded)
    full_hw: tuple[int, ...] = rgb.shape[:2]  # as stored, before orientation
    if header is not None:
        if factor != 1:
            full_hw = (header.size[1], header.size[0])
        rgb = _apply_orientation(rgb, header.orientation)
        rgb = _to_srgb(rgb, header.icc_profile)
        if header.orientation in (5, 6, 7, 8):
            full_hw = full_hw[::-1]
    return Decoded(np.ascontiguousarray(rgb), factor, (int(full_hw[0]), int(full_hw[1])))


class _Header:
    """What Pillow reads from the header alone, without decoding pixels."""

    def __init__(self, size: tuple[int, int], orientation: int, icc_profile: bytes | None, fmt: str | None):
        self.size, self.orientation, self.icc_profile, self.format = size, orientation, icc_profile, fmt


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; a FIFO, socket or device is refused at once, never waited on. An http(s) URL is
    downloaded (cvtool.io.remote: bounded waits and size, checked as an image first); "-" is the image
    piped on stdin (cvtool.io.inputs read it)."""
    from cvtool.io.files import STDIN_NAME, NotRegularFileError, open_regular, stdin_image
    from cvtool.io.remote import fetch_bytes, is_url

    if isinstance(path, str) and is_url(path):
        return fetch_bytes(path, kind="image")
    if isinstance(path, str) and path == STDIN_NAME:
        data = stdin_image()
        if data is None:
            raise InputError("no image was piped on stdin", path)
        return data
    path = Path(path)
    try:
        with open_regular(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except IsADirectoryError:
        raise InputError("is a directory", path) from None
    except PermissionError:
        raise InputError("permission denied", path) from None
    except NotRegularFileError as exc:
        raise InputError(exc.reason, path) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc})", path) from None
    if not data:
        raise InputError("empty file (0 bytes)", path)
    return data


def _header(data: bytes) -> _Header | None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own limit applies, with our own message
    try:
        with Image.open(io.BytesIO(data)) as image:
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # a malformed EXIF block must not cost the user the image
                orientation = 1
            return _Header(image.size, orientation, image.info.get("icc_profile"), image.format)
    except Exception:
        return None


def check_pixels(size: tuple[int, int], max_pixels: int | None, path, *, what: str = "image is") -> None:
    """--max-pixels (None: no limit): an image from its header, a video from its frame size. InputError naming
    `path` when width x height is over it."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            f"{what} {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; raise it with --max-pixels",
            path,
        )


def _check_complete(data: bytes, path) -> None:
    """OpenCV decodes cut-off JPEGs and PNGs without complaint (grey or partial); catch them first."""
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-1024:]:
        raise InputError("truncated JPEG (no end-of-image marker)", path)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise InputError("truncated or corrupt PNG (no IEND chunk)", path)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return _composite_over_white(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _composite_over_white(bgra: np.ndarray) -> np.ndarray:
    alpha = bgra[..., 3:4].astype(np.float32) / 255.0
    rgb = cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB).astype(np.float32)
    return (rgb * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


# EXIF orientation -> the operations that bring the image upright (as Pillow's exif_transpose).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=1),
}


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    transform = _ORIENTATIONS.get(orientation)
    return rgb if transform is None else np.ascontiguousarray(transform(rgb))


def _to_srgb(rgb: np.ndarray, icc_profile: bytes | None) -> np.ndarray:
    """Convert pixels tagged with a non-sRGB profile (Display P3, Adobe RGB, ...) to sRGB; best effort."""
    if not icc_profile:
        return rgb
    try:
        from PIL import Image, ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        description = (ImageCms.getProfileDescription(source) or "").lower()
        if "srgb" in description or source.profile.xcolor_space.strip() != "RGB":
            return rgb
        converted = ImageCms.profileToProfile(Image.fromarray(rgb), source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        return np.asarray(converted)
    except Exception:  # an unreadable profile must not cost the user the image
        return rgb


def write_image(path: str | Path, rgb: np.ndarray, *, quality: int = 95) -> None:
    """Encode by the path's suffix and write atomically."""
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix in (".jpg", ".jpeg", ".jpe") else []
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    try:
        ok, encoded = cv2.imencode(suffix, image, params)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot encode image as {suffix}", path)
    atomic_write_bytes(path, encoded.tobytes())


class OneImageOut:
    """stylize's outputs, one image per input: `--out FILE` for a single input, else `OUT/NAME<suffix>`; written
    atomically, never over an input. The stylize pipelines and the thin client write through it."""

    def __init__(self, out: str | Path, single_file: bool, suffix: str):
        from cvtool.io.outputs import OutputNamer

        self.out, self.single_file = Path(out), single_file
        self.output_name = OutputNamer(out, suffix)

    def target(self, path: str) -> Path:
        return self.out if self.single_file else self.output_name(path)

    def write(self, path: str, rgb: np.ndarray) -> list[str]:
        from cvtool.io.outputs import refuse_overwriting_input

        target = self.target(path)
        refuse_overwriting_input(target, path)
        write_image(target, rgb)
        return [str(target)]

    def done(self, path: str) -> bool:
        """--skip-existing: this input's image is there, written by cvtool."""
        from cvtool.io.outputs import written_by_cvtool

        try:
            return written_by_cvtool(self.target(path))
        except InputError:  # an unusable name is not "done": writing it reports the problem
            return False
