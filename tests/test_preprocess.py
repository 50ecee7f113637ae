import numpy as np
import pytest
import torch

from cvtool.ops.preprocess import Preprocess

skimage_data = pytest.importorskip("skimage.data")


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "efficientnet_b3"])
@pytest.mark.parametrize("image", ["chelsea", "astronaut"])
def test_matches_torchvision_transform_of_the_weights(name, image):
    """Our OpenCV preprocessing must feed the network what torchvision's own transform would."""
    from torchvision.models import get_model_weights

    from cvtool.models.registry import get_entry

    rgb = getattr(skimage_data, image)()
    ours = get_entry(name).preprocess()(rgb)
    reference = get_model_weights(name).DEFAULT.transforms()(torch.from_numpy(rgb).permute(2, 0, 1)).numpy()
    assert ours.shape == reference.shape and ours.dtype == np.float32
    # resampling filters differ slightly (OpenCV area vs torchvision antialiased bilinear): ~1/255 on average
    assert np.abs(ours - reference).mean() < 0.04


def test_shorter_side_resize_then_centre_crop_keeps_the_centre():
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, 140:160] = 255  # a white bar in the middle of a wide image
    prep = Preprocess(crop_size=50, resize_size=50, mean=(0, 0, 0), std=(1, 1, 1))
    out = prep(rgb)
    assert out.shape == (3, 50, 50)
    column_means = out[0].mean(axis=0)
    assert column_means[23:27].min() > 0.9 and column_means[:15].max() < 0.05


def test_grayscale_exact_resize_and_normalisation_values():
    prep = Preprocess(crop_size=32, resize_size=32, mean=(0.5,), std=(0.5,), grayscale=True, resize_mode="exact")
    white = np.full((8, 20, 3), 255, np.uint8)
    out = prep(white)
    assert out.shape == (1, 32, 32)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(prep(np.zeros((8, 8, 3), np.uint8)), -1.0, atol=1e-6)


def test_small_images_are_padded_not_crashed():
    prep = Preprocess(crop_size=10, resize_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    assert prep(np.full((4, 4, 3), 255, np.uint8)).shape == (3, 10, 10)


def test_round_trips_through_a_dict():
    prep = Preprocess(crop_size=299, resize_size=342, interpolation="bicubic")
    assert Preprocess.from_dict(prep.to_dict()) == prep
    assert Preprocess.from_dict({**prep.to_dict(), "future_field": 1}) == prep


def test_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(crop_size=1, resize_size=1, interpolation="lanczos9")
