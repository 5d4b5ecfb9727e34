"""The cause a failed build names in its 422 and record: the meaningful end of the step's output (pure)."""

from __future__ import annotations

import pytest

from builder.runner import failure_cause

TRACEBACK = """\
Traceback (most recent call last):
  File "/wheelfarm/lib/pyproject_hooks/_in_process/_in_process.py", line 389, in <module>
    main()
  File "/build/src/x-1.0/backend.py", line 9, in build_wheel
    raise RuntimeError("no compiler for you")
RuntimeError: no compiler for you
"""
COMPILER = """\
building 'fast' extension
gcc -pthread -fPIC -I/env/include -c fast.c -o build/fast.o
fast.c:3:10: fatal error: zlib.h: No such file or directory
    3 | #include <zlib.h>
      |          ^~~~~~~~
compilation terminated.
error: command '/usr/bin/gcc' failed with exit code 1
"""
SUBPROCESS = """\
meson.build:12:0: ERROR: Dependency "openblas" not found, tried pkgconfig
Traceback (most recent call last):
subprocess.CalledProcessError: Command '['meson', 'setup']' returned non-zero exit status 1.
"""


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        (TRACEBACK, "RuntimeError: no compiler for you"),
        (COMPILER, "error: command '/usr/bin/gcc' failed with exit code 1"),
        (
            SUBPROCESS,
            'meson.build:12:0: ERROR: Dependency "openblas" not found, tried pkgconfig | '
            "subprocess.CalledProcessError: Command '['meson', 'setup']' returned non-zero exit status 1.",
        ),
        ("some output\nthe last line\n", "the last line"),
        ("", ""),
    ],
)
def test_the_cause_is_the_last_meaningful_line(output: str, cause: str) -> None:
    assert failure_cause(output) == cause
