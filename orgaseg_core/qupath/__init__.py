"""The QuPath format: reading QuPath's GeoJSON exports and writing GeoJSON that QuPath imports.

Imports only :mod:`orgaseg_core.common`.
"""
