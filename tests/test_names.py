from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.index.names import InvalidProjectName, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("six", "six"),
        ("Django", "django"),
        ("zope.interface", "zope-interface"),
        ("Foo__Bar--baz..Q", "foo-bar-baz-q"),
        ("a", "a"),
    ],
)
def test_pep503_normalisation(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "-six", "six-", "..", "../etc", "a/b", "six ", "six\n", "ünïcode", "x" * 201]
)
def test_impossible_names_are_rejected_with_the_name_in_the_message(raw: str) -> None:
    with pytest.raises(InvalidProjectName) as caught:
        normalize(raw)
    assert "invalid project name" in str(caught.value)


@given(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?", fullmatch=True))
def test_normalising_is_idempotent(raw: str) -> None:
    once = normalize(raw)
    assert normalize(once) == once
