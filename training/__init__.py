"""QGIS-free training code (data pipeline, missing-modality simulation, optimiser loop).

Like ``core``, nothing here may import ``qgis`` or Qt.
"""
