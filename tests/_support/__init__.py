"""Helpers shared by the test folders (no tests in here): imported as ``tests._support.<module>``."""
