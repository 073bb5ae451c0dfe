"""Access tokens and the secret check, without a server."""

from __future__ import annotations

import dataclasses
import time

import jwt
import pytest

from api.tokens import InvalidToken, check_secret, decode_access_token, generation_of, issue_access_token
from infra.runtime.settings import AuthenticationSettings, ServerSettings, Settings

SECRET = "s" * 48  # HS384 (refused below) warns on a key shorter than 48 bytes


def settings(secret: str = SECRET, environment: str = "development") -> Settings:
    return dataclasses.replace(
        Settings(),
        authentication=AuthenticationSettings(secret_key=secret),
        server=ServerSettings(environment=environment),
    )


def test_production_refuses_a_missing_or_short_secret() -> None:
    for secret in ("", "short"):
        with pytest.raises(SystemExit):
            check_secret(settings(secret, "production"))
    check_secret(settings(SECRET, "production"))


def test_development_needs_a_secret_but_not_a_long_one() -> None:
    with pytest.raises(SystemExit):
        check_secret(settings(""))
    check_secret(settings("short"))


def test_issued_tokens_decode_with_their_claims() -> None:
    token, lifetime = issue_access_token(settings(), "u-1", "viewer")
    claims = decode_access_token(settings(), token)
    assert (claims["sub"], claims["role"], lifetime) == ("u-1", "viewer", 1800)
    assert claims["exp"] - claims["iat"] == 1800 and claims["jti"]
    assert claims["gen"] == 0


def test_a_token_carries_the_token_generation_it_was_issued_under() -> None:
    token, _ = issue_access_token(settings(), "u-1", "user", 3)
    assert decode_access_token(settings(), token)["gen"] == 3


def test_a_token_from_before_generations_existed_is_generation_zero() -> None:
    token = jwt.encode({"sub": "u", "iat": 1, "exp": 2**40, "jti": "j"}, SECRET, algorithm="HS256")
    assert decode_access_token(settings(), token)["gen"] == 0


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": "u", "iat": 1, "exp": 2, "jti": "j"}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"sub": "u", "iat": 1, "exp": 2**40, "jti": "j"}, SECRET, algorithm="HS384"),
        jwt.encode({"iat": 1, "exp": 2**40, "jti": "j"}, SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": "", "iat": 1, "exp": 2**40, "jti": "j"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "u", "iat": 1, "exp": 2**40, "jti": "j"}, "x" * 32, algorithm="HS256"),
        jwt.encode({"sub": "u", "iat": int(time.time()), "exp": 2**40, "jti": "j"}, None, algorithm="none"),
        jwt.encode({"sub": "u", "iat": 1, "exp": 2**40, "jti": "j", "gen": "1"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "u", "iat": 1, "exp": 2**40, "jti": "j", "gen": -1}, SECRET, algorithm="HS256"),
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        decode_access_token(settings(), token)


def test_a_remembered_token_is_still_refused_once_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token, lifetime = issue_access_token(settings(), "u-1", "user")
    first = decode_access_token(settings(), token)  # verified, then remembered
    assert decode_access_token(settings(), token) == first
    later = time.time() + lifetime + 1
    monkeypatch.setattr("api.tokens.time", type("Clock", (), {"time": staticmethod(lambda: later)}))
    with pytest.raises(InvalidToken):
        decode_access_token(settings(), token)


def test_a_token_remembered_under_one_secret_does_not_verify_under_another() -> None:
    token, _ = issue_access_token(settings(), "u-1", "user")
    decode_access_token(settings(), token)
    with pytest.raises(InvalidToken):
        decode_access_token(settings("t" * 32), token)


@pytest.mark.parametrize(
    ("token", "generation"),
    [
        ("3~family.secret", 3),
        ("family.secret", None),  # issued before families carried a generation
        ("x~family.secret", None),
        ("\u00b2~family.secret", None),  # a Unicode digit: str.isdigit says yes, int() refuses it
        ("12345678901~family.secret", None),
        ("3~family", None),  # not a token
        ("", None),
    ],
)
def test_a_refresh_tokens_generation_is_read_from_its_family_or_not_at_all(token: str, generation: int | None) -> None:
    assert generation_of(token) == generation
