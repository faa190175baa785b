"""The audit trail: every person's action (jobs posted, archives deleted, maintenance changed,
datastores provisioned and deleted, public keys stored) with who, when, what, how it went and
the request id, read back by `GET /audit` with filters and a cursor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import (
    DEFAULT_DATASTORE,
    access_claims,
    cookies_for,
    create_job,
    dies_after,
    faulty,
    info_claims,
    put_job,
    raising,
    run_job_service,
    service_config,
    write_config,
)

import job_service
from backends import StoreUnavailable
from backends.base import AuditEntry, AuditQuery

FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data"}
API_KEY = "the executor's key, long enough"
LOCAL_USER = {"userId": "local-user", "firstName": "Local", "lastName": "User"}


async def audit(client, query: str = "", status: int = 200, **request: Any) -> Any:
    response = await client.get(f"/audit{query}", **request)
    assert response.status == status, await response.text()
    return await response.json()


async def entries(client, query: str = "", **request: Any) -> list[dict[str, Any]]:
    """Every entry `GET /audit` answers for `query`, one page."""
    page = await audit(client, query, **request)
    assert page["next"] is None
    return page["entries"]


def public_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_each_action_is_audited_with_who_what_when_its_result_and_request_id(client, input_dir):
    # An archive with a known size and time, deleted by the admin UI.
    (input_dir / "MY_DATASET.tar").write_bytes(b"x" * 1234)
    os.utime(input_dir / "MY_DATASET.tar", (1_700_000_000, 1_700_000_000))
    before = datetime.now(UTC).isoformat(timespec="microseconds")
    requests = [
        ("POST", "/jobs", {"json": {"jobs": [{"operation": "ADD", "target": "A"}, {"operation": "NOPE"}]}}),
        ("DELETE", "/importable-datasets/MY_DATASET", {}),
        ("POST", "/maintenance-status", {"json": {"msg": "Upgrading", "paused": True}}),
        ("POST", "/datastores", {"json": FDB}),
        ("DELETE", "/datastores/no.ssb.fdb", {}),  # its keys job is in progress: 409
        (
            "POST",
            "/datastores/no.ssb.fdb/public-key",
            {"data": public_key_pem(), "headers": {"Content-Type": "application/x-pem-file"}},
        ),
    ]
    statuses = []
    for number, (method, path, options) in enumerate(requests):
        headers = {"X-Request-ID": f"request-{number}", **options.pop("headers", {})}
        response = await client.request(method, path, headers=headers, **options)
        statuses.append(response.status)
    assert statuses == [200, 200, 200, 200, 409, 200]

    trail = list(reversed(await entries(client)))  # newest first: read oldest first here
    assert [(entry["action"], entry["status"], entry["requestId"]) for entry in trail] == [
        ("jobs.posted", 200, "request-0"),
        ("archive.deleted", 200, "request-1"),
        ("maintenance.changed", 200, "request-2"),
        ("datastore.created", 200, "request-3"),
        ("datastore.deleted", 409, "request-4"),
        ("publicKey.stored", 200, "request-5"),
    ]
    assert all(entry["actor"] == LOCAL_USER and entry["credential"] == "local" for entry in trail)
    assert all(entry["at"] > before for entry in trail)
    posted, deleted, maintenance, created, refused, key = trail
    job_id = posted["details"]["jobs"][0]["jobId"]
    assert posted["datastoreRdn"] == DEFAULT_DATASTORE
    assert posted["details"]["jobs"] == [
        {"operation": "ADD", "target": "A", "result": "CREATED", "jobId": job_id},
        {"operation": "NOPE", "result": posted["details"]["jobs"][1]["result"]},
    ]
    assert posted["details"]["jobs"][1]["result"].startswith("FAILED: operation: ")
    assert deleted["details"] == {
        "archive": "MY_DATASET.tar",
        "bytes": 1234,
        "modifiedAt": "2023-11-14T22:13:20.000000+00:00",
    }
    assert maintenance["datastoreRdn"] is None and maintenance["details"] == {"msg": "Upgrading", "paused": True}
    assert created["datastoreRdn"] == "no.ssb.fdb" and created["details"]["name"] == "Forskningsdata"
    assert refused["datastoreRdn"] == "no.ssb.fdb"
    assert refused["outcome"] == "Datastore no.ssb.fdb has a job in progress"
    assert key["datastoreRdn"] == "no.ssb.fdb" and len(key["details"]["sha256"]) == 64


async def test_a_refused_post_is_audited_with_its_status_and_reason(client):
    response = await client.post("/jobs", json={"jobs": [], "extra": 1})
    assert response.status == 400

    [entry] = await entries(client)
    assert (entry["action"], entry["status"]) == ("jobs.posted", 400)
    assert entry["outcome"] == "extra: Unknown field." and entry["details"] == {}
    assert entry["requestId"] == response.headers["X-Request-ID"]


async def test_reads_and_the_executors_updates_are_not_audited(client):
    job_id = await create_job(client, operation="ADD", target="A")
    await put_job(client, job_id, status="validating")
    await client.get("/jobs")
    await client.get("/maintenance-status")
    assert [entry["action"] for entry in await entries(client)] == ["jobs.posted"]


async def test_details_are_bounded_whatever_the_request_held(client):
    await client.post("/maintenance-status", json={"msg": "m" * 100_000, "paused": False})
    [entry] = await entries(client)
    assert len(entry["details"]["msg"]) == 500 and entry["details"]["msg"].endswith("\u2026")


async def test_an_action_is_done_and_answered_when_the_trail_cannot_take_its_entry(make_client, caplog):
    client = await make_client(faulty(add_audit=lambda store: raising(StoreUnavailable("down"))))
    job_id = await create_job(client, operation="ADD", target="A")
    assert (await client.get(f"/jobs/{job_id}")).status == 200
    [record] = [record for record in caplog.records if "audit trail could not take" in record.getMessage()]
    assert job_id in record.getMessage()  # the whole entry, for an operator to find


async def test_an_action_whose_process_stops_before_it_answers_is_in_the_trail_after_the_next_start(
    make_client, monkeypatch
):
    # Processes sharing a MongoDB wait longer than any request takes before they append it.
    monkeypatch.setattr(job_service, "BEGUN_AUDIT_SECONDS", 0.0)
    client = await make_client(faulty(insert_job=dies_after("insert_job")))
    with contextlib.suppress(aiohttp.ClientError):
        await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "A"}]})
    await client.close()
    client = await make_client()
    [entry] = await entries(client)
    assert (entry["action"], entry["actor"], entry["status"]) == ("jobs.posted", LOCAL_USER, 0)
    assert entry["outcome"].startswith("Never answered: the service stopped first")
    assert [job["parameters"]["target"] for job in await (await client.get("/jobs")).json()] == ["A"]


def audit_entry(entry_id: str, at: str, status: int = 0) -> AuditEntry:
    return AuditEntry(
        id=entry_id,
        at=at,
        action="jobs.posted",
        datastoreRdn=DEFAULT_DATASTORE,
        actor=LOCAL_USER,
        credential="local",
        status=status,
        outcome="begun",
        requestId="req-1",
        details={},
    )


async def test_a_begun_entry_is_appended_once_unless_its_request_appended_it(store):
    answered = audit_entry("0" * 23 + "1", "2026-12-01T10:00:00.000000+00:00")
    cut_short = audit_entry("0" * 23 + "2", "2026-12-01T10:00:01.000000+00:00")
    await store.begin_audit(answered)
    await store.begin_audit(cut_short)
    assert await store.finish_begun_audit(answered["at"]) == 0  # none begun before then
    await store.add_audit({**answered, "status": 200, "outcome": "OK"})
    assert await store.finish_begun_audit("2026-12-02") == 1
    assert await store.finish_begun_audit("2026-12-02") == 0
    trail = [entry async for page in store.audit_entries(AuditQuery()) for entry in page]
    assert [(entry["id"], entry["status"]) for entry in trail] == [(cut_short["id"], 0), (answered["id"], 200)]


async def test_the_filters_combine(client):
    await create_job(client, operation="ADD", target="A")
    await client.post("/datastores", json=FDB)
    await client.post("/maintenance-status", json={"msg": "one", "paused": True})
    middle = (await entries(client))[0]["at"]
    await client.post("/maintenance-status", json={"msg": "two", "paused": False})

    def actions(trail):
        return [entry["action"] for entry in trail]

    assert actions(await entries(client, "?datastore=no.ssb.fdb")) == ["datastore.created"]
    assert actions(await entries(client, f"?datastore={DEFAULT_DATASTORE}")) == ["jobs.posted"]
    assert actions(await entries(client, "?action=maintenance.changed")) == ["maintenance.changed"] * 2
    assert len(await entries(client, "?actor=local-user")) == 4
    assert await entries(client, "?actor=someone-else") == []
    at_or_after = await entries(client, f"?action=maintenance.changed&from={middle.replace('+', '%2B')}")
    assert [entry["details"]["msg"] for entry in at_or_after] == ["two", "one"]
    before = await entries(client, f"?to={middle.replace('+00:00', 'Z')}")
    assert actions(before) == ["datastore.created", "jobs.posted"]
    # A time in another zone is the same instant.
    assert await entries(client, "?from=2999-01-01T01:00:00%2B01:00") == []


async def test_the_cursor_pages_through_once_each_while_entries_are_appended(client):
    for n in range(7):
        await client.post("/maintenance-status", json={"msg": f"before {n}", "paused": False})
    seen = []
    query = "?limit=3"
    while True:
        page, _ = await asyncio.gather(
            audit(client, query), client.post("/maintenance-status", json={"msg": "meanwhile", "paused": False})
        )
        seen += [entry["details"]["msg"] for entry in page["entries"]]
        if page["next"] is None:
            break
        query = f"?limit=3&cursor={page['next']}"
    before = [msg for msg in seen if msg.startswith("before")]
    assert before == [f"before {n}" for n in reversed(range(7))]  # each once, newest first
    assert len(seen) == len(set(seen) - {"meanwhile"}) + seen.count("meanwhile")
    ids = [entry["id"] for entry in await entries(client, "?limit=1000")]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))


async def test_a_page_holds_100_by_default_and_at_most_1000(client):
    await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": f"T{n}"} for n in range(3)]})
    assert len((await audit(client, "?limit=1"))["entries"]) == 1
    assert (await audit(client, "?limit=1000"))["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        "datastore=No.SSB",
        "action=jobs.deleted",
        "from=yesterday",
        "from=2026-01-01T00:00:00",  # no offset: which instant is meant?
        "to=2026-13-01T00:00:00Z",
        "cursor=not-a-cursor",
        "cursor=AAAA",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "actr=local",
        "actor=a&actor=b",
    ],
)
async def test_a_bad_query_parameter_is_a_400_that_names_it(client, query):
    answer = await audit(client, f"?{query}", status=400)
    assert query.split("=")[0] in answer["message"]


@pytest.fixture
async def platform(auth_client, key_server):
    """Auth on as the platform runs it: an executor key, one provisioner."""
    keys, _ = key_server
    client = await auth_client(api_key=API_KEY, audience="datastore-api-jobs", provisioners=["provisioner"])
    return client, keys


def administrator(keys, *datastores: str) -> dict[str, str]:
    return cookies_for(keys, access=access_claims(aud=["datastore-api-jobs", *datastores]))


def provisioner(keys) -> dict[str, str]:
    role = {"accreditation/role": "role/datastoreprovisioner", "user/uuid": "provisioner"}
    return cookies_for(
        keys,
        access=access_claims(aud="datastore-api-provision", **role),
        info=info_claims(**{"user/uuid": "provisioner"}),
    )


async def test_an_administrator_sees_their_datastores_and_the_key_sees_all(platform):
    client, keys = platform
    for rdn in ("no.ssb.fdb", "no.other"):
        response = await client.post("/datastores", json={**FDB, "rdn": rdn}, cookies=provisioner(keys))
        assert response.status == 200, await response.text()
    response = await client.post(
        "/maintenance-statuses", json={"msg": "pause", "paused": True}, cookies=administrator(keys, "no.ssb")
    )
    assert response.status == 200
    response = await client.post(
        "/maintenance-statuses", json={"msg": "go", "paused": False}, headers={"X-API-Key": API_KEY}
    )
    assert response.status == 200

    everything = await entries(client, headers={"X-API-Key": API_KEY})
    assert [(entry["datastoreRdn"], entry["credential"]) for entry in everything] == [
        (None, "apiKey"),
        (None, "token"),
        ("no.other", "token"),
        ("no.ssb.fdb", "token"),
    ]
    assert everything[2]["actor"]["userId"] == "provisioner" and everything[1]["actor"]["firstName"] == "Ola"
    seen = await entries(client, cookies=administrator(keys, "no.ssb.fdb"))
    assert [entry["datastoreRdn"] for entry in seen] == [None, None, "no.ssb.fdb"]
    assert await entries(client, "?datastore=no.other", cookies=administrator(keys, "no.ssb.fdb")) == []
    await audit(client, status=401)
    other_role = access_claims(aud="datastore-api-jobs", **{"accreditation/role": "role/somethingelse"})
    await audit(client, status=403, cookies=cookies_for(keys, access=other_role))


async def test_maintenance_statuses_say_who_set_them_unless_the_executor_did(platform):
    client, keys = platform
    await client.post("/maintenance-statuses", json={"msg": "pause", "paused": True}, cookies=administrator(keys))
    latest = await (await client.get("/maintenance-statuses/latest")).json()
    assert latest["setBy"] == {"userId": info_claims()["user/uuid"], "firstName": "Ola", "lastName": "Nordmann"}
    await client.post("/maintenance-statuses", json={"msg": "go", "paused": False}, headers={"X-API-Key": API_KEY})
    latest = await (await client.get("/maintenance-statuses/latest")).json()
    assert set(latest) == {"msg", "paused", "timestamp"}  # what today's executor reads, and no one set it


async def test_a_verified_caller_is_audited_and_an_unverified_one_is_not(platform):
    client, keys = platform
    assert (await client.post("/jobs", json={"jobs": []})).status == 401
    assert (await client.post("/jobs", json={"jobs": []}, cookies=administrator(keys))).status == 200
    [entry] = await entries(client, headers={"X-API-Key": API_KEY})
    assert entry["status"] == 200 and entry["credential"] == "token"


async def test_the_trail_survives_a_restart(make_client):
    client = await make_client()
    await create_job(client, operation="ADD", target="A")
    trail = await entries(client)
    await client.close()
    client = await make_client()
    assert await entries(client) == trail


async def test_an_export_and_import_carries_the_trail(make_client, storage, input_dir, tmp_path):
    client = await make_client()
    await create_job(client, operation="ADD", target="A")
    await client.post("/maintenance-status", json={"msg": "m", "paused": False})
    trail = await entries(client)
    await client.close()
    config = write_config(tmp_path / "config.toml", service_config(storage, input_dir))
    backup = tmp_path / "backup.jsonl"
    assert run_job_service(config, "export", "--to", str(backup)).returncode == 0
    assert sum('"collection": "audit"' in line for line in backup.read_text().splitlines()) == 2

    replaced = run_job_service(config, "import", "--from", str(backup), "--replace")

    assert replaced.returncode == 0, replaced.stderr
    client = await make_client()
    assert await entries(client) == trail


def test_an_audit_entry_twice_in_an_export_is_refused(storage, input_dir, tmp_path):
    entry = {
        "id": "0" * 24,
        "at": "2026-11-29T10:00:00.000000+00:00",
        "action": "jobs.posted",
        "datastoreRdn": None,
        "actor": LOCAL_USER,
        "credential": "local",
        "status": 200,
        "outcome": "OK",
        "requestId": "r",
        "details": {},
    }
    backup = tmp_path / "twice.jsonl"
    line = json.dumps({"collection": "audit", "document": entry}) + "\n"
    backup.write_text(line + line)
    config = write_config(tmp_path / "config.toml", service_config(storage, input_dir))
    refused = run_job_service(config, "import", "--from", str(backup))
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(f"{backup}:2: audit: a second audit entry {'0' * 24}")
