"""read_image / write_image on the files users actually have."""

import io

import numpy as np
import pytest
from badinputs import make_bad_corpus
from iccprofile import DISPLAY_P3_LIKE
from PIL import Image, ImageCms, ImageOps

from cvtool.errors import InputError
from cvtool.io.image import read_image, write_image


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_colour_order_is_rgb(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    out = read_image(_save(tmp_path / "red.png", red))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3) and out.flags.c_contiguous
    assert out[0, 0].tolist() == [255, 0, 0]


def test_grey_16bit_palette_and_alpha(tmp_path):
    grey16 = np.array([[0, 65535], [32768, 257]], np.uint16)
    assert read_image(_save(tmp_path / "g16.png", grey16))[..., 0].tolist() == [[0, 255], [128, 1]]

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: white paper shows
    rgba[0, 1] = (10, 20, 30, 255)  # opaque: the colour itself
    out = read_image(_save(tmp_path / "rgba.png", rgba))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[0].tolist() == [[255, 0, 0], [0, 0, 255]]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    blocky = np.kron(rng.integers(0, 255, (4, 6, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "phone.jpg", blocky, exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    ours = read_image(path)
    assert ours.shape == expected.shape
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2


def test_non_srgb_icc_profile_is_converted_and_srgb_left_alone(tmp_path):
    array = np.full((4, 4, 3), (200, 80, 40), np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(array).save(tmp_path / "srgb.png", icc_profile=srgb)
    assert read_image(tmp_path / "srgb.png")[0, 0].tolist() == [200, 80, 40]

    Image.fromarray(array).save(tmp_path / "wide.png", icc_profile=DISPLAY_P3_LIKE)
    expected = ImageCms.profileToProfile(
        Image.fromarray(array), ImageCms.ImageCmsProfile(io.BytesIO(DISPLAY_P3_LIKE)), ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    converted = read_image(tmp_path / "wide.png")[0, 0].tolist()
    assert converted == np.asarray(expected)[0, 0].tolist()
    assert converted[0] > 200 and converted[2] < 40  # P3 colours are more saturated in sRGB terms


def test_pixel_limit_is_checked_from_the_header_and_can_be_raised(tmp_path):
    path = _save(tmp_path / "big.png", np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(InputError, match=r"400x300 = 120,000 pixels, over the limit of 100,000; raise it with "
                                         r"--max-pixels$"):
        read_image(path, max_pixels=100_000)
    assert read_image(path, max_pixels=120_000).shape == (300, 400, 3)


def test_bad_corpus_each_file_gets_its_reason(tmp_path):
    for name, reason in make_bad_corpus(tmp_path).items():
        path = tmp_path / name
        if reason == "":
            assert read_image(path).ndim == 3, name
            continue
        with pytest.raises(InputError) as info:
            read_image(path)
        assert reason in info.value.reason, (name, info.value.reason)
        assert info.value.path == str(path) and "\n" not in str(info.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)


def test_unicode_path_round_trip(tmp_path):
    image = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    path = tmp_path / "фото 写真.png"
    write_image(path, image)
    assert np.array_equal(read_image(path), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["фото 写真.png"]  # no temp files left


def test_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="cannot encode image as .nope"):
        write_image(tmp_path / "x.nope", np.zeros((2, 2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_size_is_read_images_shape_from_the_header(tmp_path, orientation):
    """image_size (YOLO labels' fractions) without decoding: the shape read_image gives, EXIF turns included."""
    from cvtool.io.image import image_size

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (60, 40)).save(path, exif=exif.tobytes())
    assert image_size(path) == read_image(path).shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))
