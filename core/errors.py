"""Exceptions shared by the QGIS-free core.

Algorithms translate these into ``QgsProcessingException``; the CLI prints them. Every
message says what is wrong *and* what the user should change.
"""


class MamolInputError(ValueError):
    """Invalid user input: a parameter, a file or a layer the user can fix."""


class Cancelled(RuntimeError):
    """The user cancelled a long operation; nothing was written."""
