"""Plugins that fail in every way a plugin can fail to load (see pyproject.toml)."""
