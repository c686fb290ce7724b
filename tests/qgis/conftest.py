"""This tier goes through QGIS: one headless QGIS for the session (tests/qgis_session.py),
booted before this tier's test modules are imported, and its fixtures."""
from qgis_session import mamol_provider, qgis_env, qgis_iface, qgis_processing  # noqa: F401
