"""Pure: the line grammar of a pip requirements file, in one place for the admin API (which reads the text
of one) and the operator's command line (which reads files, following their ``-r`` includes).

The rules are pip's own (``pip/_internal/req/req_file.py``): a line ending in a backslash is joined to the
next, unless it is a comment; ``#`` at the start of a line or after whitespace starts a comment; a line
starting with ``-`` is an option; whatever follows a requirement from its first ``-`` word on
(``--hash=...``) are options of that requirement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_COMMENT = re.compile(r"(^|\s+)#.*$")
_INCLUDE = re.compile(r"(?:-r|--requirement)(?:\s*=\s*|\s+|(?=[^\s=]))(\S+)")
_OPTIONS = re.compile(r"\s+-")


@dataclass(frozen=True, slots=True)
class Include:
    """A ``-r FILE`` (``--requirement FILE``) line: another requirements file, relative to this one."""

    path: str


def requirement_items(text: str) -> Iterator[str | Include]:
    """The requirements of a requirements file's text, without their options, and its ``-r`` includes, in
    file order; comments and other option lines (``-c``, ``--index-url``, ``-e``) are skipped."""
    for joined in _joined_lines(text):
        line = _COMMENT.sub("", joined).strip()
        if include := _INCLUDE.fullmatch(line):
            yield Include(include.group(1))
        elif line and not line.startswith("-"):
            yield _OPTIONS.split(line, maxsplit=1)[0]


def _joined_lines(text: str) -> Iterator[str]:
    pending = ""
    for line in text.splitlines():
        if line.endswith("\\") and not _COMMENT.match(line):
            pending += line[:-1]
            continue
        # A comment ends a continued line: the space keeps it a comment once joined (as pip does).
        yield pending + (" " + line if pending and _COMMENT.match(line) else line)
        pending = ""
    if pending:
        yield pending
