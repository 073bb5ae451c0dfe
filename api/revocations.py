"""Access tokens revoked by logout, known in every API process without a Redis round trip per request.

A logout stores the revocation in Redis (a key that lives until the token would have expired anyway)
and announces it on a channel in the same round trip. Each API process subscribes to the channel,
then loads the revocations that already exist, and from then on answers "is this token revoked?" from
memory. Until its subscription is up, and again from the moment it drops or reconnects (announcements
may have been missed) until the existing revocations are loaded again, it answers "unknown" and the
caller asks Redis, as every request did before (api/auth.py: in the rate limiter's round trip).

The process that served a logout knows at once; another process knows when the announcement reaches
it, which Redis sends while it runs the PUBLISH, before the logout is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from commands.tasks import cancel_and_wait

log = logging.getLogger("pipeline.auth")
RETRY_SECONDS = 2.0
PING_SECONDS = 30.0  # a silent subscription is pinged, so a connection that died unnoticed is found out
MAX_KNOWN = 1_000_000  # more live revocations than this: stop knowing them here, ask Redis per request
SCAN_BATCH = 1000
PRUNE_FLOOR = 1024


class RevokedTokens:
    """The logout revocations of access tokens (by ``jti``), mirrored from Redis into this process."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.channel = f"{prefix}:revoked"
        self._expiry: dict[str, float] = {}  # jti -> when its token expires (epoch seconds)
        self._prune_at = PRUNE_FLOOR
        self._synced = False
        self._task: asyncio.Task[None] | None = None

    def key(self, jti: str) -> str:
        """The Redis key that exists while the access token ``jti`` is revoked."""
        return f"{self.prefix}:revoked:{jti}"

    def known(self, jti: str) -> bool | None:
        """Is ``jti`` revoked? None when this process cannot tell (ask Redis: ``key``)."""
        if not self._synced:
            return None
        expires = self._expiry.get(jti)
        if expires is None:
            return False
        if expires <= time.time():
            del self._expiry[jti]
            return False
        return True

    async def revoked(self, jti: str) -> bool:
        """Is ``jti`` revoked? From memory when known, else from Redis (without Redis: no, as before)."""
        known = self.known(jti)
        if known is not None:
            return known
        try:
            return bool(await self.redis.exists(self.key(jti)))
        except (RedisError, OSError):
            return False

    async def revoke(self, jti: str, expires_at: int) -> None:
        """Deny one access token until it expires anyway (logout); RedisError propagates (the caller: 503)."""
        ttl = expires_at - int(time.time())
        if ttl <= 0:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(jti), expires_at, ex=ttl)
            pipe.publish(self.channel, f"{jti} {expires_at}")
            await pipe.execute()
        self._remember(jti, expires_at)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _remember(self, jti: str, expires_at: float) -> None:
        self._expiry[jti] = expires_at
        if len(self._expiry) > self._prune_at:  # drop expired ones, amortised: when the map has doubled
            now = time.time()
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            self._prune_at = max(PRUNE_FLOOR, 2 * len(self._expiry))

    async def _follow_forever(self) -> None:
        while True:
            try:
                await self._follow()
            except (RedisError, OSError, _TooMany) as exc:
                log.warning("logout revocations: per-request Redis lookups until resubscribed (%s)", exc)
            except Exception:  # never leave the mirror stopped for good: it only ever answers "unknown"
                log.exception("logout revocations: the subscription failed; per-request Redis lookups meanwhile")
            finally:
                self._synced = False
            await asyncio.sleep(RETRY_SECONDS)

    async def _follow(self) -> None:
        pubsub = _Subscription(self, self.redis.connection_pool)
        try:
            await pubsub.subscribe(self.channel)
            last_heard = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    last_heard = time.monotonic()
                    if message["type"] == "subscribe":  # (re)subscribed: catch up on what exists
                        await self._load()
                    elif message["type"] == "message":
                        self._heard(message["data"])
                        if len(self._expiry) > MAX_KNOWN:
                            raise _TooMany(f"more than {MAX_KNOWN} revoked access tokens")
                elif time.monotonic() - last_heard > PING_SECONDS:
                    await pubsub.ping()  # answered on this connection as a "pong" message
                    last_heard = time.monotonic()
        finally:
            await pubsub.aclose()

    async def _load(self) -> None:
        """Every revocation in Redis now (the subscription is already up: none falls in between)."""
        loaded: dict[str, float] = {}
        now = time.time()
        async for batch in _batches(self.redis.scan_iter(match=self.key("*"), count=SCAN_BATCH)):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.pttl(key)
                ttls = await pipe.execute()
            for key, ttl in zip(batch, ttls, strict=True):
                if ttl > 0:
                    loaded[_text(key).rsplit(":", 1)[1]] = now + ttl / 1000
            if len(loaded) > MAX_KNOWN:
                raise _TooMany(f"more than {MAX_KNOWN} revoked access tokens")
        self._expiry = loaded
        self._prune_at = max(PRUNE_FLOOR, 2 * len(loaded))
        self._synced = True

    def _heard(self, data: Any) -> None:
        jti, _, expires = _text(data).partition(" ")
        try:
            self._remember(jti, float(expires))
        except ValueError:
            log.warning("ignoring a malformed revocation announcement %r", data)


class _Subscription(PubSub):
    """A PubSub that marks the mirror unknown whenever its connection (re)connects: redis-py reconnects
    and resubscribes by itself, and announcements made meanwhile are lost; the resubscription's
    confirmation then triggers a reload."""

    def __init__(self, owner: RevokedTokens, pool: Any) -> None:
        super().__init__(pool)
        self.owner = owner

    async def on_connect(self, connection: Any) -> None:
        self.owner._synced = False
        await super().on_connect(connection)


class _TooMany(Exception):
    pass


async def _batches(keys: Any) -> Any:
    batch: list[Any] = []
    async for key in keys:
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
