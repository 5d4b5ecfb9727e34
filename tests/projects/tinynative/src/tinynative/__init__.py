from tinynative._speed import add

__all__ = ["add"]
