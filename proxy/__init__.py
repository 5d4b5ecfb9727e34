"""wheelfarm's proxy: a caching proxy of the simple API (PEP 503/691) with an overlay of built wheels."""

__version__ = "0.1.0"
