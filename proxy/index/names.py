"""Project names: validation and PEP 503 normalisation, done once at the edge."""

from __future__ import annotations

import functools
import re
from typing import NewType

NormalizedName = NewType("NormalizedName", str)

# PEP 508 / core metadata: a name starts and ends with a letter or digit; inside, also "-", "_" and ".".
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
_SEPARATORS = re.compile(r"[-_.]+")
MAX_NAME_LENGTH = 200


class InvalidProjectName(ValueError):
    """A project name that PEP 508 does not allow (so no index can have it)."""

    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(f"invalid project name {shown!r}: PEP 508 names use letters, digits, '-', '_', '.'")
        self.name = name


@functools.lru_cache(maxsize=4096)  # every request normalises its project name; few names are hot
def normalize(name: str) -> NormalizedName:
    """PEP 503: lower case, runs of -_. become one '-'. Raises InvalidProjectName for impossible names."""
    if len(name) > MAX_NAME_LENGTH or not _VALID_NAME.match(name):
        raise InvalidProjectName(name)
    return NormalizedName(_SEPARATORS.sub("-", name).lower())
