"""Session fixtures (filled in by the area that owns them)."""
