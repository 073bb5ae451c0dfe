"""The composition root: every client and worker is built here from settings, nothing at import."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from opentelemetry.trace import Tracer
from psycopg_pool import AsyncConnectionPool

from commands.limits import CommandLimits
from commands.processor import CommandProcessor, ProcessorConfig
from commands.registry import executor
from domain.content_types import is_textual
from infra.adapters.blobstore import LocalBlobStore
from infra.adapters.codec import make_mapper
from infra.adapters.command_bus import KafkaCommandBus
from infra.adapters.credentials import CredentialStore, ensure_credentials_table, password_hasher
from infra.adapters.kafka import Topics, ensure_topics
from infra.adapters.postgres import migrate, open_pool
from infra.adapters.read_connections import ReadConnections
from infra.runtime.settings import Settings
from projections.annotations import AnnotationsProjector
from projections.audit_log import AuditLogProjector
from projections.changes import ChangeFeed, channel_for
from projections.conversations import ConversationsProjector
from projections.data_objects import ContentLoader, DataObjectsProjector
from projections.executions import ExecutionsProjector
from projections.notifications import NotificationsProjector
from projections.projector import Projector
from projections.runner import ProjectionRunner, RunnerConfig
from projections.text_extraction import MAX_INDEXED_BYTES, MAX_PDF_BYTES, wants_whole_content
from projections.users import UsersProjector

log = logging.getLogger("pipeline.bootstrap")


def require_services(settings: Settings) -> None:
    """Workers and the API connect to services; `pipeline run` or the tests provide them."""
    missing = [
        name
        for name, value in (
            ("DATABASE_URL", settings.database.url),
            ("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers),
            ("REDIS_URL", settings.redis.url),
        )
        if not value
    ]
    if missing:
        raise SystemExit(f"missing settings: {', '.join(missing)} (or start everything with `make run`)")


@dataclass
class ApiContainer:
    settings: Settings
    topics: Topics
    pool: AsyncConnectionPool
    reads: ReadConnections  # the pool's connections for one-statement reads (infra/adapters/read_connections.py)
    bus: KafkaCommandBus
    blobs: LocalBlobStore
    changes: ChangeFeed
    redis: aioredis.Redis
    credentials: CredentialStore

    async def close(self) -> None:
        await self.bus.stop()
        await self.changes.stop()
        await self.reads.close()
        await self.pool.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()


def search_content_loader(blobs: LocalBlobStore) -> ContentLoader:
    """What the data_objects projector reads to index an object: nothing for binary types, the first
    MAX_INDEXED_BYTES of text, a whole PDF up to MAX_PDF_BYTES (text_extraction's bounds)."""

    def load(content_hash: str, content_type: str) -> bytes | None:
        if wants_whole_content(content_type):
            return blobs.head(content_hash, MAX_PDF_BYTES + 1)
        if not is_textual(content_type):
            return None
        return blobs.head(content_hash, MAX_INDEXED_BYTES)

    return load


def read_model_projectors(blobs: LocalBlobStore | None = None, language: str = "simple") -> list[Projector]:
    """The read models one runner keeps, in the order they are applied."""
    return [
        DataObjectsProjector(search_content_loader(blobs) if blobs else None, language),
        AnnotationsProjector(),
        ExecutionsProjector(),
        UsersProjector(),
        NotificationsProjector(),
        ConversationsProjector(),
        AuditLogProjector(),
    ]


async def build_api(settings: Settings, tracer: Tracer | None = None) -> ApiContainer:
    """Connect everything the API needs (topics and schema are created if missing); ``tracer`` traces commands."""
    require_services(settings)
    topics = await ensure_topics(settings.kafka)
    await migrate(settings.database.url, settings.database.schema)
    await ensure_credentials_table(settings.database.url, settings.database.schema)
    pool = await open_pool(
        settings.database.url,
        settings.database.schema,
        settings.database.pool_min,
        settings.database.pool_max,
        prepare=True,
        statement_timeout_ms=settings.database.statement_timeout_ms,
        timeout=settings.database.pool_timeout_seconds,
    )
    bus = KafkaCommandBus.from_settings(settings.kafka, topics, tracer)
    changes = ChangeFeed(settings.database.url, settings.database.schema, settings.kafka.projection_name, topics.events)
    try:
        await bus.start()
        await changes.start()
    except BaseException:
        await bus.stop()
        await changes.stop()
        await pool.close()
        raise
    # Short timeouts: a Redis outage must degrade requests (rate-limit fallback), not hang them.
    redis = aioredis.from_url(settings.redis.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    credentials = CredentialStore(pool, settings.database.schema, password_hasher(settings.authentication))
    blobs = LocalBlobStore(settings.storage.blob_path)
    # At least two of the pool's connections stay for everything else (users, live queries, credentials).
    reads = ReadConnections(pool, min(settings.database.read_connections, settings.database.pool_max - 2), pool.timeout)
    return ApiContainer(settings, topics, pool, reads, bus, blobs, changes, redis, credentials)


def processor_config(settings: Settings, topics: Topics) -> ProcessorConfig:
    k = settings.kafka
    return ProcessorConfig(
        bootstrap_servers=k.bootstrap_servers,
        commands_topic=topics.commands,
        events_topic=topics.events,
        outcomes_topic=topics.outcomes,
        state_topic=topics.state,
        dead_letter_topic=topics.dead_letters,
        group_id=f"{k.topic_prefix}.{k.processor_group}",
        transactional_id_prefix=f"{k.topic_prefix}.{k.processor_group}",
        state_dir=Path(settings.storage.data_dir) / "processor",
        batch_size=k.processor_batch_size,
        cache_size=k.processor_cache_size,
        commands_per_aggregate=k.command_retention_per_aggregate,
        transaction_timeout_ms=k.transaction_timeout_ms,
        linger_ms=k.processor_linger_ms,
        linger_min_records=k.processor_linger_min_records,
    )


async def build_processor(settings: Settings, tracer: Tracer | None = None) -> CommandProcessor:
    require_services(settings)
    topics = await ensure_topics(settings.kafka)
    limits = CommandLimits(max_annotations_per_object=settings.storage.max_annotations_per_object)
    return CommandProcessor(processor_config(settings, topics), make_mapper(), executor(limits), tracer=tracer)


def runner_config(
    settings: Settings, topics: Topics, schema: str, group_suffix: str = "", batch_size: int | None = None
) -> RunnerConfig:
    k = settings.kafka
    return RunnerConfig(
        bootstrap_servers=k.bootstrap_servers,
        events_topic=topics.events,
        projection=k.projection_name,
        group_id=f"{k.topic_prefix}.projection.{k.projection_name}.{schema}{group_suffix}",
        channel=channel_for(schema),
        batch_size=batch_size or k.projection_batch_size,
        fetch_max_wait_ms=k.event_fetch_max_wait_ms,
    )


def read_model_names() -> list[str]:
    """The names `pipeline projections rebuild --only` takes."""
    return [projector.name for projector in read_model_projectors()]


async def build_runner(
    settings: Settings,
    schema: str | None = None,
    group_suffix: str = "",
    only: Sequence[str] = (),
    batch_size: int | None = None,
    tracer: Tracer | None = None,
    bulk: bool = False,
) -> ProjectionRunner:
    """A projection runner for ``schema`` (the live one by default), with its schema migrated; ``only``
    limits it to the read models so named (ValueError for a name that is not one); ``tracer``: the live
    runner's (a rebuild replays old events and is not traced); ``bulk``: a rebuild's fill (see ProjectionRunner)."""
    require_services(settings)
    projectors = read_model_projectors(LocalBlobStore(settings.storage.blob_path), settings.search.language)
    unknown = set(only) - {p.name for p in projectors}
    if unknown:
        raise ValueError(f"no read model named {', '.join(sorted(unknown))} (known: {', '.join(read_model_names())})")
    if only:
        projectors = [p for p in projectors if p.name in only]
    schema = schema or settings.database.schema
    topics = await ensure_topics(settings.kafka)
    await migrate(settings.database.url, schema)
    pool = await open_pool(settings.database.url, schema, 1, 4)
    return ProjectionRunner(
        runner_config(settings, topics, schema, group_suffix, batch_size),
        pool,
        make_mapper(),
        projectors,
        tracer,
        bulk,
    )
