"""What command input may contain, checked once at the edge and again by the command processor.

Every entry point (REST, GraphQL, WebSocket) validates with these rules before it builds a
command, and the processor re-checks each command's payload (defence in depth: a record produced
straight onto the commands topic meets the same rules). What passes must be storable by every
worker: the log's codec (orjson: 64-bit integers, at most 254 levels deep), PostgreSQL ``text``
(no NUL) and ``jsonb`` (no ``\\u0000``, finite numbers), and the broker's message size.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from domain.data_object import (
    ANNOTATION_SOURCE_PATTERN,
    ANNOTATION_TYPE_PATTERN,
    CONTENT_TYPE_PATTERN,
    MAX_ANNOTATIONS_PER_OBJECT,
)

# JSON values (metadata, annotation content, graph, inputs, options) nest at most this deep: far
# below orjson's own limit of 254 and Python's recursion limit (1000), which a deeper value hit.
MAX_JSON_DEPTH = 32
# What a worker can store at all (orjson refuses 255 levels; events wrap a payload a few levels
# deeper): the command processor's bound, which also covers the executor's node outputs.
MAX_STORABLE_DEPTH = 128
MAX_KEY_CHARS = 256
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # signed 64-bit: what orjson writes and every reader takes

NO_NUL = r"^[^\x00]*$"
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

Text = Annotated[str, msgspec.Meta(pattern=NO_NUL, description="text without NUL characters")]
ContentType = Annotated[str, msgspec.Meta(pattern=CONTENT_TYPE_PATTERN, description="a media type, e.g. text/plain")]
AnnotationType = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=100, pattern=ANNOTATION_TYPE_PATTERN, description="a word, e.g. label or keyword"
    ),
]
Label = Annotated[
    str, msgspec.Meta(min_length=1, max_length=1000, pattern=NO_CONTROL, description="1..1000 printable characters")
]
AnnotationSource = Annotated[
    str, msgspec.Meta(pattern=ANNOTATION_SOURCE_PATTERN, description='"user", "ingest" or "graph:<execution id>"')
]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


@dataclass(frozen=True)
class CommandLimits:
    """Bounds the handlers of ``limited`` commands (commands/registry.py) enforce, from the settings
    (infra/runtime/bootstrap.py builds them); the defaults are the settings' defaults."""

    max_annotations_per_object: int = MAX_ANNOTATIONS_PER_OBJECT


DEFAULT_LIMITS = CommandLimits()


class InvalidInput(ValueError):
    """Input that breaks one of the rules above; ``field`` names where (e.g. ``metadata.a[2]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_json(value: Any, field: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidInput unless ``value`` is JSON every worker can store.

    Iterative, so a value nested thousands deep is refused instead of exhausting the stack.
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput(path, "text must not contain NUL characters")
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise InvalidInput(path, "integers must fit in 64 bits (-2^63 .. 2^63-1)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(path, "numbers must be finite")
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                raise InvalidInput(path, f"values may nest at most {max_depth} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise InvalidInput(path, "object keys must be strings")
                    if len(key) > MAX_KEY_CHARS or "\x00" in key:
                        message = f"keys are at most {MAX_KEY_CHARS} characters, without NUL"
                        raise InvalidInput(f"{path}.{key[:40]!r}", message)
                    stack.append((child, f"{path}.{key}", depth + 1))
            else:
                stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        else:
            raise InvalidInput(path, f"{type(item).__name__} is not a JSON value")


def check_uuid(value: Any, field: str) -> str:
    """The canonical form of a UUID string; InvalidInput for anything else."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(field, "must be a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidInput(field, "must be a UUID") from exc
