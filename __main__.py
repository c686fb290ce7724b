"""``python -m mamol``: the engine's command line (see :mod:`engine.main`), the same as
the ``mamol`` command of a pip-installed engine (:mod:`engine.console`)."""
import sys

from .engine.console import main

sys.exit(main())
