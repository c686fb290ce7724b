"""The engine: the headless ``mamol`` command (scene, train, evaluate, classify, doctor); QGIS-free.
See :mod:`engine.main`."""
