"""Lung fields and zones: exact on a phantom, plausible on real radiographs."""

import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from pneumoxai.lungs import ZONE_NAMES, lung_mask, zones
from pneumoxai.errors import DataError


def phantom(size=128, seed=0):
    """Soft-tissue thorax with two dark elliptical lungs and dark air at the sides."""
    truth = np.zeros((size, size), np.uint8)
    for centre_x in (0.3, 0.7):
        cv2.ellipse(truth, (round(centre_x * size), size // 2), (round(0.12 * size), round(0.3 * size)),
                    0, 0, 360, 1, -1)
    image = np.where(truth, 0.3, 0.75)
    side = round(0.04 * size)
    image[:, :side] = image[:, -side:] = 0.02
    image = image + np.random.default_rng(seed).normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1), truth.astype(bool)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def real_images(real_data_root):
    """The first 10 NORMAL and 10 PNEUMONIA test images (224x224 grey, in [0, 1])."""
    folders = [real_data_root / "test" / cls for cls in ("NORMAL", "PNEUMONIA")]
    paths = [p for folder in folders for p in sorted(folder.glob("*.jpeg"))[:10]]
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]).astype(np.float32) / 255


def test_phantom_lungs_are_found():
    image, truth = phantom()
    masks, fallback = lung_mask(np.stack([image, image[:, ::-1]]), return_fallback=True)
    assert masks.shape == (2, 128, 128) and masks.dtype == bool
    assert not fallback.any()
    assert iou(masks[0], truth) > 0.9 and iou(masks[1], truth[:, ::-1]) > 0.9


def test_rgb_and_resolution_do_not_matter():
    image, truth = phantom(size=96)
    rgb = lung_mask(np.repeat(image[None, :, :, None], 3, axis=-1))
    assert rgb.shape == (1, 96, 96) and iou(rgb[0], truth) > 0.9


def test_blank_image_falls_back_to_the_prior_with_a_warning():
    with pytest.warns(UserWarning, match="1 of 2 images"):
        masks, fallback = lung_mask(np.stack([np.full((64, 64), 0.5), phantom(64)[0]]), return_fallback=True)
    assert fallback.tolist() == [True, False]
    assert 0.1 < masks[0].mean() < 0.6
    assert cv2.connectedComponents(masks[0].astype(np.uint8))[0] - 1 == 2


def test_real_radiographs_get_plausible_two_lung_masks(real_images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback count is asserted below
        masks, fallback = lung_mask(real_images, return_fallback=True)
    fraction = masks.mean(axis=(1, 2))
    components = np.array([cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for m in masks])
    print(f"lung fraction {np.round(fraction, 2)}; components {components}; fallback {fallback.sum()}")
    assert ((fraction > 0.10) & (fraction < 0.60)).all()
    assert (components == 2).mean() >= 0.8
    assert fallback.mean() <= 0.2
    # Lungs sit in the middle rows and away from the left/right edges.
    assert masks[:, :, :11].mean() < 0.05 and masks[:, :, -11:].mean() < 0.05
    assert masks[:, 90:130].mean() > masks[:, :20].mean()


def test_zones_partition_the_mask(real_images):
    masks = lung_mask(real_images[:6])
    z = zones(masks)
    assert z.dtype == np.int8
    np.testing.assert_array_equal(z > 0, masks)
    assert set(np.unique(z)) == set(range(len(ZONE_NAMES) + 1))


def test_zone_geometry_on_a_phantom():
    _, truth = phantom()
    z = zones(truth[None])[0]
    cols = np.arange(z.shape[1])
    rows = np.arange(z.shape[0])
    for k in range(1, 7):
        on_image_left = cols[(z == k).any(axis=0)].max() < z.shape[1] / 2
        assert on_image_left == (k <= 3), ZONE_NAMES[k - 1]  # the image's left is the patient's right
    for first in (1, 4):
        centres = [rows[(z == k).any(axis=1)].mean() for k in (first, first + 1, first + 2)]
        assert centres[0] < centres[1] < centres[2]  # upper, middle, lower
    sizes = np.bincount(z.ravel())[1:]
    assert sizes.min() > 0.15 * sizes.sum() / 6  # thirds of the height, all non-empty


def test_zones_of_an_empty_mask_are_zero():
    assert not zones(np.zeros((2, 10, 10), bool)).any()


@pytest.mark.parametrize("call, match", [
    (lambda: lung_mask(np.zeros((64, 64))), "shape"),
    (lambda: lung_mask(np.zeros((1, 64, 64, 2))), "shape"),
    (lambda: lung_mask(np.zeros((0, 64, 64))), "empty"),
    (lambda: lung_mask(np.full((1, 64, 64), np.nan)), "NaN"),
    (lambda: lung_mask(np.full((1, 64, 64), 255.0)), r"\[0, 1\]"),
    (lambda: zones(np.zeros((64, 64), bool)), "shape"),
], ids=["rank 2", "two channels", "empty", "NaN", "0-255", "zones rank"])
def test_bad_inputs(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_module_does_not_import_tensorflow():
    code = "import sys, pneumoxai.lungs; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
