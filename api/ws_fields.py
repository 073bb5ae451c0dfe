"""The fields each ``/ws`` client message may have (api/ws.py); ``chat_message``'s are its struct's."""

from __future__ import annotations

from typing import Any

# Any other field is refused, as a struct refuses it: a misspelt ``aggregateId`` must not silently
# widen a stream.
FIELDS = {
    "subscribe:data_changes": {"type", "topic"},
    "subscribe:execution": {"type", "topic", "after"},
    "subscribe:events": {"type", "topic", "after", "types", "aggregate_id"},
    "unsubscribe": {"type", "topic"},
    "ping": {"type"},
    "execution_status": {"type", "execution_id"},
}


def unknown_fields(message: dict[str, Any], shape: str) -> str | None:
    """What to tell a client whose ``message`` has fields beyond its shape's (a key of FIELDS), or None."""
    extra = sorted(str(key)[:64] for key in message if key not in FIELDS[shape])
    if not extra:
        return None
    return f"unknown field(s) {', '.join(map(repr, extra[:10]))} in {shape.split(':')[0]}"
