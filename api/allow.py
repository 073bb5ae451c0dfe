"""``OPTIONS`` answers with every method of its path.

litestar 2.x builds the automatic OPTIONS handler of a path when its first handler is added and
keeps it when more methods join, so ``OPTIONS /api/v1/data/{id}`` said ``Allow: DELETE, OPTIONS``
without GET (litestar issue 4169, fixed only in 3.x). This rewrites the header from the route's
full method set, with HEAD wherever GET is (api/middleware.py answers it). Called by
api/middleware.py on the start of every OPTIONS answer.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope


async def correct_allow_header(message: Message, scope: Scope) -> None:
    """Set ``Allow`` of an OPTIONS answer (``message``: its http.response.start) to every method of the route."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    handler = scope.get("route_handler")
    for route in scope["app"].routes:
        if isinstance(route, HTTPRoute) and any(h is handler for h in route.route_handlers):
            headers = MutableScopeHeaders.from_message(message)
            if "allow" in headers:
                methods = set(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
                headers["Allow"] = ", ".join(sorted(methods))
            return
