"""A tiny test project that depends on tinypure."""

import tinypure

__version__ = "0.0.0"


def hello() -> str:
    return f"tinydep {__version__} with {tinypure.hello()}"
