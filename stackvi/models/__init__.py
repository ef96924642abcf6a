"""Ready-made models and guides, written as plain NumPyro functions.

* :mod:`stackvi.models.air` — Attend-Infer-Repeat on multi-MNIST, with every
  estimator of the PLDI 2024 paper's AIR experiment (``air.ESTIMATORS``).
* :mod:`stackvi.models.vae` — a variational autoencoder (the bundled default
  of ``stackvi fit`` and the model of ``benchmarks/vae.py``).
* :mod:`stackvi.models.cone` — the noisy cone (DESIGN.md §7), its mean-field
  and hierarchical (ring) guides and a reverse model for ``marginal``.
* :mod:`stackvi.models.mixtures` — discrete-latent mixtures (Bernoulli images,
  1-D Gaussian) for ``benchmarks/discrete.py`` and the gradient-estimator tutorial.
* :mod:`stackvi.models.state_space` — the linear-Gaussian state-space model of
  DESIGN.md §7 with its Kalman filter, and a discrete HMM with its forward
  algorithm (exact references for SMC).
"""

from stackvi.models import air, cone, mixtures, state_space, vae

__all__ = ["air", "cone", "mixtures", "state_space", "vae"]
