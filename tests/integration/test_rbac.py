"""Authorization against the real server: role permissions (403) and ownership of data objects."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.users import client_for, create_user

pytestmark = pytest.mark.shared_system  # one system for the module's tests

BODY = {"content": "owned content", "content_type": "text/plain"}
NOTE = {"annotation_type": "comment", "content": "hi"}


async def test_a_viewer_only_reads(client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    await create_user(client, "a-viewer", "viewer")
    async with await client_for(anonymous, "a-viewer") as viewer:
        refused = await viewer.post("/api/v1/ingest", json=BODY)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["reason"] == "forbidden"
        assert (await viewer.get("/api/v1/auth/me")).json()["role"] == "viewer"


async def test_only_admins_manage_users(client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    created = await create_user(client, "plain-user")
    async with await client_for(anonymous, "plain-user") as user:
        assert (await user.get("/api/v1/users")).status_code == 403
        body = {"username": "sneaky", "password": "long enough pw", "role": "admin"}
        assert (await user.post("/api/v1/users", json=body)).status_code == 403
        patch = await user.patch(f"/api/v1/users/{created['user_id']}", json={"role": "admin"})
        assert patch.status_code == 403
    assert (await client.get("/api/v1/users")).status_code == 200


async def test_another_users_object_is_invisible_and_unchangeable(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(client, "owner-one")
    await create_user(client, "owner-two")
    async with await client_for(anonymous, "owner-one") as one, await client_for(anonymous, "owner-two") as two:
        created = (await one.post("/api/v1/ingest", json=BODY)).json()
        url = f"/api/v1/data/{created['object_id']}"
        token = {"X-Consistency-Token": created["position"]}
        assert (await one.get(url, headers=token)).status_code == 200
        hidden = await two.get(url, headers=token)
        assert hidden.status_code == 404
        # Changing it is 404 too, as for an id that names nothing, even with If-Match (a 409 would tell
        # its version): ids cannot be probed by writing to them.
        annotate = await two.post(f"{url}/annotations", json=NOTE)
        assert annotate.status_code == 404 and annotate.json()["error"]["reason"] == "not_found"
        assert (await two.delete(url)).status_code == 404
        assert (await two.delete(url, headers={"If-Match": "7"})).status_code == 404
        # The owner and an admin may.
        assert (await one.post(f"{url}/annotations", json=NOTE)).status_code == 201
        assert (await client.get(url, headers=token)).status_code == 200
        assert (await client.post(f"{url}/annotations", json=NOTE)).status_code == 201
        assert (await one.delete(url)).status_code == 200


async def test_a_demoted_user_loses_write_on_the_next_request(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    created = await create_user(client, "demoted")
    async with await client_for(anonymous, "demoted") as user:
        assert (await user.post("/api/v1/ingest", json=BODY)).status_code == 201
        patched = await client.patch(f"/api/v1/users/{created['user_id']}", json={"role": "viewer"})
        assert patched.status_code == 200 and patched.json()["role"] == "viewer"
        assert (await user.post("/api/v1/ingest", json=BODY)).status_code == 403
