"""Access tokens (JWT, HS256 only) and refresh tokens (opaque, rotated, stored hashed in Redis).

A refresh token is ``<family>.<secret>``. Redis keeps, per token, ``sha256(token) -> user id`` and,
per family (one login), the hash of the one token of it that is still current. Using a token
rotates it (the old one stays known but is no longer current); presenting a token that is known
but not current means it was copied and replayed, so the whole family is revoked. Rotation is one
Lua script: two concurrent uses of one token cannot both win.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import redis.asyncio as aioredis

from infra.runtime.settings import Settings

ALGORITHM = "HS256"  # the only one accepted: never taken from the token header
MIN_SECRET_BYTES = 32

# KEYS[1] old token, KEYS[2] family, KEYS[3] new token; ARGV: old hash, new hash, ttl.
# Returns {1, user} rotated, {0} unknown token, {-1, user} replay (family revoked).
_ROTATE = """
local user = redis.call('GET', KEYS[1])
if not user then return {0} end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  return {-1, user}
end
redis.call('SET', KEYS[3], user, 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return {1, user}
"""


class InvalidToken(Exception):
    """Any token that must not be honoured; the message says why (for logs, never for clients)."""


def check_secret(settings: Settings) -> None:
    """Refuse to start in production with a missing or short secret; in development, need one at all."""
    key = settings.authentication.secret_key.encode()
    if settings.authentication.algorithm.upper() != ALGORITHM:
        raise SystemExit(f"authentication.algorithm must be {ALGORITHM}")
    if settings.server.environment == "production" and len(key) < MIN_SECRET_BYTES:
        raise SystemExit(f"SECRET_KEY must be set and at least {MIN_SECRET_BYTES} bytes in production")
    if not key:
        raise SystemExit("SECRET_KEY is not set (`pipeline run` generates one; or set SECRET_KEY)")


def issue_access_token(settings: Settings, user_id: str, role: str, generation: int = 0) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds.

    ``gen`` is the user's token generation (users read model) when issued: a later password change
    raises it, and the token is refused from then on (api/auth.py).
    """
    lifetime = settings.authentication.access_token_expire_minutes * 60
    now = int(time.time())
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
    claims["gen"] = generation
    return jwt.encode(claims, settings.authentication.secret_key, algorithm=ALGORITHM), lifetime


def decode_access_token(settings: Settings, token: str) -> dict[str, Any]:
    """The claims of a valid token; InvalidToken for a bad signature, other alg, expiry, missing claims.

    A token that verified once is remembered (bounded, per secret): checking its HMAC and parsing it
    again on every request of a client was a tenth of a cheap read's CPU. A remembered token is
    still refused once it expires; what can end it earlier (logout, a password change, disabling
    its user) is checked by the caller on every request, as before.
    """
    key = (settings.authentication.secret_key, token)
    claims = _verified.get(key)
    if claims is None:
        claims = _verify(settings, token)
        if len(_verified) >= VERIFIED_TOKENS_KEPT:
            _verified.clear()  # a burst of new tokens: start over rather than track recency on every hit
        _verified[key] = claims
    if claims["exp"] <= time.time():
        _verified.pop(key, None)
        raise InvalidToken("Signature has expired")
    return dict(claims)


VERIFIED_TOKENS_KEPT = 10_000
_verified: dict[tuple[str, str], dict[str, Any]] = {}


def _verify(settings: Settings, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.authentication.secret_key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidToken("sub must be a non-empty string")
    generation = claims.setdefault("gen", 0)  # tokens issued before generations existed are generation 0
    if type(generation) is not int or generation < 0:
        raise InvalidToken("gen must be a non-negative integer")
    if not isinstance(claims["exp"], int | float):
        raise InvalidToken("exp must be a number")
    return claims


@dataclass(frozen=True)
class RefreshResult:
    status: str  # "rotated", "unknown", "reused"
    user_id: str | None = None
    token: str | None = None


class RefreshTokens:
    """Issue, rotate and revoke refresh tokens in Redis (RedisError propagates: the caller answers 503)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, lifetime_days: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = lifetime_days * 86400
        self._rotate = redis.register_script(_ROTATE)

    async def issue(self, user_id: str, generation: int) -> str:
        """A new token of a new family for ``user_id``, whose token generation (users read model) is
        ``generation``: the family carries it, so a later generation (a password change, a disable)
        refuses it (``generation_of``)."""
        family = f"{generation}{GENERATION_MARK}{secrets.token_urlsafe(12)}"
        token = f"{family}.{secrets.token_urlsafe(32)}"
        digest = _digest(token)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._token_key(digest), user_id, ex=self.ttl)
            pipe.set(self._family_key(family), digest, ex=self.ttl)
            pipe.sadd(self._user_key(user_id), family)  # so a password change can end every session
            pipe.expire(self._user_key(user_id), self.ttl)
            await pipe.execute()
        return token

    async def rotate(self, token: str) -> RefreshResult:
        """Exchange a current token for a new one of the same family."""
        family = _family_of(token)
        if family is None:
            return RefreshResult("unknown")
        new = f"{family}.{secrets.token_urlsafe(32)}"
        old_digest, new_digest = _digest(token), _digest(new)
        result = await self._rotate(
            keys=[self._token_key(old_digest), self._family_key(family), self._token_key(new_digest)],
            args=[old_digest, new_digest, self.ttl],
        )
        if int(result[0]) == 0:
            return RefreshResult("unknown")
        user_id = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        if int(result[0]) < 0:
            return RefreshResult("reused", user_id)
        return RefreshResult("rotated", user_id, new)

    async def revoke(self, token: str) -> None:
        """Revoke the family of ``token`` (logout): none of its tokens works any more."""
        family = _family_of(token)
        if family is not None:
            await self.redis.delete(self._family_key(family))

    async def revoke_user(self, user_id: str) -> None:
        """Revoke every refresh token of ``user_id`` (after a password change)."""
        families = await self.redis.smembers(self._user_key(user_id))
        keys = [self._family_key(f.decode() if isinstance(f, bytes) else str(f)) for f in families]
        await self.redis.delete(*keys, self._user_key(user_id))

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}:rtu:{user_id}"

    def _token_key(self, digest: str) -> str:
        return f"{self.prefix}:rt:{digest}"

    def _family_key(self, family: str) -> str:
        return f"{self.prefix}:rtf:{family}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


GENERATION_MARK = "~"  # not in token_urlsafe's alphabet


def generation_of(token: str) -> int | None:
    """The token generation a refresh token was issued at; None for a token from before families carried it."""
    family = _family_of(token) or ""
    generation, mark, _ = family.partition(GENERATION_MARK)
    return int(generation) if mark and generation.isascii() and generation.isdigit() and len(generation) < 10 else None


def _family_of(token: str) -> str | None:
    family, dot, rest = token.partition(".")
    if not dot or not family or not rest or len(token) > 200:
        return None
    return family
