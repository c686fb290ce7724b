"""Processing algorithms: thin adapters from QGIS parameters to one core call each."""
