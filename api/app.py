"""The litestar application: REST controllers, error envelope, request ids, OpenAPI at /api/docs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp
from strawberry.litestar import make_graphql_controller

from api.errors import EXCEPTION_HANDLERS
from api.graphql.context import context_getter
from api.graphql.schema import schema
from api.health import HealthController
from api.hub import LiveHub
from api.middleware import request_id_middleware
from api.rest.data import DataController
from api.rest.executions import ExecutionsController
from api.rest.nodes import NodesController
from api.rest.search import SearchController
from api.ws import websocket_endpoint
from infra.bootstrap import ApiContainer, build_api
from infra.settings import Settings, get_settings

# JSON may escape content (e.g. "\u0000" is 6 bytes for 1), so the body limit leaves room above the
# content limit; the content limit itself is checked on the decoded content.
BODY_OVERHEAD_FACTOR = 6


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app; connections open in its lifespan, never at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await build_api(settings)
        app.state.container = container
        app.state.hub = LiveHub(container.changes)
        app.state.hub.start()
        try:
            yield
        finally:
            await app.state.hub.stop()
            await container.close()

    def provide_container(state: State) -> ApiContainer:
        container: ApiContainer = state.container
        return container

    cors = settings.cors
    return Litestar(
        route_handlers=[
            DataController,
            SearchController,
            ExecutionsController,
            NodesController,
            HealthController,
            websocket_endpoint,
            make_graphql_controller(
                schema, path="/api/graphql", context_getter=context_getter, graphql_ide="apollo-sandbox"
            ),
        ],
        dependencies={"container": Provide(provide_container, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        cors_config=CORSConfig(
            allow_origins=list(cors.origins),
            allow_credentials=cors.credentials,
            allow_methods=list(cors.methods),  # type: ignore[arg-type]
            allow_headers=list(cors.headers),
        ),
        request_max_body_size=settings.storage.max_content_bytes * BODY_OVERHEAD_FACTOR + 1024 * 1024,
        openapi_config=OpenAPIConfig(
            title="Pipeline API",
            version="1.0.0",
            description="Node-based information pipeline system API",
            path="/api/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        logging_config=None,
        debug=False,
    )


def app_factory() -> ASGIApp:
    """Entry point for uvicorn --factory.

    The request-id wrapper sits outside litestar so that even requests no route matches (404, 405)
    carry an X-Request-ID and the error envelope names it.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return request_id_middleware(create_app())
