"""A job's timeline: its phases from the `Set status` lines of its log, on new and adopted history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import DEFAULT_DATASTORE, access_claims, cookies_for, create_job, faulty, put_job, raising

from backends import StoreUnavailable
from job_service import STORE

#: An instant of the adopted histories below, well in the past.
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
API_KEY = "the executor's key, long enough"
FDB = "no.ssb.fdb"


def at(minutes: float) -> str:
    """The time `minutes` after T0, as the stores write times."""
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="microseconds")


def ago(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="microseconds")


def job_document(job_id: str, status: str, created_at: str, *log: tuple[str, str], **overrides: Any) -> dict:
    """A job as a store holds it, with its log as (at, message) pairs."""
    return {
        "jobId": job_id,
        "datastoreRdn": DEFAULT_DATASTORE,
        "status": status,
        "parameters": {"operation": "ADD", "target": f"DATASET_{job_id}"},
        "log": [{"at": time, "message": message} for time, message in log],
        "createdAt": created_at,
        "createdBy": {"userId": "u", "firstName": "F", "lastName": "L"},
        **overrides,
    }


async def timeline_of(client, job_id: str, prefix: str = "") -> dict:
    response = await client.get(f"{prefix}/jobs/{job_id}/timeline")
    assert response.status == 200, await response.text()
    return await response.json()


def phases(timeline: dict) -> list[tuple]:
    return [(phase["status"], phase["enteredAt"], phase["leftAt"], phase["seconds"]) for phase in timeline["phases"]]


async def add_datastore(client, rdn: str = FDB) -> None:
    datastore = {"rdn": rdn, "name": "Forskningsdata", "description": "", "directory": f"/srv/{rdn}"}
    await client.app[STORE].add_datastore({**datastore, "bumpEnabled": False, "deleted": False})


async def test_a_job_moved_on_over_http_has_a_phase_per_status_each_ending_where_the_next_begins(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    for status in ("validating", "built", "importing", "completed"):
        await put_job(client, job_id, status=status, log=f"now {status}")
    job = await (await client.get(f"/jobs/{job_id}")).json()
    timeline = await timeline_of(client, job_id)

    assert [phase["status"] for phase in timeline["phases"]] == [
        "queued",
        "validating",
        "built",
        "importing",
        "completed",
    ]
    status_lines = [entry["at"] for entry in job["log"] if entry["message"].startswith("Set status: ")]
    assert [phase["enteredAt"] for phase in timeline["phases"]] == [job["createdAt"], *status_lines]
    assert [phase["leftAt"] for phase in timeline["phases"]] == [*status_lines, status_lines[-1]]
    completed = timeline["phases"][-1]
    assert completed["seconds"] == 0  # a final phase ends as it begins
    assert timeline["queuedSeconds"] == timeline["phases"][0]["seconds"]
    assert timeline["totalSeconds"] == pytest.approx(timeline["queuedSeconds"] + timeline["workingSeconds"])
    assert timeline["totalSeconds"] == pytest.approx(
        (datetime.fromisoformat(completed["enteredAt"]) - datetime.fromisoformat(job["createdAt"])).total_seconds()
    )
    assert {key: timeline[key] for key in ("jobId", "datastoreRdn", "status", "reentries")} == {
        "jobId": job_id,
        "datastoreRdn": DEFAULT_DATASTORE,
        "status": "completed",
        "reentries": [],
    }


async def test_a_job_in_progress_ends_in_an_open_phase_counted_up_to_now(client):
    job = job_document("1", "validating", ago(60), (ago(30), "Set status: validating"))
    await client.app[STORE].load_collection("inprogress", [job])
    timeline = await timeline_of(client, "1")
    [queued, validating] = timeline["phases"]
    assert (queued["status"], queued["seconds"]) == ("queued", pytest.approx(1800, abs=1))
    assert (validating["status"], validating["leftAt"]) == ("validating", None)
    assert validating["seconds"] == pytest.approx(1800, abs=60)  # up to now, on a busy machine
    assert timeline["queuedSeconds"] == queued["seconds"]
    assert timeline["workingSeconds"] == validating["seconds"]
    assert timeline["totalSeconds"] == pytest.approx(3600, abs=60)


async def test_the_executors_rollbacks_are_re_entries_of_queued_and_built(client):
    """The executor sends an interrupted import back to built, an interrupted SET_STATUS back to queued."""
    imported = job_document(
        "1",
        "completed",
        at(0),
        (at(1), "Set status: validating"),
        (at(5), "Set status: built"),
        (at(6), "Set status: importing"),
        (at(10), "Set status: built"),
        (at(10), "Reset to built status will be due to unexpected interruption"),
        (at(11), "Set status: importing"),
        (at(15), "Set status: completed"),
    )
    set_status = job_document(
        "2",
        "initiated",
        at(0),
        (at(2), "Set status: initiated"),
        (at(3), "Set status: queued"),
        (at(3), "Retrying due to an unexpected interruption."),
        (at(7), "Set status: initiated"),
        parameters={"operation": "SET_STATUS", "target": "OTHER", "releaseStatus": "PENDING_RELEASE"},
    )
    store = client.app[STORE]
    await store.load_collection("completed", [imported])
    await store.load_collection("inprogress", [set_status])

    first = await timeline_of(client, "1")
    assert [(entry["status"], entry["fromStatus"]) for entry in first["reentries"]] == [
        ("built", "importing"),
        ("importing", "built"),
    ]
    assert first["reentries"][0]["enteredAt"] == at(10)
    assert (first["queuedSeconds"], first["workingSeconds"], first["totalSeconds"]) == (60, 14 * 60, 15 * 60)

    second = await timeline_of(client, "2")
    assert [(entry["status"], entry["fromStatus"], entry["enteredAt"]) for entry in second["reentries"]] == [
        ("queued", "initiated", at(3)),
        ("initiated", "queued", at(7)),
    ]
    assert second["queuedSeconds"] == (2 + 4) * 60


async def test_adopted_history_without_a_queued_line_with_equal_and_backward_times(client):
    """History from before this service: its log starts without `Set status: queued` (the first
    phase is queued from createdAt all the same), a status is set twice (one phase), two lines
    share a time (a phase of 0 seconds), and a line's time is earlier than the one before it (the
    log's order is the order things happened: the phase it ends lasts 0 seconds, never less)."""
    adopted = job_document(
        "1",
        "failed",
        at(0),
        (at(2), "Set status: validating"),
        (at(3), "Set status: validating"),
        (at(4), "Set status: transforming"),
        (at(4), "Set status: partitioning"),
        (at(9), "Set status: built"),
        (at(8), "Set status: importing"),
        (at(12), "Set status: failed"),
        (at(12), "Import failed: disk full"),
    )
    await client.app[STORE].load_collection("completed", [adopted])
    timeline = await timeline_of(client, "1")
    assert phases(timeline) == [
        ("queued", at(0), at(2), 120),
        ("validating", at(2), at(4), 120),
        ("transforming", at(4), at(4), 0),
        ("partitioning", at(4), at(9), 300),
        ("built", at(9), at(8), 0),
        ("importing", at(8), at(12), 240),
        ("failed", at(12), at(12), 0),
    ]
    assert timeline["reentries"] == []
    assert timeline["totalSeconds"] == 780


