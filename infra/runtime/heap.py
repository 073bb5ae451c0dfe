"""The garbage collector of a long-running server process, once it has started.

A server starts by building hundreds of thousands of objects that live as long as it does (modules,
the litestar app and its routes, the GraphQL schema, the clients; in a worker, the domain, the
mappers and the Kafka and PostgreSQL clients); every full collection then walks
them all again, a pause that every request in flight waits out. ``settle`` moves them out of the
collector's sight (``gc.freeze``) and collects the young generation less often: requests leave little
cyclic garbage, and a young collection at CPython's default of 700 objects mostly walks the objects of
the requests in flight (64 concurrent reads hold more than that), alive and soon freed by reference
counting anyway.

Measured on the API under bench/read.py's REST reads at 64 connections (gc.callbacks, shared machine):
with the defaults, 70-230 young collections per 10 s (pauses up to 13-37 ms) and a full collection of
60-220 ms every 10-20 s; frozen with 10,000, one young collection (7.5 ms) in 24 s of load and no full one.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 10_000  # objects allocated (net) between young collections; CPython's default is 700


def settle() -> None:
    """Collect once, freeze what is left (start-up's objects) and space out young collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextlib.contextmanager
def collecting_less(young_threshold: int) -> Iterator[None]:
    """For a stretch of work (a rebuild): what is loaded already frozen and young collections every
    ``young_threshold`` allocations; afterwards the collector as it was."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young_threshold, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
