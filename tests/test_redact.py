"""Credentials are never shown, in any spelling libpq or a URL gives them."""

from __future__ import annotations

import pytest

from proxy.redact import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:secret@mirror.example/simple/", "https://***@mirror.example/simple/"),
        ("postgresql://wheelfarm:secret@db/wheelfarm", "postgresql://***@db/wheelfarm"),
        ("host=db password=secret user=wheelfarm", "host=db password=*** user=wheelfarm"),
        ("host=db password='se cret' user=x", "host=db password=*** user=x"),
        (
            "postgresql://db/wheelfarm?sslmode=require&password=secret",
            "postgresql://db/wheelfarm?sslmode=require&password=***",
        ),
        ('invalid percent-encoded token: "p%zzsecret"', 'invalid percent-encoded token: "***"'),
        ("nothing to hide here", "nothing to hide here"),
    ],
)
def test_every_spelling_of_a_password_is_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "secret" not in redact(text)
