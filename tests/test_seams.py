"""The seams between the service and its stores: errors, ownership, revisions, start-up."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest
from helpers import DEFAULT_DATASTORE, create_job, faulty, listed, raising, stored_job

from backends import (
    JobChange,
    JobQuery,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from job_service import INITIAL_MAINTENANCE_MSG, STORE

INITIAL = {"msg": "initial", "paused": False, "timestamp": "2026-11-30T00:00:00.000000+00:00"}


class DiskOnFire(StoreError):
    """A failure of a kind the service has never heard of."""


class SlowDisk(StoreUnavailable):
    """A kind of unavailability the service has never heard of by name."""


async def test_an_unmapped_store_error_is_a_json_500_with_a_logged_traceback(make_client, caplog):
    client = await make_client(faulty(get_target=lambda store: raising(DiskOnFire("the disk is on fire"))))
    with caplog.at_level(logging.ERROR, logger="job_service"):
        response = await client.get("/targets/MY_DATASET")
    assert response.status == 500
    assert response.content_type == "application/json"
    assert await response.json() == {"message": "Internal Server Error"}
    [record] = [record for record in caplog.records if record.exc_info]
    assert record.exc_info[0] is DiskOnFire


async def test_a_subclass_of_a_mapped_store_error_means_what_its_base_means(make_client):
    client = await make_client(faulty(get_target=lambda store: raising(SlowDisk("The database cannot be reached"))))
    response = await client.get("/targets/MY_DATASET")
    assert response.status == 503
    assert await response.json() == {"message": "The database cannot be reached"}


async def test_the_initial_maintenance_status_is_stored_at_start_not_by_a_read(client):
    history = await (await client.get("/maintenance-history")).json()
    assert [(status["msg"], status["paused"]) for status in history] == [(INITIAL_MAINTENANCE_MSG, False)]
    assert await (await client.get("/maintenance-status")).json() == history[0]


async def test_the_initial_maintenance_status_is_stored_once_however_often_stores_open(open_stores):
    first = await open_stores({**INITIAL, "msg": "first"})
    await first.close()
    again = await open_stores({**INITIAL, "msg": "second"})
    assert [status["msg"] for status in await listed(again.maintenance_history())] == ["first"]


async def test_a_store_opened_without_an_initial_status_stores_none(store):
    assert await store.latest_maintenance() is None
    assert await listed(store.maintenance_history()) == []


@pytest.mark.parametrize("backend", ["mongodb"])
async def test_processes_starting_together_on_one_database_store_one_initial_status(open_stores):
    stores = [await open_stores({**INITIAL, "msg": f"process {n}"}) for n in range(4)]
    await asyncio.gather(*(store.ping() for store in stores))  # each prepares the database
    [status] = await listed(stores[0].maintenance_history())
    assert status["msg"].startswith("process ")


async def test_a_change_that_adds_no_log_line_is_still_a_new_revision(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    assert (await (await client.get(f"/jobs/{job_id}")).json())["parameters"] == {
        "operation": "ADD",
        "target": "MY_DATASET",
    }
    # A change that appends nothing to the log: the job keeps its log's length.
    await client.app[STORE].update_job(job_id, JobChange(description="Changed quietly"))
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["parameters"]["description"] == "Changed quietly" and job["log"] == []


async def test_each_change_moves_the_revision_on(store):
    await store.insert_job(stored_job("1"))
    first = await store.update_job("1", JobChange(status="validating"))
    second = await store.update_job("1", JobChange(description="same log length"))
    assert first["revision"] < second["revision"] == (await store.get_job("1"))["revision"]


async def test_a_store_keeps_no_part_of_the_job_it_was_given(store):
    job = stored_job("1", "MINE")
    await store.insert_job(job)
    job["parameters"]["target"] = "CHANGED"
    job["log"].append({"at": "now", "message": "not through the store"})
    job["createdBy"]["userId"] = "someone else"
    assert await store.get_job("1") == stored_job("1", "MINE")


async def test_a_job_handed_out_is_the_callers_own(store):
    await store.insert_job(stored_job("1", "MINE"))
    await store.update_job("1", JobChange(status="validating", log=[{"at": "t", "message": "Set status: validating"}]))
    handed_out = [
        await store.get_job("1"),
        *await listed(store.find_jobs(JobQuery())),
        *await listed(store.jobs_for_target(DEFAULT_DATASTORE, "MINE")),
    ]
    for job in handed_out:
        job["log"].append({"at": "now", "message": "not through the store"})
        job["parameters"]["target"] = "CHANGED"
    updated = await store.update_job("1", JobChange(status="built"))
    updated["log"].clear()
    job = await store.get_job("1")
    assert job["parameters"]["target"] == "MINE"
    assert [entry["message"] for entry in job["log"]] == ["Set status: validating"]


async def test_a_store_keeps_no_part_of_a_target_and_hands_out_none_of_its_own(store):
    job = stored_job("1", "MINE")
    target = {
        "datastoreRdn": DEFAULT_DATASTORE,
        "name": "MINE",
        "lastUpdatedAt": job["createdAt"],
        "status": "queued",
        "lastUpdatedBy": {"userId": "u", "firstName": "F", "lastName": "L"},
        "action": ["ADD"],
    }
    await store.insert_job(job)  # which records its target
    job["createdBy"]["userId"] = "someone else"
    given_back = await store.get_target(DEFAULT_DATASTORE, "MINE")
    assert given_back["lastUpdatedBy"]["userId"] == "u"
    given_back["action"].append("CHANGED")
    [listed_target] = await listed(store.list_targets(DEFAULT_DATASTORE))
    listed_target["lastUpdatedBy"]["userId"] = "someone else"
    kept = await store.get_target(DEFAULT_DATASTORE, "MINE")
    assert {key: value for key, value in kept.items() if key != "revision"} == target


async def test_a_store_keeps_no_part_of_a_maintenance_status(store):
    status = dict(INITIAL)
    await store.add_maintenance(status)
    status["paused"] = True
    latest = await store.latest_maintenance()
    latest["msg"] = "changed"
    assert await store.latest_maintenance() == INITIAL


async def test_a_store_keeps_no_part_of_a_datastore_and_hands_out_none_of_its_own(store):
    datastore = {
        "rdn": "no.ssb.fdb",
        "name": "Forskningsdata",
        "description": "d",
        "directory": "/srv/datastores/no.ssb.fdb",
        "bumpEnabled": False,
        "deleted": False,
    }
    await store.add_datastore(datastore)
    datastore["name"] = "Changed"
    given_back = await store.get_datastore("no.ssb.fdb")
    given_back["bumpEnabled"] = True
    [listed] = await store.list_datastores()
    listed["deleted"] = True
    assert await store.get_datastore("no.ssb.fdb") == {**datastore, "name": "Forskningsdata"}


async def test_a_full_disk_is_a_507_that_says_so(make_client):
    full = StoreFull("The disk of the data directory data is full: the change was not stored")
    client = await make_client(faulty(update_job=lambda store: raising(full)))
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    response = await client.put(f"/jobs/{job_id}", json={"status": "built"})
    assert response.status == 507
    assert await response.json() == {
        "message": "The disk of the data directory data is full: the change was not stored"
    }


async def test_a_store_that_cannot_write_is_not_ready(make_client):
    client = await make_client(
        faulty(ping=lambda store: raising(StoreUnavailable("The disk of the data directory data is full")))
    )
    response = await client.get("/health/ready")
    assert (response.status, await response.json()) == (503, {"message": "The disk of the data directory data is full"})


async def test_a_job_and_its_target_cross_the_seam_as_one_change(store):
    """The store records the target itself: no second call can be lost between them."""
    await store.insert_job(stored_job("1", "MINE"))
    assert (await store.get_target(DEFAULT_DATASTORE, "MINE"))["status"] == "queued"
    await store.update_job("1", JobChange(status="completed", at="2026-11-30T12:00:00.000000+00:00"))
    assert (await store.get_target(DEFAULT_DATASTORE, "MINE"))["lastUpdatedAt"] == "2026-11-30T12:00:00.000000+00:00"


def test_a_tinydb_service_never_imports_the_mongodb_driver(tmp_path):
    """Developers run it locally without MongoDB: its driver is for the MongoDB backend and adoption."""
    program = (
        "import sys, job_service; "
        f"job_service.create_app(job_service.load_config(None, {{'INPUT_DIR': {str(tmp_path)!r}}})); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('pymongo', 'bson')))"
    )
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "[]"
