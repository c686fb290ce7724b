"""Puts the folder holding the plugin as the package ``mamol`` on ``sys.path``, for the
bench scripts: QGIS_PLUGINPATH's first entry when it is set (the Makefile's QGIS_ENV, also
inside .ci/debian13's root), otherwise ``.build/plugins`` beside this folder (made by
``make setup`` and by bench/gpu_machine.sh)."""
import os
import sys
from pathlib import Path

PLUGINS = Path(os.environ.get("QGIS_PLUGINPATH", "").split(os.pathsep)[0]
               or Path(__file__).resolve().parents[1] / ".build" / "plugins")
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))
