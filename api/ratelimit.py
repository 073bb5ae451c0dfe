"""Fixed-window rate limits in Redis, one atomic round trip per request, shared by every API process.

Every rule a request falls under (its role's hourly limit, or the per-IP limit without a token,
plus the ingest burst limit) is counted by one Lua script, so several rules cost one round trip
and two API processes can never both let the last request of a window through. Refused requests
count too: hammering a closed window does not reopen it sooner.

If Redis is unreachable the API keeps serving: by default each process counts in memory
(``rate_limiting.fallback: memory``; ``open`` lets everything through), logs it once, and
``/health`` says so. Redis is retried after ``RETRY_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infra.runtime.settings import RATE, RATE_UNITS, RateLimitingSettings

log = logging.getLogger("pipeline.ratelimit")
RETRY_SECONDS = 5.0

# KEYS: a veto key (see RateLimiter.hit; "" for none), then one counter per rule; ARGV: each rule's
# window in seconds, then each rule's cost (how many requests this one counts as). Returns {-1} when
# the veto key exists (nothing counted), else count, ttl per rule.
_SCRIPT = """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1}
end
local rules = #KEYS - 1
local out = {}
for i = 1, rules do
  local key = KEYS[i + 1]
  local n = redis.call('INCRBY', key, ARGV[rules + i])
  local ttl = redis.call('TTL', key)
  if ttl < 0 then
    redis.call('EXPIRE', key, ARGV[i])
    ttl = tonumber(ARGV[i])
  end
  out[#out + 1] = n
  out[#out + 1] = ttl
end
return out
"""


@dataclass(frozen=True)
class Rule:
    limit: int
    window: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``"1000 per hour"`` (also ``1000/hour``, ``minute``, ``second``, ``day``)."""
        match = RATE.match(text.lower())
        if match is None:
            raise ValueError(f"not a rate limit: {text!r} (expected e.g. '1000 per hour')")
        return cls(int(match.group(1)), RATE_UNITS[match.group(2)])


@dataclass(frozen=True)
class Verdict:
    """The outcome for the tightest rule: what the RateLimit-* headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the window of the tightest rule ends
    vetoed: bool = False  # refused, uncounted, because the request's veto key exists (RateLimiter.hit)

    @cached_property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """``headers`` as ASGI header pairs (worked out once per verdict: with limiting off, one per rule)."""
        return [(k.encode(), v.encode()) for k, v in self.headers().items()]

    def headers(self) -> dict[str, str]:
        """RateLimit-* headers (and Retry-After when refused)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(self.reset, 1))
        return headers


class RateLimiter:
    """Counts requests per (rule, subject) in Redis, or in memory while Redis is unreachable."""

    def __init__(self, settings: RateLimitingSettings, redis: aioredis.Redis, prefix: str) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = prefix
        self.roles = {
            "admin": Rule.parse(settings.admin_limit),
            "user": Rule.parse(settings.user_limit),
            "viewer": Rule.parse(settings.viewer_limit),
        }
        self.anonymous = Rule.parse(settings.default_limit)
        self.burst = Rule.parse(settings.burst_limit)
        self._script = redis.register_script(_SCRIPT)
        self._memory: dict[str, tuple[int, float]] = {}  # key -> (count, window end)
        self._open: dict[Rule, Verdict] = {}  # limiting off: the verdict of each rule
        self._redis_down_until = 0.0

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and the fallback is in use."""
        return time.monotonic() < self._redis_down_until

    def rules_for(self, role: str | None, subject: str, burst: bool) -> list[tuple[str, Rule]]:
        """The (counter key, rule) pairs one request counts against."""
        if role is None:
            return [(f"{self.prefix}:rl:ip:{subject}", self.anonymous)]
        rules = [(f"{self.prefix}:rl:{role}:{subject}", self.roles.get(role, self.roles["viewer"]))]
        if burst:
            rules.append((f"{self.prefix}:rl:burst:{subject}", self.burst))
        return rules

    async def hit(
        self,
        role: str | None,
        subject: str,
        burst: bool = False,
        cost: int = 1,
        burst_cost: int | None = None,
        veto: str | None = None,
    ) -> Verdict:
        """Count one request of ``subject`` (a user id, or an IP when ``role`` is None).

        ``cost`` > 1 counts one request doing the work of several at once (GraphQL's costly fields,
        api.graphql.limits), all or nothing: refused unless every rule has room for all of it (and,
        like any refused request, counted even so); ``burst_cost`` is what it counts against the burst
        rule (default: ``cost``).

        ``veto``: a Redis key whose existence refuses the request without counting it (``vetoed``),
        looked up in the same round trip, also when limiting is off; e.g. a logged-out token's
        revocation (api.auth), which would otherwise cost a round trip of its own on every request.
        Not looked up while Redis is unreachable.
        """
        rules = self.rules_for(role, subject, burst)
        costs = [cost, cost if burst_cost is None else burst_cost][: len(rules)]
        return await self._verdict(rules, costs, veto)

    async def hit_rule(self, name: str, subject: str, rule: Rule) -> Verdict:
        """Count one event of ``subject`` against a rule of its own (e.g. WebSocket messages per user)."""
        return await self._verdict([(f"{self.prefix}:rl:{name}:{subject}", rule)], [1])

    async def _verdict(self, rules: list[tuple[str, Rule]], costs: list[int], veto: str | None = None) -> Verdict:
        first = rules[0][1]
        if not self.settings.enabled:
            if veto is not None and not self.degraded and await self._vetoed(veto):
                return Verdict(False, first.limit, first.limit, first.window, vetoed=True)
            return self._uncounted(first)
        counts: list[tuple[int, int]] | None = None
        if not self.degraded:
            try:
                keys = [veto or "", *(k for k, _ in rules)]
                raw = await self._script(keys=keys, args=[*(r.window for _, r in rules), *costs])
                if raw and int(raw[0]) == -1:
                    return Verdict(False, first.limit, first.limit, first.window, vetoed=True)
                counts = [(int(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]
            except (RedisError, OSError) as exc:
                self._down(exc)
        if counts is None:
            if self.settings.fallback == "open":
                return Verdict(True, rules[0][1].limit, rules[0][1].limit, rules[0][1].window)
            counts = [self._count_in_memory(key, rule, n) for (key, rule), n in zip(rules, costs, strict=True)]
        verdicts = [
            Verdict(count <= rule.limit, rule.limit, max(0, rule.limit - count), ttl)
            for (count, ttl), (_, rule) in zip(counts, rules, strict=True)
        ]
        refused = [v for v in verdicts if not v.allowed]
        if refused:
            return max(refused, key=lambda v: v.reset)
        return min(verdicts, key=lambda v: v.remaining)

    def _uncounted(self, rule: Rule) -> Verdict:
        """The verdict when limiting is off: always the same for one rule, so made once."""
        verdict = self._open.get(rule)
        if verdict is None:
            verdict = self._open[rule] = Verdict(True, rule.limit, rule.limit, rule.window)
        return verdict

    async def _vetoed(self, key: str) -> bool:
        """Limiting off: the veto alone (without Redis: no veto, as no request is counted either)."""
        try:
            return bool(await self.redis.exists(key))
        except (RedisError, OSError):
            return False

    def _down(self, exc: Exception) -> None:
        log.warning("rate limiter: Redis unreachable (%s); using the %s fallback", exc, self.settings.fallback)
        self._redis_down_until = time.monotonic() + RETRY_SECONDS

    def _count_in_memory(self, key: str, rule: Rule, cost: int) -> tuple[int, int]:
        now = time.monotonic()
        count, ends = self._memory.get(key, (0, 0.0))
        if now >= ends:
            count, ends = 0, now + rule.window
            if len(self._memory) > 100_000:  # bound memory: drop finished windows
                self._memory = {k: v for k, v in self._memory.items() if v[1] > now}
        self._memory[key] = (count + cost, ends)
        return count + cost, max(1, int(ends - now))
