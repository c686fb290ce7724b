"""QGIS-free training code (data pipeline, missing-modality simulation, optimiser loop)
and evaluation of a trained model, which reuses the same pipeline.

Like ``core``, nothing here may import ``qgis`` or Qt.
"""
