"""``python -m mamol``: the engine's command line (see :mod:`training.engine`)."""
import sys

from .training.engine import main

sys.exit(main())
