"""cvtool's version, in a module of its own so that any layer (models/ among them) can read it without
importing the package's top (cvtool/__init__.py, which re-exports it)."""

__version__ = "0.1.0"