async def test_an_adopted_job_without_the_line_of_its_status_entered_it_at_its_last_change(client):
    """Nor does adopted history always say when the job entered the status it is in: the latest time
    its log knows of is taken. A line naming no status, or with a time that cannot be read, counts
    for nothing."""
    adopted = job_document(
        "1",
        "built",
        at(0),
        (at(1), "Set status: validating"),
        ("yesterday", "Set status: transforming"),
        (at(2), "Set status: paused"),
        (at(6), "Partitioned 12 files"),
    )
    await client.app[STORE].load_collection("inprogress", [adopted])
    timeline = await timeline_of(client, "1")
    assert [phase[:3] for phase in phases(timeline)] == [
        ("queued", at(0), at(1)),
        ("validating", at(1), at(6)),
        ("built", at(6), None),
    ]


async def test_an_unknown_job_is_a_404_and_a_job_of_another_datastore_is_not_on_the_twin(client):
    await add_datastore(client)
    elsewhere = job_document("1", "queued", ago(1), datastoreRdn=FDB)
    await client.app[STORE].load_collection("inprogress", [elsewhere])

    response = await client.get("/jobs/no-such-job/timeline")
    assert response.status == 404
    assert await response.json() == {"message": "No job found for jobId: no-such-job"}
    assert (await client.get(f"/datastores/{DEFAULT_DATASTORE}/jobs/1/timeline")).status == 404
    assert (await timeline_of(client, "1", f"/datastores/{FDB}"))["datastoreRdn"] == FDB
    assert (await timeline_of(client, "1"))["datastoreRdn"] == FDB  # the original route finds it anywhere
    unknown = await client.get("/datastores/no.such/jobs/1/timeline")
    assert (unknown.status, await unknown.json()) == (404, {"message": "No datastore found for datastore_rdn: no.such"})
    assert (await client.get("/datastores/No.SSB/jobs/1/timeline")).status == 400


