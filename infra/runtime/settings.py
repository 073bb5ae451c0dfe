"""Typed settings: defaults, then the YAML file, then environment variables.

The YAML file has the shape of the spec's ``api_gateway.yaml`` (sections ``server``, ``cors``,
``authentication``, ``rate_limiting``, ``websocket``, ``monitoring``) plus the sections this
system needs (``graphql``, ``database``, ``kafka``, ``redis``, ``storage``, ``search``,
``consistency``, ``execution``, ``supervision``). Values may use ``${VAR}`` or ``${VAR:-default}`` to
read the environment.

Every setting can also be given as an environment variable named ``PIPELINE_<SECTION>_<KEY>``
(for example ``PIPELINE_KAFKA_PARTITIONS``); a few have the short names users expect
(``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``SECRET_KEY``, ``PIPELINE_HOST``,
``PIPELINE_PORT``, ``PIPELINE_DATA_DIR``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# The rate limits' format, "1000 per hour" (also "1000/hour"; second, minute, hour or day): api.ratelimit.Rule.
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE = re.compile(r"^\s*(\d+)\s*(?:per|/)\s*(second|minute|hour|day)s?\s*$")
RATE_LIMIT_FALLBACKS = ("memory", "open")
GRAPHQL_IDES = ("graphiql", "apollo-sandbox")  # api/docs.py


def _check_rates(section: str, rates: dict[str, str]) -> None:
    for key, text in rates.items():
        if RATE.match(text.lower()) is None:
            raise SettingsError(f"setting {section}.{key} must be a rate such as '1000 per hour', not {text!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"setting {name} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # The spec's server.reload: uvicorn restarts the API when a source file changes (development only;
    # one process, so server.workers is ignored while it is on).
    reload: bool = False
    environment: str = "development"  # "production" refuses unsafe defaults
    # Slow clients (infra/runtime/http_protocol.py, api/body_timeout.py): idle time between requests on a
    # kept-alive connection, time to send a request's headers, and the longest wait for each read
    # of a request body. Each ends the request with 408 (or closes an idle connection).
    keep_alive_timeout_seconds: int = 5
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class CorsSettings:
    origins: tuple[str, ...] = ("http://localhost:3000", "https://app.example.com")  # the spec's api_gateway.yaml
    credentials: bool = True
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    headers: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class AuthenticationSettings:
    secret_key: str = ""
    algorithm: str = "HS256"
    access_token_expire_minutes: int = 30
    refresh_token_expire_days: int = 7
    # Login throttling (api/login_throttle.py): failed logins are counted per username and per client
    # IP over a window; past the free failures each further one locks that name (or IP) out for a
    # delay that doubles, from login_backoff_seconds up to login_backoff_max_seconds.
    login_throttling_enabled: bool = True
    login_max_failures_per_username: int = 5
    login_max_failures_per_ip: int = 50
    login_failure_window_seconds: int = 900
    login_backoff_seconds: float = 1.0
    login_backoff_max_seconds: float = 900.0
    # The argon2id cost of new password hashes (infra/adapters/credentials.py); argon2-cffi's defaults,
    # RFC 9106's low-memory profile. A hash keeps the cost it was made with, so a change applies to
    # passwords set from then on. Tune to the hardware: each login costs one such hash of CPU.
    password_hash_time_cost: int = 3
    password_hash_memory_kib: int = 65536
    password_hash_parallelism: int = 4

    def __post_init__(self) -> None:
        if self.password_hash_time_cost < 1 or self.password_hash_parallelism < 1:
            raise SettingsError("authentication.password_hash_time_cost and _parallelism must be 1 or more")
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise SettingsError("authentication.password_hash_memory_kib must be at least 8 x the parallelism")


@dataclass(frozen=True)
class RateLimitingSettings:
    enabled: bool = True
    default_limit: str = "1000 per hour"  # per client IP, for requests without a token
    burst_limit: str = "100 per minute"  # ingest, per user, on top of the role's limit
    admin_limit: str = "10000 per hour"
    user_limit: str = "1000 per hour"
    viewer_limit: str = "100 per hour"
    # When Redis is unreachable: "memory" limits per API process, "open" lets requests through.
    fallback: str = "memory"
    redis_url: str = ""

    def __post_init__(self) -> None:
        limits = ("default_limit", "burst_limit", "admin_limit", "user_limit", "viewer_limit")
        _check_rates("rate_limiting", {key: getattr(self, key) for key in limits})
        _check_choice("rate_limiting.fallback", self.fallback, RATE_LIMIT_FALLBACKS)


@dataclass(frozen=True)
class AdminSettings:
    """The admin created on first start when no admin exists (PIPELINE_ADMIN_USERNAME/PASSWORD)."""

    username: str = "admin"
    password: str = ""  # empty: a random one is generated and printed once


@dataclass(frozen=True)
class WebsocketSettings:
    ping_interval: int = 30  # seconds between protocol pings; a peer silent for ping_timeout after one is closed
    ping_timeout: int = 10
    max_connections: int = 1000
    max_message_size: int = 1_048_576
    max_connections_per_user: int = 20  # per API process, /ws and GraphQL WebSockets together
    message_limit: str = "600 per minute"  # /ws messages per user (the Redis rate limiter, all processes)

    def __post_init__(self) -> None:
        _check_rates("websocket", {"message_limit": self.message_limit})


@dataclass(frozen=True)
class EventStreamSettings:
    """Event streams from a position (GraphQL ``events``, the ``events`` /ws topic, SSE): api/event_streams.py."""

    buffer_events: int = 1000  # live events one stream may hold for a slow client before it is told "lagged"
    buffer_bytes: int = 8 * 1024 * 1024  # the same bound in bytes of event data
    page_size: int = 500  # events read per partition per catch-up query
    max_types: int = 50  # entries of the types filter
    # An SSE stream with nothing to send writes a ": keep-alive" comment this often, so proxies and
    # clients (which time out a silent response) see it is alive; 0 turns it off.
    keepalive_seconds: float = 15.0

    def __post_init__(self) -> None:
        if self.keepalive_seconds < 0:
            raise SettingsError("event_stream.keepalive_seconds must be 0 (off) or more")


@dataclass(frozen=True)
class MonitoringSettings:
    metrics_enabled: bool = True
    # OpenTelemetry (infra/runtime/tracing.py): spans and W3C trace context from the HTTP request to the
    # live message. On when tracing_enabled or an otlp_endpoint is set; spans go to the OTLP/HTTP
    # collector at otlp_endpoint (e.g. http://127.0.0.1:4318), none are exported without one.
    tracing_enabled: bool = False
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0  # of new traces (those without a sampled parent); 0..1
    health_check_path: str = "/health"
    metrics_path: str = "/metrics"
    log_format: str = "text"  # text or json (one object per line; infra.runtime.logs)
    # /ready fails while the projections have more events than this waiting (reads would lag behind).
    ready_max_projection_lag: int = 10000


@dataclass(frozen=True)
class GraphQLSettings:
    """Limits on one GraphQL operation, checked before it runs (except the response size); the IDE."""

    max_depth: int = 10  # nesting of selections; introspection fields do not count
    max_aliases: int = 30  # aliases in the whole document
    max_tokens: int = 2000  # lexical tokens, checked while parsing
    # Root fields that do a REST request's work (every mutation, searchObjects): each counts once
    # against the rate limits, and a request naming more than this many is refused before any runs.
    max_costly_fields: int = 10
    max_response_bytes: int = 4 * 1024 * 1024  # a larger result is replaced by a 413 error
    # The IDE page at GET /api/graphql (api/docs.py): "graphiql", served with its scripts from this API, or
    # "apollo-sandbox", the spec's hosted IDE, which needs the browser to reach Apollo's site.
    ide: str = "graphiql"

    def __post_init__(self) -> None:
        _check_choice("graphql.ide", self.ide, GRAPHQL_IDES)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # empty: `pipeline run` / the tests start PostgreSQL themselves
    schema: str = "public"
    pool_min: int = 2
    pool_max: int = 10
    # Of the API's pool, kept out for one-statement reads (infra/adapters/read_connections.py); at most pool_max - 2.
    read_connections: int = 6
    # The API's statements are cancelled after this long (PostgreSQL's statement_timeout; 0: never), so a
    # slow query answers 503 `query_timeout` instead of holding a pooled connection. The workers' own
    # connections (projections, rebuild, executor) have none: their batches may rightly take longer.
    statement_timeout_ms: int = 30000
    # How long an API request waits for a pooled connection (all busy, or PostgreSQL down) before 503.
    pool_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.statement_timeout_ms < 0:
            raise SettingsError("database.statement_timeout_ms must be 0 (off) or more")
        if self.pool_timeout_seconds <= 0:
            raise SettingsError("database.pool_timeout_seconds must be more than 0")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = ""  # empty: `pipeline run` / the tests start Apache Kafka themselves
    topic_prefix: str = "pipeline"
    partitions: int = 1  # fixed when the topics are created; bounds processor instances (see README)
    processor_group: str = "command-processor"
    projection_name: str = "read-models"
    command_timeout_seconds: float = 10.0
    # How long the API tries to hand a command to the broker before answering 503 unavailable.
    send_timeout_seconds: float = 5.0
    transaction_timeout_ms: int = 60_000
    processor_batch_size: int = 500
    # Group commit (commands/processor.py `_gather`): once a poll brings at least
    # processor_linger_min_records commands, gather for this long before the transaction.
    processor_linger_ms: float = 5.0
    processor_linger_min_records: int = 2
    processor_cache_size: int = 10_000
    projection_batch_size: int = 500
    # A rebuild has the whole log to read: larger batches mean fewer transactions and statements.
    rebuild_batch_size: int = 5000
    # Processes a rebuild applies the log with, each its own share of the partitions (decoding and
    # building rows is Python, one core each): 0 = one per core, at most one per partition.
    rebuild_workers: int = 0
    # How long a reader of what the processor writes (events, outcomes) may wait at the broker for new
    # records. A transaction's commit ends the wait (measured: a read_committed reader sees a commit
    # 1.3 ms later at p50 with 500 ms). It was 10 when the projection runner sought back after nearly
    # every batch and so waited out a stale fetch (read with a consistency token: 523 ms at p50 with
    # 500); since the runner reads on after markers, 500 costs no latency, and 10 made every idle
    # reader poll ~100 times a second (idle CPU of the whole system 370 ms/s at 10, 86 ms/s at 500).
    event_fetch_max_wait_ms: int = 500
    command_retention_per_aggregate: int = 64
    # Commands larger than this are refused at the edge (413): their events must still fit the
    # broker's max.message.bytes (Kafka's default, which the project keeps: 1,048,588) with headers.
    max_command_bytes: int = 900_000

    def topic(self, name: str) -> str:
        """Full topic name for one of commands/events/outcomes/state."""
        return f"{self.topic_prefix}.{name}"


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""  # empty: `pipeline run` / the tests start redis-server themselves


# Content carried in an event shares its record with metadata (up to max_metadata_bytes) under the
# broker's record limit; a quarter of it leaves room for the rest.
MAX_EVENT_CONTENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = ".data"
    blob_dir: str = ""  # empty: <data_dir>/blobs
    max_content_bytes: int = 10 * 1024 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_annotations: int = 100  # given at ingest
    # Annotations one data object may have (domain/data_object.py): more are refused (409 limit_reached).
    max_annotations_per_object: int = 1000
    inline_content_bytes: int = 64 * 1024  # GraphQL DataObject.content: text up to this, else contentUrl
    # Ingested content up to this many bytes travels in the command and its event (the Kafka log is its
    # durable store, the read model keeps a copy) instead of an fsynced blob file; 0: always the blob
    # store. 16 KiB: a blob's fsync costs ~0.33 ms CPU and ~1 ms wall whatever its size (measured here,
    # 200 B to 16 KiB), while 16 KiB more in a record is far cheaper than that on every hop; larger
    # content would also swell every Kafka fetch and read-model row.
    event_content_bytes: int = 16 * 1024
    max_upload_file_bytes: int = 1024 * 1024 * 1024  # one file of POST /api/v1/upload
    max_upload_request_bytes: int = 2 * 1024 * 1024 * 1024  # all files of one upload request
    max_upload_files: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.max_annotations <= self.max_annotations_per_object:
            raise SettingsError("storage.max_annotations must be between 0 and storage.max_annotations_per_object")
        if not 0 <= self.event_content_bytes <= MAX_EVENT_CONTENT_BYTES:
            raise SettingsError(f"storage.event_content_bytes must be between 0 and {MAX_EVENT_CONTENT_BYTES}")

    @property
    def blob_path(self) -> Path:
        return Path(self.blob_dir) if self.blob_dir else Path(self.data_dir) / "blobs"


@dataclass(frozen=True)
class SearchSettings:
    # PostgreSQL text search configuration (e.g. simple, english, german) for indexing and queries;
    # changing it needs a read model rebuild (`pipeline projections rebuild --swap`).
    language: str = "simple"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_]{1,63}", self.language):
            raise SettingsError(f"search.language must be a text search configuration name, not {self.language!r}")


@dataclass(frozen=True)
class ConsistencySettings:
    wait_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class ExecutionSettings:
    executor_group: str = "executor"  # consumer group of the graph executor on the events topic
    node_timeout_seconds: float = 30.0
    inline_output_bytes: int = 16 * 1024  # larger node outputs go to the blob store
    max_running: int = 16  # executions one executor runs at once
    # Side-effect-free nodes that finish within this long of each other are recorded by one command
    # (RecordNodes); 0: each at once, by itself. The last level's are never held back.
    record_linger_ms: float = 50.0


@dataclass(frozen=True)
class SupervisionSettings:
    """How `pipeline run` keeps what it started alive (infra.runtime.supervisor, infra.runtime.heartbeat)."""

    # A worker with records waiting and no progress for this long (or no heartbeat at all) is restarted.
    stall_seconds: float = 60.0
    # The first restart of a process that died waits this long, each further one twice as long, up to
    # the maximum; a process that stayed up for a minute starts over at the first delay.
    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    authentication: AuthenticationSettings = field(default_factory=AuthenticationSettings)
    rate_limiting: RateLimitingSettings = field(default_factory=RateLimitingSettings)
    websocket: WebsocketSettings = field(default_factory=WebsocketSettings)
    event_stream: EventStreamSettings = field(default_factory=EventStreamSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    graphql: GraphQLSettings = field(default_factory=GraphQLSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings)


# Short environment names users expect, mapped to (section, key).
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "REDIS_URL": ("redis", "url"),
    "SECRET_KEY": ("authentication", "secret_key"),
    "PIPELINE_HOST": ("server", "host"),
    "PIPELINE_PORT": ("server", "port"),
    "PIPELINE_DATA_DIR": ("storage", "data_dir"),
}
CONFIG_FILE_ENV = "PIPELINE_CONFIG"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SettingsError(ValueError):
    """A settings file or variable that cannot be used."""


def env_name(section: str, key: str) -> str:
    """The long environment variable name of one setting."""
    return f"PIPELINE_{section}_{key}".upper()


def iter_settings() -> typing.Iterator[tuple[str, str, Any]]:
    """(section, key, default) for every setting, in declaration order."""
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        for item in dataclasses.fields(getattr(defaults, section.name)):
            yield section.name, item.name, getattr(getattr(defaults, section.name), item.name)


def load_settings(path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, the YAML file (``PIPELINE_CONFIG`` or ``path``) and the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    file = path or env.get(CONFIG_FILE_ENV)
    if file:
        raw = _read_yaml(Path(file), env)
    for section, key, _ in iter_settings():
        value = env.get(env_name(section, key))
        if value is not None:
            raw.setdefault(section, {})[key] = value
    for name, (section, key) in ENV_ALIASES.items():
        if env.get(name):
            raw.setdefault(section, {})[key] = env[name]
    return _build(raw)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def _read_yaml(path: Path, env: typing.Mapping[str, str]) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc}") from exc

    def substitute(match: re.Match[str]) -> str:
        return env.get(match.group(1), match.group(2) or "")

    try:
        data = yaml.safe_load(_VAR.sub(substitute, text)) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SettingsError(f"settings file {path} must map section names to mappings")
    return data


def _build(raw: dict[str, dict[str, Any]]) -> Settings:
    defaults = Settings()
    sections: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(Settings)}
    for name in raw:
        if name not in known:
            raise SettingsError(f"unknown settings section {name!r}")
    for section in dataclasses.fields(Settings):
        current = getattr(defaults, section.name)
        given = raw.get(section.name, {})
        fields = {f.name: f for f in dataclasses.fields(current)}
        for key in given:
            if key not in fields:
                raise SettingsError(f"unknown setting {section.name}.{key}")
        hints = typing.get_type_hints(type(current))
        changes = {key: _coerce(f"{section.name}.{key}", value, hints[key]) for key, value in given.items()}
        sections[section.name] = dataclasses.replace(current, **changes)
    settings = Settings(**sections)
    if not settings.redis.url and settings.rate_limiting.redis_url:
        settings = dataclasses.replace(settings, redis=RedisSettings(url=settings.rate_limiting.redis_url))
    return settings


def _coerce(name: str, value: Any, hint: Any) -> Any:
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if typing.get_origin(hint) is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name} has an unusable value {value!r}") from exc
