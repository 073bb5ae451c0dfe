"""The docs pages without a CDN: Swagger UI, ReDoc and the GraphQL IDE load their scripts from the API.

The scripts and styles are the pinned npm packages of infra/provision/web_assets.py, fetched at set-up
into the cache directory and served here under ``ASSETS_PATH`` without a token (versioned paths,
cached for a year). The GraphQL IDE is a self-hosted GraphiQL (the spec's Apollo Sandbox is a hosted
app in an iframe that cannot work offline; ``graphql.ide: apollo-sandbox`` brings it back for online
users; README "Docs pages"). Its page opens without a token; operations still need one, set in GraphiQL's
Headers tab. When the assets are missing, each page says how to fetch them instead of loading nothing.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Literal

import msgspec
from cross_web import HTTPException as GraphQLRequestError
from litestar import Request, Response
from litestar._openapi.plugin import handle_schema_path_not_found
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router
from strawberry.litestar import make_graphql_controller
from strawberry.litestar.controller import GraphQLController
from strawberry.schema.base import BaseSchema

from api.errors import ApiError, envelope, http_reason
from api.graphql.protocols import BoundedWebSocket, CheckedLegacyWS, CheckedTransportWS
from infra.provision.web_assets import FETCH_COMMAND, asset_path, missing

DOCS_PATH = "/api/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"
YEAR_S = 365 * 24 * 3600
# The pages may load nothing from elsewhere (ReDoc's bundle, for one, links a logo on Redocly's CDN).
# Inline scripts and styles are the pages' own; ReDoc runs its search in a blob: worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:"
)
CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'


def _same_origin_only(page: bytes) -> bytes:
    return page.replace(b"<head>", b"<head>" + CSP_META.encode(), 1)


def docs_router() -> Router:
    """The router litestar's OpenAPI plugin puts the docs pages and the document in (``OpenAPIConfig.openapi_router``).

    The plugin also adds a catch-all ``/{path:str}`` that answers an HTML "Error 404" page; the guard makes
    it the JSON error envelope every other unknown path gets (``/api/docs/nope`` is no different from
    ``/api/nope``). A guard, not a before_request hook: that would replace the app's own hook here.
    """
    return Router(DOCS_PATH, route_handlers=[], include_in_schema=False, guards=[_no_unknown_docs_page])


def _no_unknown_docs_page(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if getattr(handler, "fn", None) is handle_schema_path_not_found:
        raise NotFoundException()


def assets_router(root: Path) -> Router:
    """``ASSETS_PATH/<package>@<version>/<file>``, open to all (auth: the /api/docs prefix)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[root],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=YEAR_S, public=True),  # a new version is a new path
        name="docs-assets",
        before_request=_no_nul_in_path,
    )


async def _no_nul_in_path(request: Request[Any, Any, Any]) -> None:
    """A NUL (``/api/docs/assets/%00``) names no file; the file system refuses to look it up (ValueError:
    embedded null byte), which was a 500."""
    if "\x00" in request.scope["path"]:
        raise ApiError(404, "not_found", "no such file", {"field": "path"})


def _url(name: str, file: str) -> str:
    return f"{ASSETS_PATH}/{asset_path(name, file)}"


def missing_page(root: Path, title: str) -> bytes:
    """What a docs page shows while its assets are not fetched."""
    names = ", ".join(p.directory for p in missing(root))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}: scripts not installed</h1>"
        f"<p>This page loads its scripts from this server, and they have not been fetched yet ({html.escape(names)}"
        f" missing from <code>{html.escape(str(root))}</code>).</p>"
        f"<p>Run <code>{FETCH_COMMAND}</code> (or <code>python -m infra.provision.web_assets</code>) where the API"
        " runs, with the same <code>PIPELINE_CACHE_DIR</code>, then reload. The OpenAPI document itself is at"
        " <a href='/api/docs/openapi.json'>/api/docs/openapi.json</a>.</p></body></html>"
    ).encode()


class LocalSwagger(SwaggerRenderPlugin):
    """Swagger UI from the API's own assets."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        self.root = root
        super().__init__(
            js_url=_url("swagger-ui-dist", "swagger-ui-bundle.js"),
            css_url=_url("swagger-ui-dist", "swagger-ui.css"),
            standalone_preset_js_url=_url("swagger-ui-dist", "swagger-ui-standalone-preset.js"),
            favicon="",  # litestar's default is on a CDN
            **kwargs,
        )

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        if missing(self.root):
            return missing_page(self.root, "Swagger UI")
        return _same_origin_only(super().render(request, openapi_schema))


class LocalRedoc(RedocRenderPlugin):
    """ReDoc from the API's own assets, without Google's fonts."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        self.root = root
        super().__init__(js_url=_url("redoc", "bundles/redoc.standalone.js"), google_fonts=False, favicon="", **kwargs)

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        if missing(self.root):
            return missing_page(self.root, "ReDoc")
        return _same_origin_only(super().render(request, openapi_schema))


