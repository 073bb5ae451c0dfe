"""Login throttling: failed logins per username and per client IP, with a doubling lockout, in Redis.

Each failed login counts against the username it named (lower-cased and hashed, whether or not such
a user exists) and against the client IP, over a window that each failure renews. Past the free
failures (``authentication.login_max_failures_per_{username,ip}``) every further failure locks that
name or IP out for ``login_backoff_seconds`` doubled per extra failure, up to
``login_backoff_max_seconds``. A locked login answers 429 with Retry-After before any lookup or
password check, so it is as fast, and looks the same, for a name that exists as for one that does
not; an unlocked one always costs one argon2 verification (a dummy hash for unknown names).
A success clears the username's count (not the IP's: one good account must not reset an IP that is
guessing others). One Lua script per failure, one round trip to check the locks.
"""

from __future__ import annotations

import hashlib
import math

import redis.asyncio as aioredis

from infra.runtime.settings import AuthenticationSettings

# KEYS: username count, IP count, username lock, IP lock.
# ARGV: window (s), free failures per username, per IP, first lockout (ms), longest lockout (ms).
_FAILED = """
local free = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 2 do
  local n = redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  local over = n - free[i]
  if over > 0 then
    local ms = math.min(tonumber(ARGV[4]) * 2 ^ math.min(over - 1, 60), tonumber(ARGV[5]))
    redis.call('SET', KEYS[i + 2], 1, 'PX', math.max(1, math.floor(ms)))
  end
end
return 1
"""


class LoginThrottle:
    """Counts failed logins and answers how long a username or IP must wait (RedisError propagates)."""

    def __init__(self, settings: AuthenticationSettings, redis: aioredis.Redis, prefix: str) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = prefix
        self._failed = redis.register_script(_FAILED)

    async def wait_seconds(self, username: str, ip: str) -> int:
        """Seconds until this username and IP may try again (0: now)."""
        if not self.settings.login_throttling_enabled:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self._lock(self._name(username)))
            pipe.pttl(self._lock(self._ip(ip)))
            remaining = await pipe.execute()
        return math.ceil(max(0, *remaining) / 1000)

    async def failed(self, username: str, ip: str) -> None:
        """Count one failed login of ``username`` from ``ip``; lock either out when past its free failures."""
        if not self.settings.login_throttling_enabled:
            return
        s = self.settings
        name, address = self._name(username), self._ip(ip)
        await self._failed(
            keys=[self._count(name), self._count(address), self._lock(name), self._lock(address)],
            args=[
                s.login_failure_window_seconds,
                s.login_max_failures_per_username,
                s.login_max_failures_per_ip,
                int(s.login_backoff_seconds * 1000),
                int(s.login_backoff_max_seconds * 1000),
            ],
        )

    async def succeeded(self, username: str) -> None:
        """A correct login: the username starts afresh."""
        if not self.settings.login_throttling_enabled:
            return
        name = self._name(username)
        await self.redis.delete(self._count(name), self._lock(name))

    def _name(self, username: str) -> str:
        return "u:" + hashlib.sha256(username.lower().encode("utf-8", "surrogatepass")).hexdigest()

    def _ip(self, ip: str) -> str:
        return f"ip:{ip}"

    def _count(self, subject: str) -> str:
        return f"{self.prefix}:login:failures:{subject}"

    def _lock(self, subject: str) -> str:
        return f"{self.prefix}:login:locked:{subject}"
