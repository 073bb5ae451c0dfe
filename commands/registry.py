"""Command type name -> (payload struct, handler). The processor dispatches through this table."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from eventsourcing.domain import Aggregate

from commands import conversation, data, execution, inbox, users
from commands.envelope import CommandEnvelope
from commands.limits import DEFAULT_LIMITS, CommandLimits
from domain.errors import DomainError


@dataclass(frozen=True)
class CommandSpec:
    payload: type[msgspec.Struct]
    handler: Callable[..., Aggregate]  # (aggregate, payload, envelope[, limits])
    creates: bool = False  # the command makes a new aggregate (expected_version must be empty)
    # Checked before the expected version: raises when the actor may not act on this aggregate at all,
    # so a conflict (409 with the current version) is never what tells them it exists.
    authorize: Callable[[Any, CommandEnvelope], None] | None = None
    limited: bool = False  # the handler takes the CommandLimits as a fourth argument


COMMANDS: dict[str, CommandSpec] = {
    "IngestData": CommandSpec(data.IngestData, data.ingest_data, creates=True, limited=True),
    "AnnotateObject": CommandSpec(data.AnnotateObject, data.annotate_object, authorize=data.may_change, limited=True),
    "DeleteObject": CommandSpec(data.DeleteObject, data.delete_object, authorize=data.may_change),
    "ExecuteGraph": CommandSpec(execution.ExecuteGraph, execution.execute_graph, creates=True),
    "StartNode": CommandSpec(execution.StartNode, execution.start_node),
    "CompleteNode": CommandSpec(execution.CompleteNode, execution.complete_node),
    "RecordNode": CommandSpec(execution.RecordNode, execution.record_node),
    "RecordNodes": CommandSpec(execution.RecordNodes, execution.record_nodes),
    "FailNode": CommandSpec(execution.FailNode, execution.fail_node),
    "FailExecution": CommandSpec(execution.FailExecution, execution.fail_execution),
    "CompleteExecution": CommandSpec(execution.CompleteExecution, execution.complete_execution),
    "CancelExecution": CommandSpec(execution.CancelExecution, execution.cancel_execution),
    "RegisterUser": CommandSpec(users.RegisterUser, users.register_user, creates=True),
    "ChangeRole": CommandSpec(users.ChangeRole, users.change_role),
    "ChangePassword": CommandSpec(users.ChangePassword, users.change_password),
    "DisableUser": CommandSpec(users.DisableUser, users.disable_user),
    "EnableUser": CommandSpec(users.EnableUser, users.enable_user),
    "SeatAdmin": CommandSpec(users.SeatAdmin, users.seat_admin),
    "UnseatAdmin": CommandSpec(users.UnseatAdmin, users.unseat_admin),
    "PostMessage": CommandSpec(conversation.PostMessage, conversation.post_message),
    "GiveResponse": CommandSpec(conversation.GiveResponse, conversation.give_response),
    "MarkNotificationsRead": CommandSpec(inbox.MarkNotificationsRead, inbox.mark_notifications_read),
}


class InvalidCommand(DomainError):
    code = "invalid"


class VersionConflict(DomainError):
    code = "conflict"


def execute(
    envelope: CommandEnvelope, aggregate: Aggregate | None, limits: CommandLimits = DEFAULT_LIMITS
) -> Aggregate:
    """Check the expected version (after ``authorize``), decode the payload, run the handler; return the
    changed aggregate. ``limits``: the settings' bounds (``executor`` binds them for the processor)."""
    spec = COMMANDS.get(envelope.type)
    if spec is None:
        raise InvalidCommand(f"unknown command type {envelope.type!r}")
    if envelope.expected_version is not None:
        if spec.authorize is not None:
            spec.authorize(aggregate, envelope)
        current = aggregate.version if aggregate is not None else 0
        if current != envelope.expected_version:
            raise VersionConflict(
                f"expected version {envelope.expected_version}, the aggregate is at version {current}",
                {"expected_version": envelope.expected_version, "current_version": current},
            )
    try:
        payload = msgspec.convert(envelope.payload, spec.payload)
    except msgspec.ValidationError as exc:
        raise InvalidCommand(f"invalid {envelope.type} payload: {exc}") from exc
    if spec.limited:
        return spec.handler(aggregate, payload, envelope, limits)
    return spec.handler(aggregate, payload, envelope)


def executor(limits: CommandLimits) -> Callable[[CommandEnvelope, Aggregate | None], Aggregate]:
    """``execute`` with these limits: what the command processor runs each command with."""
    return functools.partial(execute, limits=limits)