GRAPHIQL_QUERY = """# Operations need a token: log in (POST /api/v1/auth/login), then open the Headers tab below and set
#   {"Authorization": "Bearer <access_token>"}
{ __typename }
"""


def graphiql_page(graphql_path: str) -> str:
    """A GraphiQL page whose scripts come from ASSETS_PATH, with the headers editor open."""
    settings = {"path": graphql_path, "query": GRAPHIQL_QUERY}
    return f"""<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {CSP_META}
  <title>Pipeline GraphQL IDE</title>
  <link rel="stylesheet" href="{_url("graphiql", "graphiql.min.css")}">
  <style>body {{ margin: 0; }} #graphiql {{ height: 100vh; }}</style>
  <script src="{_url("react", "umd/react.production.min.js")}"></script>
  <script src="{_url("react-dom", "umd/react-dom.production.min.js")}"></script>
  <script src="{_url("graphiql", "graphiql.min.js")}"></script>
</head>
<body>
  <div id="graphiql">Loading the GraphQL IDE...</div>
  <script id="ide-settings" type="application/json">{_script_json(settings)}</script>
  <script>
    const settings = JSON.parse(document.getElementById("ide-settings").textContent);
    const url = new URL(settings.path, window.location.href);
    const fetcher = GraphiQL.createFetcher({{ url: url.toString() }});
    ReactDOM.createRoot(document.getElementById("graphiql")).render(
      React.createElement(GraphiQL, {{
        fetcher: fetcher,
        defaultQuery: settings.query,
        isHeadersEditorEnabled: true,
        defaultEditorToolsVisibility: "headers",
        shouldPersistHeaders: false,
      }}),
    );
  </script>
</body>
</html>
"""


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(value).replace("<", "\\u003c")


# strawberry's refusals of a request as a whole -> the part of the request they are about.
_REQUEST_FIELDS = {
    "Unable to parse request body as JSON": "body",
    "No GraphQL query found in the request": "query",
    "Unsupported content type": "Content-Type",
}


def graphql_controller(
    schema: BaseSchema, path: str, ide: str, root: Path, max_ws_message: int, **kwargs: Any
) -> type[GraphQLController[Any, Any]]:
    """strawberry's controller, with the self-hosted GraphiQL page unless ``ide`` is apollo-sandbox (one of
    GRAPHQL_IDES: GraphQLSettings refuses any other when the settings are read)."""
    chosen: Literal["apollo-sandbox", "graphiql"] = "apollo-sandbox" if ide == "apollo-sandbox" else "graphiql"
    base = make_graphql_controller(schema, path=path, graphql_ide=chosen, **kwargs)

    class Enveloped(base):  # type: ignore[misc,valid-type]
        # A malformed WebSocket message closes with 4400, not 4500 (api/graphql/protocols.py).
        graphql_transport_ws_handler_class = CheckedTransportWS
        graphql_ws_handler_class = CheckedLegacyWS
        # A message above websocket.max_message_size closes with 1009 (api/graphql/protocols.py).
        websocket_adapter_class = BoundedWebSocket
        max_message_size = max_ws_message

        async def execute_request(
            self, request: Request[Any, Any, Any], context: Any, root_value: Any
        ) -> Response[Any]:
            """strawberry answers a request it cannot run (no query, a batch, a mutation over GET, an unknown
            operation name, a form body) in plain text; here in the error envelope like every other 4xx."""
            try:
                return await self.run(request, context=context, root_value=root_value)
            except GraphQLRequestError as exc:
                reason = "validation_error" if exc.status_code == 400 else http_reason(exc.status_code)
                field = _REQUEST_FIELDS.get(exc.reason)
                return envelope(request, exc.status_code, reason, exc.reason, {"field": field} if field else None)

        def decode_json(self, data: str | bytes) -> object:
            """msgspec, as the REST bodies are decoded, and every undecodable document a JSONDecodeError, which
            strawberry answers (400 over HTTP, close 4400 over graphql-transport-ws): json.loads took a lone
            surrogate escape (``"\\ud800"``), which no UTF-8 encoder takes (a 500 once it reached the command
            log), and NaN, and raised a plain ValueError for an integer of more than 4300 digits (a 500).
            Integers stay integers whatever their size (orjson would turn 2**64 into a float), so the input
            rules refuse one beyond 64 bits by name."""
            try:
                return msgspec.json.decode(data)
            except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested ~1000 deep
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
                raise json.JSONDecodeError(str(exc), text, 0) from exc

    if ide == "apollo-sandbox":
        return Enveloped
    page = graphiql_page(path)

    class SelfHostedGraphiQL(Enveloped):
        async def render_graphql_ide(self, request: Request[Any, Any, Any]) -> Response[str]:
            if missing(root):
                return Response(missing_page(root, "GraphQL IDE").decode(), media_type=MediaType.HTML)
            return Response(page, media_type=MediaType.HTML)

    return SelfHostedGraphiQL
