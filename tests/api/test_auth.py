"""The bearer token check itself."""

from __future__ import annotations

import secrets

import pytest

from app.deps import check_token
from app.errors import Forbidden, Unauthorized
from bnlenet.settings import Settings


def test_auth_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.deps.secrets.compare_digest", spy)
    settings = Settings(API_TOKEN="s3cret")
    check_token(settings, "Bearer s3cret")
    with pytest.raises(Forbidden):
        check_token(settings, "Bearer s3cres")
    assert calls == [(b"s3cret", b"s3cret"), (b"s3cres", b"s3cret")]


def test_auth_missing_or_malformed_header_is_unauthorized() -> None:
    settings = Settings(API_TOKEN="s3cret")
    for header in (None, "", "Basic s3cret", "Bearer"):
        with pytest.raises(Unauthorized):
            check_token(settings, header)


@pytest.mark.parametrize("token", [None, ""])
def test_auth_no_token_configured_lets_everyone_in(token: str | None) -> None:
    settings = Settings(API_TOKEN=token)
    for header in (None, "", "Bearer", "Bearer anything", "Basic s3cret"):
        assert check_token(settings, header) is None, header  # no Unauthorized, no Forbidden
