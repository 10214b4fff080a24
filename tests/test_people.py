"""People: accounts, roles, per-user API keys, private and shared KBs, private conversations.

A real server with accounts made by the real CLI (`python -m kb users add`), real keys over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_settings
from tests.test_api import FACT_FILE, FACT_TEXT, assert_error, wait_job
from tests.test_cli import kb_cli


def cli_user(data: Path, name: str, *flags: str) -> str:
    out = kb_cli("users", "add", name, *flags, data_dir=data)
    key = out.stdout.strip()
    assert key.startswith("kbc_") and len(key) > 40, out.stdout
    return key


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("people") / "data"
    keys = {"boss": cli_user(data, "boss", "--admin"), "alice": cli_user(data, "alice"), "bob": cli_user(data, "bob")}
    with LiveServer(make_settings(data, max_tokens=16)) as server:
        clients = {n: httpx.Client(base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {k}"})
                   for n, k in keys.items()}
        yield {"server": server, "keys": keys, "data": data, **clients}
        for c in clients.values():
            c.close()


def upload(client: httpx.Client, kb: str, tmp_path: Path) -> None:
    f = tmp_path / FACT_FILE
    f.write_text(FACT_TEXT, encoding="utf-8")
    r = client.post(f"/api/kb/{kb}/files", files={"files": (f.name, f.read_bytes())})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "done"


def test_without_a_credential_nothing_answers_but_health(people: dict[str, Any]) -> None:
    with httpx.Client(base_url=people["server"].url) as anon:
        assert anon.get("/health").status_code == 200
        assert_error(anon.get("/api/kb"), 401)
        assert_error(anon.get("/api/conversations"), 401)
        assert_error(anon.get("/api/kb", headers={"Authorization": "Bearer kbc_" + "x" * 43}), 401)
    me = people["alice"].get("/api/me").json()
    assert (me["name"], me["role"]) == ("alice", "member")


def test_private_kb_is_invisible_to_others_and_sharing_opens_it_read_only(people: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    alice, bob, boss = people["alice"], people["bob"], people["boss"]
    r = alice.post("/api/kb", json={"name": "notes"})
    assert r.status_code == 201 and (r.json()["owner"], r.json()["visibility"]) == ("alice", "private"), r.text
    upload(alice, "notes", tmp_path)
    query = {"query": "Zorblat reactor", "threshold": 0.0}

    # Private: for bob it does not exist, whatever the route.
    assert "notes" not in [k["name"] for k in bob.get("/api/kb").json()["knowledge_bases"]]
    assert_error(bob.get("/api/kb/notes"), 404)
    assert_error(bob.post("/api/kb/notes/search", json=query), 404)
    assert_error(bob.get("/api/kb/notes/files"), 404)
    assert_error(bob.post("/api/kb/notes/files", files={"files": ("x.md", b"# x")}), 404)
    assert_error(bob.delete("/api/kb/notes"), 404)
    assert "kb:notes" not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
    assert_error(bob.post("/v1/chat/completions", json={"model": "kb:notes",
                                                        "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert_error(bob.post("/api/conversations", json={"knowledge_bases": ["notes"]}), 404)
    hit = alice.post("/api/kb/notes/search", json=query).json()["hits"][0]
    assert_error(bob.get(f"/api/files/notes/{hit['file_id']}"), 404)
    jobs = bob.get("/api/jobs").json()["jobs"]
    assert all(j["kb"] != "notes" for j in jobs)
    # An admin sees everything.
    assert boss.post("/api/kb/notes/search", json=query).json()["hits"][0]["file"] == FACT_FILE

    # Shared with bob: he reads and searches it, but only its owner (or an admin) changes it.
    assert_error(bob.patch("/api/kb/notes", json={"visibility": "everyone"}), 404)
    r = alice.patch("/api/kb/notes", json={"visibility": "shared", "shared_with": ["bob"]})
    assert r.status_code == 200 and r.json()["shared_with"] == ["bob"], r.text
    assert bob.get("/api/kb/notes").status_code == 200
    assert bob.post("/api/kb/notes/search", json=query).json()["hits"][0]["file"] == FACT_FILE
    assert bob.get(f"/api/files/notes/{hit['file_id']}").content == FACT_TEXT.encode()
    assert_error(bob.post("/api/kb/notes/files", files={"files": ("x.md", b"# x")}), 403)
    assert_error(bob.delete(f"/api/kb/notes/files/{FACT_FILE}"), 403)
    assert_error(bob.patch("/api/kb/notes", json={"prompt": "mine now"}), 403)
    assert_error(bob.delete("/api/kb/notes"), 403)
    assert alice.get("/api/kb/notes/files").json()["files"][0]["status"] == "indexed"  # nothing changed

    # Unshared again: gone for bob.
    assert alice.patch("/api/kb/notes", json={"visibility": "private"}).status_code == 200
    assert_error(bob.get("/api/kb/notes"), 404)


def test_conversations_are_private_to_their_owner(people: dict[str, Any]) -> None:
    alice, bob, boss = people["alice"], people["bob"], people["boss"]
    cid = alice.post("/api/conversations", json={"title": "alice's"}).json()["id"]
    answer = alice.post(f"/api/conversations/{cid}/messages?stream=false", json={"content": "Say hi."}).json()
    for who in (bob, boss):  # private even from admins
        assert_error(who.get(f"/api/conversations/{cid}"), 404)
        assert_error(who.patch(f"/api/conversations/{cid}", json={"title": "taken"}), 404)
        assert_error(who.post(f"/api/conversations/{cid}/messages", json={"content": "hi"}), 404)
        assert_error(who.post(f"/api/messages/{answer['id']}/feedback", json={"rating": -1}), 404)
        assert_error(who.delete(f"/api/conversations/{cid}"), 404)
        assert cid not in [c["id"] for c in who.get("/api/conversations").json()["conversations"]]
    assert alice.get(f"/api/conversations/{cid}").json()["title"] == "alice's"


def test_a_revoked_key_stops_working_at_once(people: dict[str, Any]) -> None:
    alice = people["alice"]
    r = alice.post("/api/me/keys", json={"label": "laptop"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"].startswith(new["prefix"]) and new["label"] == "laptop"
    listed = alice.get("/api/me/keys").json()["keys"]
    assert new["id"] in [k["id"] for k in listed] and all("key" not in k for k in listed)  # shown once only
    with httpx.Client(base_url=people["server"].url, headers={"Authorization": f"Bearer {new['key']}"}) as laptop:
        assert laptop.get("/api/me").json()["name"] == "alice"
        assert_error(people["bob"].delete(f"/api/me/keys/{new['id']}"), 404)  # not bob's key
        assert alice.delete(f"/api/me/keys/{new['id']}").json()["revoked"] is True
        assert_error(laptop.get("/api/me"), 401)
        assert_error(laptop.get("/api/kb"), 401)
    assert alice.get("/api/me").status_code == 200  # her other key still works


def test_only_admins_manage_users(people: dict[str, Any]) -> None:
    assert_error(people["alice"].get("/api/users"), 403)
    assert_error(people["alice"].post("/api/users", json={"name": "mallory", "role": "admin"}), 403)
    r = people["boss"].post("/api/users", json={"name": "carol", "password": "carol-pass-1"})
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=people["server"].url, headers={"Authorization": f"Bearer {r.json()['key']}"}) as c:
        assert c.get("/api/me").json() == {"id": r.json()["id"], "name": "carol", "role": "member"}
    assert "carol" in [u["name"] for u in people["boss"].get("/api/users").json()["users"]]
    assert_error(people["boss"].post("/api/users", json={"name": "carol"}), 409)


def test_login_rules_bind_account_names_to_their_own_credentials(tmp_path: Path) -> None:
    from api.security import AccessPolicy
    from kb.db import Database
    from kb.users import Users

    users = Users(Database(f"sqlite:///{tmp_path / 'kb.db'}"))
    bob = users.add("bob", "member", "bob-password-1")
    alice = users.add("alice")
    bob_key, _ = users.issue_key(bob)
    alice_key, _ = users.issue_key(alice)
    policy = AccessPolicy.from_settings(make_settings(tmp_path / "d", api_keys=["settings-key"]), users)
    assert policy.enabled
    assert policy.ui_login("bob", "bob-password-1") and policy.ui_login("bob", bob_key)
    assert not policy.ui_login("bob", alice_key)  # another account's key
    assert not policy.ui_login("bob", "settings-key")  # an account's name is not open to settings credentials
    assert not policy.ui_login("bob", "wrong-password")
    assert policy.ui_login("whoever", "settings-key") and policy.ui_principal("whoever") == users.local_admin()
    assert policy.ui_principal("bob") == bob
    users.set_password("admin", "admin-password-1")
    assert policy.ui_login("admin", "admin-password-1") and policy.ui_login("admin", "settings-key")
    assert policy.principal(f"Bearer {alice_key}") == alice
    assert policy.principal("Bearer settings-key") == users.local_admin()
    assert policy.principal("Bearer kbc_nope") is None
