"""User commands as Given / When / Then, ownership of data objects, and the User events' golden shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.domain import Aggregate

from api.ratelimit import Rule
from api.rbac import ROLE_PERMISSIONS, Permission, can_see, has_permission
from commands.envelope import Actor, CommandEnvelope
from commands.registry import execute
from domain.admin_roster import ROSTER_ID, AdminRoster
from domain.errors import DomainError
from domain.user import User, user_id_for
from infra.adapters.codec import make_mapper

ADMIN = Actor("11111111-1111-1111-1111-111111111111", "admin")
ALICE = Actor("alice", "user")
VIEWER = Actor("vera", "viewer")


def envelope(command: str, aggregate_id: str, payload: dict, actor: Actor = ADMIN) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=str(uuid4()), type=command, aggregate_id=aggregate_id, payload=payload, actor=actor
    )


def register(name: str = "bob", role: str = "user", actor: Actor = ADMIN, existing: Any = None) -> User:
    payload = {"username": name, "role": role, "credential_id": "c-1"}
    user = execute(envelope("RegisterUser", str(user_id_for(name)), payload, actor), existing)
    assert isinstance(user, User)
    return user


def refusal(command: CommandEnvelope, aggregate: Any) -> str:
    with pytest.raises(DomainError) as caught:
        execute(command, aggregate)
    return caught.value.code


def test_register_records_registered_without_any_password_material() -> None:
    events = register().collect_events()
    assert [type(e).__name__ for e in events] == ["Registered"]
    assert set(vars(events[0])) >= {"username", "role", "credential_id"}
    assert not any("hash" in key or "password" in key for key in vars(events[0]))


def test_a_second_registration_of_one_name_is_a_conflict_whatever_its_case() -> None:
    bob = register("bob")
    bob.collect_events()
    assert user_id_for("BOB") == user_id_for("bob")
    payload = {"username": "BOB", "role": "user", "credential_id": "c-2"}
    assert refusal(envelope("RegisterUser", str(user_id_for("BOB")), payload), bob) == "conflict"


def test_only_admins_register_and_change_roles() -> None:
    payload = {"username": "eve", "role": "admin", "credential_id": "c"}
    assert refusal(envelope("RegisterUser", str(user_id_for("eve")), payload, ALICE), None) == "forbidden"
    bob = register()
    assert refusal(envelope("ChangeRole", str(bob.id), {"role": "admin"}, ALICE), bob) == "forbidden"
    assert refusal(envelope("DisableUser", str(bob.id), {}, ALICE), bob) == "forbidden"


def test_registration_under_another_id_is_refused() -> None:
    payload = {"username": "bob", "role": "user", "credential_id": "c"}
    assert refusal(envelope("RegisterUser", str(uuid4()), payload), None) == "forbidden"


def test_invalid_role_and_username_are_refused() -> None:
    assert (
        refusal(
            envelope(
                "RegisterUser", str(user_id_for("x y")), {"username": "x y", "role": "user", "credential_id": "c"}
            ),
            None,
        )
        == "invalid"
    )
    assert (
        refusal(
            envelope(
                "RegisterUser",
                str(user_id_for("ok-name")),
                {"username": "ok-name", "role": "root", "credential_id": "c"},
            ),
            None,
        )
        == "invalid"
    )


def test_role_change_disable_enable_and_password_change_record_their_events() -> None:
    bob = register()
    bob.collect_events()
    for command, payload in (
        ("ChangeRole", {"role": "viewer"}),
        ("DisableUser", {}),
        ("DisableUser", {}),  # already disabled: nothing new
        ("EnableUser", {}),
        ("ChangePassword", {"credential_id": "c-2"}),
    ):
        execute(envelope(command, str(bob.id), payload), bob)
    assert [type(e).__name__ for e in bob.collect_events()] == ["RoleChanged", "Disabled", "Enabled", "PasswordChanged"]
    assert (bob.role, bob.disabled, bob.credential_id) == ("viewer", False, "c-2")


def test_a_user_changes_only_their_own_password() -> None:
    bob = register()
    bob.collect_events()
    self_actor = Actor(str(bob.id), "user")
    execute(envelope("ChangePassword", str(bob.id), {"credential_id": "c-3"}, self_actor), bob)
    assert refusal(envelope("ChangePassword", str(bob.id), {"credential_id": "c-4"}, ALICE), bob) == "forbidden"


def test_an_admin_cannot_disable_or_demote_themselves() -> None:
    me = register("boss", "admin")
    me.collect_events()
    actor = Actor(str(me.id), "admin")
    assert refusal(envelope("DisableUser", str(me.id), {}, actor), me) == "forbidden"
    assert refusal(envelope("ChangeRole", str(me.id), {"role": "user"}, actor), me) == "forbidden"


def test_user_commands_on_a_missing_user_are_not_found() -> None:
    assert refusal(envelope("DisableUser", str(uuid4()), {}), None) == "not_found"


INGEST = {"content_type": "text/plain", "content_hash": "ab" * 32, "size": 5, "location": "blob://sha256/x"}
NOTE = {"annotation_id": "n", "annotation_type": "t", "content": 1}


def test_only_the_owner_or_an_admin_changes_a_data_object() -> None:
    object_id = str(uuid4())
    obj = execute(envelope("IngestData", object_id, INGEST, ALICE), None)
    obj.collect_events()
    mallory = Actor("mallory", "user")
    # To anyone else the object does not exist, as reading it: also with an expected version, whose
    # conflict would otherwise tell its current version.
    assert refusal(envelope("AnnotateObject", object_id, NOTE, mallory), obj) == "not_found"
    assert refusal(envelope("DeleteObject", object_id, {}, mallory), obj) == "not_found"
    stale = msgspec.structs.replace(envelope("DeleteObject", object_id, {}, mallory), expected_version=5)
    assert refusal(stale, obj) == "not_found"
    assert refusal(msgspec.structs.replace(stale, actor=ALICE), obj) == "conflict"
    execute(envelope("AnnotateObject", object_id, NOTE, ALICE), obj)
    execute(envelope("DeleteObject", object_id, {}, ADMIN), obj)


def test_a_viewer_cannot_ingest() -> None:
    assert refusal(envelope("IngestData", str(uuid4()), INGEST, VIEWER), None) == "forbidden"


def test_data_commands_on_a_user_id_are_not_found() -> None:
    bob = register()
    bob.collect_events()
    assert refusal(envelope("AnnotateObject", str(bob.id), NOTE), bob) == "not_found"


def test_permissions_are_the_spec_table() -> None:
    assert ROLE_PERMISSIONS["admin"] == set(Permission)
    assert ROLE_PERMISSIONS["user"] == {Permission.READ, Permission.WRITE, Permission.EXECUTE}
    assert ROLE_PERMISSIONS["viewer"] == {Permission.READ}
    assert not has_permission("root", Permission.READ)
    assert can_see("admin", "a", "b") and can_see("user", "a", "a") and not can_see("viewer", "a", "b")


@pytest.mark.parametrize(
    ("text", "rule"),
    [("1000 per hour", Rule(1000, 3600)), ("100/minute", Rule(100, 60)), ("5 per seconds", Rule(5, 1))],
)
def test_rate_limit_rules_parse(text: str, rule: Rule) -> None:
    assert Rule.parse(text) == rule


ID = UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
TS = '{"_type_":"datetime_iso","_data_":"2026-01-02T03:04:05.678901+00:00"}'
E: Any = User
GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        E.Registered(
            originator_id=ID,
            originator_version=1,
            timestamp=AT,
            originator_topic="domain.user:User",
            username="bob",
            role="user",
            credential_id="c-1",
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.user:User","username":"bob","role":"user",'
        '"credential_id":"c-1"}',
    ),
    (
        E.RoleChanged(originator_id=ID, originator_version=2, timestamp=AT, role="admin"),
        '{"timestamp":' + TS + ',"role":"admin"}',
    ),
    (
        E.PasswordChanged(originator_id=ID, originator_version=3, timestamp=AT, credential_id="c-2"),
        '{"timestamp":' + TS + ',"credential_id":"c-2"}',
    ),
    (E.Disabled(originator_id=ID, originator_version=4, timestamp=AT), '{"timestamp":' + TS + "}"),
    (E.Enabled(originator_id=ID, originator_version=5, timestamp=AT), '{"timestamp":' + TS + "}"),
]


@pytest.mark.parametrize(("event", "golden"), GOLDEN, ids=lambda v: type(v).__qualname__)
def test_user_event_round_trips_through_its_golden_example(event: Aggregate.Event, golden: str) -> None:
    mapper = make_mapper()
    stored = mapper.to_stored_event(event)
    assert stored.state.decode() == golden
    assert stored.topic == f"domain.user:{type(event).__qualname__}"
    assert mapper.to_domain_event(stored) == event


def test_every_user_event_type_has_a_golden_example() -> None:
    declared = {
        name
        for name, value in vars(User).items()
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in {"Event", "Created"}
    }
    assert declared == {type(event).__name__ for event, _ in GOLDEN}


# --- the admin roster: the last admin stays ---------------------------------------------------------

A, B = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
ROSTER = str(ROSTER_ID)


def roster_command(kind: str, user_id: str, admins: list[str], actor: Actor, existing: Any) -> AdminRoster:
    roster = execute(envelope(kind, ROSTER, {"user_id": user_id, "admins": admins}, actor), existing)
    assert isinstance(roster, AdminRoster)
    return roster


def test_of_two_admins_demoting_each_other_the_second_is_refused() -> None:
    # Given a roster opened from the read model's two admins, when A unseats B, then B may not unseat A.
    roster = roster_command("UnseatAdmin", B, [A, B], Actor(A, "admin"), None)
    assert roster.admins == [A]
    assert (
        refusal(envelope("UnseatAdmin", ROSTER, {"user_id": A, "admins": [A, B]}, Actor(B, "admin")), roster)
        == "last_admin"
    )


def test_the_roster_ignores_the_senders_list_once_open_and_seats_once() -> None:
    roster = roster_command("SeatAdmin", B, [A], ADMIN, None)
    roster = roster_command("SeatAdmin", B, [A, B], ADMIN, roster)  # already seated: no new event
    assert roster.admins == [A, B] and roster.version == 2
    roster = roster_command("UnseatAdmin", "cccccccc-cccc-4ccc-8ccc-cccccccccccc", [], ADMIN, roster)  # not on it
    assert roster.admins == [A, B] and roster.version == 2


def test_only_another_admin_may_unseat_an_admin() -> None:
    assert (
        refusal(envelope("UnseatAdmin", ROSTER, {"user_id": A, "admins": [A, B]}, Actor(A, "admin")), None)
        == "forbidden"
    )
    assert refusal(envelope("SeatAdmin", ROSTER, {"user_id": A, "admins": [A]}, ALICE), None) == "forbidden"
    assert refusal(envelope("SeatAdmin", A, {"user_id": A, "admins": [A]}), None) == "not_found"
