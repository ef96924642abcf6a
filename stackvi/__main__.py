"""``python -m stackvi``: the same as the ``stackvi`` command (see :mod:`stackvi.cli`)."""

from stackvi.cli import main

raise SystemExit(main())
