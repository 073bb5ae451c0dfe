"""Fixed-window rate limits in Redis, one atomic round trip per request, shared by every API process.

Every rule a request falls under (its role's hourly limit, or the per-IP limit without a token,
plus the ingest burst limit) is counted by one Lua script, so several rules cost one round trip
and two API processes can never both let the last request of a window through. Refused requests
count too: hammering a closed window does not reopen it sooner.

The requests of one event-loop turn share that round trip (``_Batch``): each is counted by the
same script, one after the other, exactly as if it had come alone, in one call. Under load many
requests start in the same turn, and the client library's work per call (a connection from the
pool, a task for the timed write, the reply's parsing) was most of the limiter's cost: a fifth of
the API's CPU per ingest at 64 connections (py-spy). A request waits for nothing more than the
next turn of the loop.

If Redis is unreachable the API keeps serving: by default each process counts in memory
(``rate_limiting.fallback: memory``; ``open`` lets everything through), logs it once, and
``/health`` says so. Redis is retried after ``RETRY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import cached_property

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from infra.runtime.settings import RATE, RATE_UNITS, RateLimitingSettings

log = logging.getLogger("pipeline.ratelimit")
RETRY_SECONDS = 5.0

# Counts the hits of a batch (``_Batch``), each in turn as if alone. Per hit, KEYS: a veto key (see
# RateLimiter.hit; "" for none), then one counter per rule; ARGV: the number of rules n, each rule's
# window in seconds, then each rule's cost (how many requests this one counts as). Returns per hit
# -1 when its veto key exists (nothing counted), else n followed by count, ttl per rule.
_SCRIPT = """
local out = {}
local k, a = 1, 1
while a <= #ARGV do
  local rules = tonumber(ARGV[a])
  if KEYS[k] ~= '' and redis.call('EXISTS', KEYS[k]) == 1 then
    out[#out + 1] = -1
  else
    out[#out + 1] = rules
    for i = 1, rules do
      local key = KEYS[k + i]
      local n = redis.call('INCRBY', key, ARGV[a + rules + i])
      local ttl = redis.call('TTL', key)
      if ttl < 0 then
        redis.call('EXPIRE', key, ARGV[a + i])
        ttl = tonumber(ARGV[a + i])
      end
      out[#out + 1] = n
      out[#out + 1] = ttl
    end
  end
  k = k + 1 + rules
  a = a + 1 + 2 * rules
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
        self._batch = _Batch(redis.register_script(_SCRIPT))
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
        counts: Counts | None = None
        if not self.degraded:
            try:
                counts = await self._batch.count(veto or "", rules, costs)
                if counts is VETOED:
                    return Verdict(False, first.limit, first.limit, first.window, vetoed=True)
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
            return await self._batch.count(key, [], []) is VETOED
        except (RedisError, OSError):
            return False

    def _down(self, exc: Exception) -> None:
        if self.degraded:  # e.g. the other requests of a batch that failed: said once
            return
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


Counts = list[tuple[int, int]]  # (count, seconds left in the window) per rule of a hit
VETOED: Counts = []  # the answer for a hit whose veto key exists (compared by identity)


class _Batch:
    """The limiter's hits of one event-loop turn, counted by one call of the script.

    The first hit of a turn starts the task that sends them; it runs at the next turn, by which
    time every request the loop started in this one has added its hit. Each hit learns its own
    counts (or the error of the call: the limiter falls back as for a call of its own).
    """

    def __init__(self, script: AsyncScript) -> None:
        self.script = script
        self._keys: list[str] = []
        self._args: list[int] = []
        self._waiters: list[asyncio.Future[Counts]] = []
        self._running: set[asyncio.Task[None]] = set()  # a strong reference while one runs

    async def count(self, veto: str, rules: list[tuple[str, Rule]], costs: list[int]) -> Counts:
        """Count one hit against ``rules`` (``costs``: one per rule); VETOED if ``veto`` exists."""
        future: asyncio.Future[Counts] = asyncio.get_running_loop().create_future()
        if not self._waiters:
            task = asyncio.create_task(self._send())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._keys.append(veto)
        self._keys.extend(key for key, _ in rules)
        self._args.append(len(rules))
        self._args.extend(rule.window for _, rule in rules)
        self._args.extend(costs)
        self._waiters.append(future)
        return await future

    async def _send(self) -> None:
        keys, args, waiters = self._keys, self._args, self._waiters
        self._keys, self._args, self._waiters = [], [], []
        try:
            raw = await self.script(keys=keys, args=args)
        except BaseException as exc:
            for future in waiters:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        at = 0
        for future in waiters:
            rules = int(raw[at])
            if rules < 0:
                counts, at = VETOED, at + 1
            else:
                counts = [(int(raw[at + 1 + 2 * i]), int(raw[at + 2 + 2 * i])) for i in range(rules)]
                at += 1 + 2 * rules
            if not future.done():
                future.set_result(counts)
