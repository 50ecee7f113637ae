"""cvtool: a command-line computer-vision toolkit."""

__version__ = "0.1.0"
