"""A tiny pure-Python test project."""

__version__ = "0.0.0"


def hello() -> str:
    return f"tinypure {__version__}"
