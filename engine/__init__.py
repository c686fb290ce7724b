"""The engine: the headless ``mamol`` command (scene, train, evaluate, classify); QGIS-free.
See :mod:`engine.main`."""
