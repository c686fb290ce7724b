"""QGIS-free numeric core of MaMOL for QGIS.

Nothing in this package may import ``qgis`` or Qt (``tests/qgis/test_boundaries.py`` checks
it): the same code runs inside QGIS, from the command line and in plain Python.
"""
