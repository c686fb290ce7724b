"""``python -m mamol``: the engine's command line (see :mod:`training.engine`), the same as
the ``mamol`` command of a pip-installed engine (:mod:`training.console`)."""
import sys

from .training.console import main

sys.exit(main())
