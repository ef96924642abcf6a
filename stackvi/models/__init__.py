"""Ready-made models and guides, written as plain NumPyro functions.

* :mod:`stackvi.models.vae` — a variational autoencoder (the bundled default
  of ``stackvi fit`` and the model of ``benchmarks/vae.py``).
"""

from stackvi.models import vae

__all__ = ["vae"]
