"""The GraphQL context: the composition root's clients, the connection, per-request loaders."""

from __future__ import annotations

from typing import Any

from litestar import Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from strawberry.dataloader import DataLoader
from strawberry.litestar import BaseContext

from infra.runtime.bootstrap import ApiContainer
from projections.annotations import annotations_of_many


class GraphQLContext(BaseContext, kw_only=True):
    """strawberry fills in ``request`` (HTTP) or ``websocket`` (subscriptions)."""

    container: ApiContainer
    annotations: DataLoader[str, list[dict[str, Any]]]

    @property
    def connection(self) -> ASGIConnection[Any, Any, Any, Any]:
        """Whichever connection carries this operation; auth and request ids read it."""
        connection = self.request if self.request is not None else self.websocket
        assert connection is not None
        return connection


async def context_getter(state: State, response: Response) -> GraphQLContext:
    """A litestar dependency: one context (and one set of DataLoaders) per operation.

    It takes the sub-response only to come after it (see api.app._graphql_response); strawberry sets it
    on the context itself. ``Response``, not ``Response[Any]``: litestar checks a dependency's value
    against its annotation, and an isinstance check on a subscripted generic fails slowly (about a tenth
    of a small query's CPU in py-spy profiles).
    """
    container: ApiContainer = state.container

    async def load_annotations(object_ids: list[str]) -> list[list[dict[str, Any]]]:
        found = await container.reads.read(annotations_of_many, object_ids)
        return [found.get(object_id, []) for object_id in object_ids]

    return GraphQLContext(container=container, annotations=DataLoader(load_fn=load_annotations))
