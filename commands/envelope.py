"""What travels on the commands and outcomes topics: the command envelope and its outcome."""

from __future__ import annotations

from typing import Any

import msgspec


class Actor(msgspec.Struct, frozen=True):
    user_id: str
    role: str


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    command_id: str
    type: str
    aggregate_id: str
    payload: dict[str, Any]
    actor: Actor
    expected_version: int | None = None
    request_id: str = ""
    correlation_id: str = ""
    submitted_at: float = 0.0  # epoch seconds, for the latency figures


class Position(msgspec.Struct, frozen=True):
    """Where an event landed in the events topic; a read may wait for the projection to pass it."""

    partition: int
    offset: int

    def token(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, token: str) -> Position:
        """Parse ``"<partition>:<offset>"``; ValueError on anything else."""
        partition, _, offset = token.strip().partition(":")
        if not (partition + offset).isascii() or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"not a position token: {token!r}")
        return cls(int(partition), int(offset))


class Rejection(msgspec.Struct, frozen=True):
    code: str  # not_found, conflict, gone, invalid
    message: str
    details: dict[str, Any] = {}


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    command_id: str
    aggregate_id: str
    accepted: bool
    version: int = 0
    position: str | None = None
    event_types: list[str] = []
    result: dict[str, Any] = {}
    rejection: Rejection | None = None
    duplicate: bool = False  # answered from the first outcome of the same command id


ENVELOPE_DECODER = msgspec.json.Decoder(CommandEnvelope)
OUTCOME_DECODER = msgspec.json.Decoder(Outcome)
encode = msgspec.json.encode