@pytest.mark.parametrize("prefix", ["", f"/datastores/{DEFAULT_DATASTORE}"])
async def test_a_store_that_cannot_be_reached_is_a_503(make_client, prefix):
    unreachable = faulty(get_job=lambda store: raising(StoreUnavailable("The database cannot be reached")))
    client = await make_client(open_store=unreachable)
    response = await client.get(f"{prefix}/jobs/some-job/timeline")
    assert (response.status, await response.json()) == (503, {"message": "The database cannot be reached"})


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_with_auth_on_the_timeline_is_read_as_the_job_is(auth_client, key_server):
    """The executor's key or an administrator on the original route; on the twin, an
    administrator whose token names that datastore."""
    keys, _ = key_server
    client = await auth_client(api_key=API_KEY)
    await add_datastore(client)
    await client.app[STORE].load_collection("inprogress", [job_document("1", "queued", ago(1), datastoreRdn=FDB)])
    of_fdb = cookies_for(keys, access=access_claims(aud=["datastore", FDB]))
    of_another = cookies_for(keys, access=access_claims(aud=["datastore", "no.ssb.other"]))
    not_an_administrator = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/somebody"}))

    assert (await client.get("/jobs/1/timeline", headers={"X-API-Key": API_KEY})).status == 200
    assert (await client.get("/jobs/1/timeline", cookies=of_fdb)).status == 200
    assert (await client.get("/jobs/1/timeline", cookies=of_another)).status == 404  # not among what they see
    assert (await client.get("/jobs/1/timeline", cookies=not_an_administrator)).status == 403
    assert (await client.get(f"/datastores/{FDB}/jobs/1/timeline", cookies=of_fdb)).status == 200
    assert (await client.get(f"/datastores/{FDB}/jobs/1/timeline", cookies=of_another)).status == 403
    assert (await client.get("/jobs/1/timeline")).status == 401


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_openapi_document_describes_the_timeline_and_its_twin(client):
    document = await (await client.get("/openapi.json")).json()
    for path in ("/jobs/{jobId}/timeline", "/datastores/{rdn}/jobs/{jobId}/timeline"):
        answer = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert answer["schema"] == {"$ref": "#/components/schemas/Timeline"}
    schemas = document["components"]["schemas"]
    assert set(schemas["Timeline"]["required"]) == {
        "jobId",
        "datastoreRdn",
        "status",
        "phases",
        "queuedSeconds",
        "workingSeconds",
        "totalSeconds",
        "reentries",
    }
    assert schemas["Phase"]["properties"]["leftAt"]["nullable"] is True
    assert set(schemas["Reentry"]["properties"]) == {"status", "enteredAt", "fromStatus"}
