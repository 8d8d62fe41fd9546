"""The package version, in one place (the CLI, provenance.json and pyproject read it)."""

__version__ = "0.1.0"
