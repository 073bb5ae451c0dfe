"""The litestar application: REST controllers, error envelope, request ids, OpenAPI at /api/docs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.background_tasks import BackgroundTasks
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.enums import MediaType, OpenAPIMediaType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.types import ASGIApp

from api.auth import auth_middleware
from api.body_timeout import body_timeout_middleware
from api.docs import LocalRedoc, LocalSwagger, assets_router, docs_router, graphql_controller
from api.errors import EXCEPTION_HANDLERS
from api.event_streams import EventStreams
from api.graphql.context import context_getter
from api.graphql.schema import build_schema
from api.health import health_controller
from api.hub import LiveHub
from api.inputs import check_request
from api.login_throttle import LoginThrottle
from api.metrics import metrics_route, register_worker_collector
from api.middleware import edge_middleware
from api.openapi import document_errors, document_upload_limit
from api.ratelimit import RateLimiter, Rule
from api.rest.audit import AuditController
from api.rest.auth import AuthController
from api.rest.content import ContentController
from api.rest.conversations import ConversationsController
from api.rest.data import DataController
from api.rest.events import EventsController
from api.rest.executions import ExecutionsController
from api.rest.nodes import NodesController
from api.rest.notifications import NotificationsController
from api.rest.search import SearchController
from api.rest.upload import UploadController
from api.rest.users import UsersController
from api.revocations import RevokedTokens
from api.tokens import RefreshTokens, check_secret
from api.tracing import name_span_by_route, tracing_plugin
from api.user_cache import UserCache
from api.ws import websocket_endpoint
from api.ws_limits import UserConnections
from infra.provision.web_assets import assets_dir
from infra.runtime import heap
from infra.runtime.accounts import ensure_admin
from infra.runtime.bootstrap import ApiContainer, build_api
from infra.runtime.logs import configure_logging
from infra.runtime.settings import Settings, get_settings
from infra.runtime.tracing import tracer_provider

# JSON may escape content (e.g. "\u0000" is 6 bytes for 1), so the body limit leaves room above the
# content limit; the content limit itself is checked on the decoded content.
BODY_OVERHEAD_FACTOR = 6


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app; connections open in its lifespan, never at import. Exits on an unusable secret."""
    settings = settings or get_settings()
    check_secret(settings)
    provider = tracer_provider(settings.monitoring, "api")  # None unless tracing is on
    tracer = provider.get_tracer("pipeline.api") if provider is not None else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await build_api(settings, tracer)
        app.state.container = container
        prefix = settings.kafka.topic_prefix  # one Redis may serve several deployments (and tests)
        app.state.limiter = RateLimiter(settings.rate_limiting, container.redis, prefix)
        app.state.refresh_tokens = RefreshTokens(
            container.redis, prefix, settings.authentication.refresh_token_expire_days
        )
        app.state.revoked_tokens = RevokedTokens(container.redis, prefix)
        app.state.revoked_tokens.start()
        app.state.login_throttle = LoginThrottle(settings.authentication, container.redis, prefix)
        app.state.users = UserCache(container.changes, container.pool)
        app.state.users.start()
        events = EventStreams(container.changes, container.pool, settings.event_stream)
        revoked = app.state.revoked_tokens  # a live connection opened with a token revoked since is closed
        app.state.hub = LiveHub(
            container.changes, container.pool, app.state.users, events, tracer=tracer, revocations=revoked
        )
        app.state.user_connections = UserConnections(settings.websocket.max_connections_per_user)
        app.state.ws_message_rule = Rule.parse(settings.websocket.message_limit)
        app.state.hub.start()
        # In the background: the processor may still be starting, and health must answer meanwhile.
        first_admin = asyncio.create_task(_ensure_admin(container))
        heap.settle()  # started: what exists now lives as long as the process
        try:
            yield
        finally:
            first_admin.cancel()
            await app.state.hub.stop()
            await app.state.users.stop()
            await app.state.revoked_tokens.stop()
            await container.close()

    def provide_container() -> ApiContainer:
        # No parameters: litestar validates a provider's arguments on every request (a ``state: State``
        # parameter cost 3% of the API's CPU on reads by id, py-spy); the app is this function's own.
        container: ApiContainer = app.state.container
        return container

    assets = assets_dir()  # the docs pages' scripts (infra.provision.web_assets), served by this API
    graphql = graphql_controller(
        build_schema(settings.graphql),
        "/api/graphql",
        settings.graphql.ide,
        assets,
        settings.websocket.max_message_size,
        context_getter=context_getter,
    )
    graphql.include_in_schema = False  # GraphQL documents itself (introspection); OpenAPI is for REST
    # strawberry provides the sub-response in a worker thread (sync_to_thread=True): a thread hop on
    # every operation for an empty Response (seen in py-spy profiles of bench/read.py). Built inline.
    graphql.dependencies = {**graphql.dependencies, "response": Provide(_graphql_response, sync_to_thread=False)}
    cors = settings.cors
    monitoring = []
    if settings.monitoring.metrics_enabled:
        register_worker_collector(str(settings.storage.data_dir))
        monitoring.append(metrics_route(settings.monitoring.metrics_path))
    app = Litestar(
        route_handlers=[
            *monitoring,
            redoc,
            openapi_json,
            assets_router(assets),
            DataController,
            ContentController,
            UploadController,
            SearchController,
            ExecutionsController,
            EventsController,
            NodesController,
            NotificationsController,
            ConversationsController,
            AuthController,
            UsersController,
            AuditController,
            health_controller(settings.monitoring.health_check_path),
            websocket_endpoint,
            graphql,
        ],
        before_request=check_request,  # a UTF-8 query string; 415 for a JSON route's body declared as another type
        middleware=[body_timeout_middleware(settings.server.body_timeout_seconds), auth_middleware],
        before_send=[name_span_by_route] if provider is not None else [],  # Allow headers: api/middleware.py
        plugins=[tracing_plugin(provider, settings.monitoring)] if provider is not None else [],
        dependencies={"container": Provide(provide_container, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        cors_config=CORSConfig(
            allow_origins=list(cors.origins),
            allow_credentials=cors.credentials,
            allow_methods=list(cors.methods),  # type: ignore[arg-type]
            allow_headers=list(cors.headers),
        ),
        # The spec's GZipMiddleware(minimum_size=1000): smaller bodies are not worth the CPU. Brotli for
        # clients that accept it, else gzip. Brotli (quality 5) is the cheaper of the two: the 132 kB
        # OpenAPI document takes 4.0 ms and 5.0 kB with it, 10.8 ms and 6.1 kB with litestar's gzip
        # (level 9). Routes marked opt={"uncompressed": True} (stored bytes served with Range, ETag,
        # Content-Length) are left as they are.
        compression_config=CompressionConfig(
            backend="brotli", brotli_gzip_fallback=True, minimum_size=1000, exclude_opt_key="uncompressed"
        ),
        request_max_body_size=settings.storage.max_content_bytes * BODY_OVERHEAD_FACTOR + 1024 * 1024,
        openapi_config=OpenAPIConfig(
            title="Pipeline API",
            version="1.0.0",
            description="Node-based information pipeline system API",
            openapi_router=docs_router(),  # at /api/docs
            render_plugins=[LocalSwagger(assets, path="/"), LocalRedoc(assets, path="/redoc")],
            components=Components(
                security_schemes={"Bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
            security=[{"Bearer": []}],
            tags=OPENAPI_TAGS,
        ),
        logging_config=None,
        debug=False,
    )
    document_errors(app)
    document_upload_limit(app, settings.storage.max_upload_files)
    return app


def _graphql_response(root_value: None) -> Response[Any]:
    """What strawberry's litestar integration gives a resolver to set headers and cookies on.

    ``root_value`` (always None) orders the dependencies: litestar resolves those of one level
    together in an anyio task group, tasks on every operation (seen in py-spy profiles); chained
    (root value, then this, then the context, api.graphql.context), each level has one, run inline.
    """
    return Response({}, background=BackgroundTasks([]))


# The spec's custom_openapi tags (its four first, with its descriptions), then the others the routes use.
OPENAPI_TAGS = [
    Tag(name="data", description="Data management operations"),
    Tag(name="execution", description="Graph execution operations"),
    Tag(name="search", description="Search operations"),
    Tag(name="auth", description="Authentication operations"),
    Tag(name="events", description="The event stream (Server-Sent Events)"),
    Tag(name="notifications", description="Your notifications"),
    Tag(name="chat", description="Chat conversations"),
    Tag(name="users", description="User administration (admins)"),
    Tag(name="audit", description="Event history and audit"),
    Tag(name="health", description="Health and readiness"),
]


@get("/openapi.json", include_in_schema=False, sync_to_thread=False, opt={"open": True})
def openapi_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The OpenAPI document also at FastAPI's default address (the spec's app keeps ``openapi_url``), no token."""
    served = request.app.plugins.get(OpenAPIPlugin).provide_openapi_schema()  # the dict /api/docs serves
    return Response(served, media_type=OpenAPIMediaType.OPENAPI_JSON)


@get("/api/redoc", include_in_schema=False, sync_to_thread=False)
def redoc(request: Request[Any, Any, Any]) -> Response[bytes]:
    """ReDoc at the spec's address (``redoc_url``), served there (200, not a redirect to litestar's
    /api/docs/redoc, which a client that does not follow redirects would take for a missing page)."""
    config = request.app.openapi_config
    assert config is not None  # create_app sets it
    plugin = next(p for p in config.render_plugins if isinstance(p, LocalRedoc))
    page = plugin.render(request, request.app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
    return Response(page, media_type=MediaType.HTML)


async def _ensure_admin(container: ApiContainer) -> None:
    for attempt in range(30):
        try:
            await ensure_admin(container)
            return
        except Exception as exc:  # e.g. the command timed out while the processor starts: try again
            logging.getLogger("pipeline.api").warning("first-start admin check failed (%s); retrying", exc)
            await asyncio.sleep(min(2.0 * (attempt + 1), 10.0))


def app_factory() -> ASGIApp:
    """Entry point for uvicorn --factory.

    The edge wrapper (request ids, request metrics) sits outside litestar so that even requests no
    route matches (404, 405) carry an X-Request-ID, are counted, and the error envelope names the id.
    """
    settings = get_settings()
    configure_logging(settings.monitoring)
    return edge_middleware(create_app(settings))
