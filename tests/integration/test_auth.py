"""Authentication against the real server: every 401 case, refresh rotation, logout, disabling, sign-up races."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from api.revocations import RevokedTokens
from infra.runtime.settings import Settings
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import login
from tests.integration.harness import ROOT, eventually, query
from tests.integration.users import PASSWORD, client_for, create_user

pytestmark = pytest.mark.shared_system  # one system for the module's tests


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == 401 and error["reason"] == "unauthorized"
    assert error["request_id"] == response.headers["x-request-id"]


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def admin_id(anonymous: httpx.AsyncClient) -> str:
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"]


async def test_no_token_is_401_with_a_bearer_challenge(anonymous: httpx.AsyncClient) -> None:
    assert_401(await anonymous.get(f"/api/v1/data/{uuid.uuid4()}"))
    assert_401(await anonymous.post("/api/v1/ingest", json={"content": "x", "content_type": "text/plain"}))
    assert_401(await anonymous.get("/api/v1/auth/me", headers={"Authorization": "Basic abc"}))
    assert (await anonymous.get("/health")).status_code == 200


async def test_bad_tokens_are_401(anonymous: httpx.AsyncClient, settings: Settings) -> None:
    secret = settings.authentication.secret_key
    sub = await admin_id(anonymous)
    now = int(time.time())
    good = {"sub": sub, "role": "admin", "iat": now, "exp": now + 600, "jti": "j"}
    valid = jwt.encode(good, secret, algorithm="HS256")
    assert (await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {valid}"})).status_code == 200
    header, _payload, signature = valid.split(".")
    cases = {
        "tampered payload": f"{header}.{b64({**good, 'role': 'admin', 'sub': str(uuid.uuid4())})}.{signature}",
        "bad signature": jwt.encode(good, "another secret of at least thirty-two bytes!", algorithm="HS256"),
        "expired": jwt.encode({**good, "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}.",
        "other algorithm": jwt.encode(good, secret, algorithm="HS512"),
        "missing sub": jwt.encode({k: v for k, v in good.items() if k != "sub"}, secret, algorithm="HS256"),
        "sub not a user": jwt.encode({**good, "sub": str(uuid.uuid4())}, secret, algorithm="HS256"),
        "garbage": "not-a-jwt",
    }
    for name, token in cases.items():
        response = await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert_401(response)


async def test_wrong_password_and_unknown_user_get_the_same_401(anonymous: httpx.AsyncClient) -> None:
    wrong = await anonymous.post("/api/v1/auth/login", json={"username": ADMIN_USERNAME, "password": "nope-nope"})
    unknown = await anonymous.post("/api/v1/auth/login", json={"username": "nobody-here", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]


async def test_login_returns_the_documented_token_response(anonymous: httpx.AsyncClient, settings: Settings) -> None:
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 30 * 60
    claims = jwt.decode(tokens["access_token"], settings.authentication.secret_key, algorithms=["HS256"])
    assert set(claims) == {"sub", "role", "exp", "iat", "jti", "gen"} and claims["role"] == "admin"
    me = await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["username"] == ADMIN_USERNAME and me.json()["rate_limit"]["limit"] > 0


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(anonymous: httpx.AsyncClient) -> None:
    first = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    rotated = await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"]
    # The first token was rotated away: presenting it again is a replay...
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}))
    # ...which revokes the whole family, including the current token.
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}))
    # Another login (another family) is unaffected.
    other = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    ok = await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert ok.status_code == 200


async def test_logout_revokes_the_refresh_token(anonymous: httpx.AsyncClient) -> None:
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=bearer)).status_code == 200
    out = await anonymous.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=bearer)
    assert out.status_code == 204
    assert_401(await anonymous.get("/api/v1/auth/me", headers=bearer))
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": "made.up"}))


async def test_logout_revocations_are_mirrored_in_every_process(services: dict[str, str]) -> None:
    """Two mirrors on one Redis stand for two API processes: a revocation made through one is known
    to the other from memory; one that existed before a mirror started is loaded; while a mirror's
    subscription is down it answers "unknown" (callers then ask Redis), and once resubscribed it has
    caught up with what was revoked meanwhile."""
    redis = aioredis.from_url(services["REDIS_URL"])
    name = f"mirror-{uuid.uuid4().hex[:12]}"
    other = aioredis.from_url(services["REDIS_URL"], client_name=name)  # the second process's connections
    prefix = f"t{uuid.uuid4().hex[:12]}"
    expires = int(time.time()) + 600
    first, second = RevokedTokens(redis, prefix), RevokedTokens(other, prefix)
    try:
        await first.revoke("before-start", expires)
        assert second.known("before-start") is None  # not subscribed yet: cannot tell
        assert await second.revoked("before-start")  # ... so it asks Redis
        first.start()
        second.start()

        async def synced() -> bool:
            return first.known("x") is not None and second.known("x") is not None

        await eventually(synced, what="both mirrors subscribed and loaded")
        assert second.known("before-start") is True and second.known("never-revoked") is False
        await first.revoke("through-first", expires)
        assert first.known("through-first") is True  # the process that served the logout: at once

        async def second_knows(jti: str) -> bool:
            return second.known(jti) is True

        await eventually(lambda: second_knows("through-first"), what="the announcement")
        await first.revoke("already-expired", int(time.time()) - 1)
        assert first.known("already-expired") is False and not await first.revoked("already-expired")
        # Cut the second mirror's subscription; the announcement made meanwhile cannot reach it.
        cut = [c for c in await redis.client_list(_type="pubsub") if c["name"] == name]
        assert len(cut) == 1
        await redis.client_kill_filter(_id=cut[0]["id"])
        await first.revoke("during-outage", expires)
        await eventually(lambda: second_knows("during-outage"), what="the revocation made during the outage")
        assert second.known("through-first") is True and second.known("never-revoked") is False
    finally:
        await first.stop()
        await second.stop()
        await redis.aclose()
        await other.aclose()


async def test_a_disabled_users_tokens_stop_working_at_once(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    user = await create_user(client, "soon-disabled")
    tokens = await login(anonymous, "soon-disabled", PASSWORD)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=bearer)).status_code == 200
    patched = await client.patch(f"/api/v1/users/{user['user_id']}", json={"disabled": True})
    assert patched.status_code == 200 and patched.json()["disabled"] is True
    assert_401(await anonymous.get("/api/v1/auth/me", headers=bearer))
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    again = await anonymous.post("/api/v1/auth/login", json={"username": "soon-disabled", "password": PASSWORD})
    assert again.status_code == 401
    enabled = await client.patch(f"/api/v1/users/{user['user_id']}", json={"disabled": False})
    assert enabled.status_code == 200
    # Enabled again, the user logs in anew: the tokens held before the disable stay refused.
    assert_401(await anonymous.get("/api/v1/auth/me", headers=bearer))
    fresh = await login(anonymous, "soon-disabled", PASSWORD)
    fresh_bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=fresh_bearer)).status_code == 200


async def test_concurrent_registrations_of_one_username_have_one_winner(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, settings: Settings
) -> None:
    async def register(i: int) -> httpx.Response:
        body = {"username": "Contested" if i % 2 else "contested", "password": f"password-{i}-xxxx", "role": "user"}
        return await client.post("/api/v1/users", json=body)

    responses = await asyncio.gather(*(register(i) for i in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 7, [r.text for r in responses]
    winner = next(i for i, r in enumerate(responses) if r.status_code == 201)
    await login(anonymous, "contested", f"password-{winner}-xxxx")
    rows = await query(settings, "SELECT count(*) FROM users WHERE lower(username) = 'contested'")
    assert rows == [(1,)]


async def test_no_password_or_hash_reaches_events_or_responses(client: httpx.AsyncClient, settings: Settings) -> None:
    created = await create_user(client, "hash-check")
    listed = await client.get("/api/v1/users")
    for text in (json.dumps(created), listed.text):
        assert PASSWORD not in text and "argon2" not in text and "credential" not in text
    rows = await query(settings, "SELECT payload::text FROM audit_log WHERE event_type LIKE 'User.%%'")
    assert rows and all(PASSWORD not in r[0] and "argon2" not in r[0] for r in rows)


@pytest.mark.parametrize("password", ["short", "x" * 2000])
async def test_unusable_passwords_are_refused(client: httpx.AsyncClient, password: str) -> None:
    response = await client.post("/api/v1/users", json={"username": "pw-user", "password": password})
    assert response.status_code == 400


async def test_changing_ones_password_replaces_the_old_one(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(client, "changer")
    other_session = await login(anonymous, "changer", PASSWORD)
    other = {"Authorization": f"Bearer {other_session['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=other)).status_code == 200
    async with await client_for(anonymous, "changer") as user:
        wrong = await user.post(
            "/api/v1/auth/password", json={"current_password": "not it at all", "new_password": "brand new secret"}
        )
        assert wrong.status_code == 403
        changed = await user.post(
            "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": "brand new secret"}
        )
        assert changed.status_code == 200, changed.text
        # Every token from before the change is refused, this session's too; it carries on with the new ones.
        assert_401(await user.get("/api/v1/auth/me"))
        fresh = {"Authorization": f"Bearer {changed.json()['access_token']}"}
        assert (await anonymous.get("/api/v1/auth/me", headers=fresh)).json()["username"] == "changer"
        new_refresh = {"refresh_token": changed.json()["refresh_token"]}
        refreshed = await anonymous.post("/api/v1/auth/refresh", json=new_refresh)
        assert refreshed.status_code == 200, refreshed.text
    assert_401(await anonymous.get("/api/v1/auth/me", headers=other))  # the other session's access token
    old = await anonymous.post("/api/v1/auth/login", json={"username": "changer", "password": PASSWORD})
    assert old.status_code == 401
    assert_401(await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": other_session["refresh_token"]}))
    await login(anonymous, "changer", "brand new secret")


async def test_docs_need_no_token(anonymous: httpx.AsyncClient) -> None:
    schema = await anonymous.get("/api/docs/openapi.json")
    assert schema.status_code == 200
    assert "Bearer" in schema.json()["components"]["securitySchemes"]


@pytest.mark.parametrize("secret", ["", "only-31-bytes-long-secret-key!!"])
def test_production_refuses_to_start_with_a_short_secret(isolated_env: dict[str, str], secret: str) -> None:
    env = {**os.environ, **isolated_env, "PIPELINE_SERVER_ENVIRONMENT": "production", "SECRET_KEY": secret}
    env["PIPELINE_PORT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "api"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "SECRET_KEY must be set and at least 32 bytes in production" in done.stdout + done.stderr
