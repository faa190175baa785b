"""Provisioning after a crash at any instant: what a process killed with SIGKILL left is
finished (registered: its commit point) or undone, never while its process lives.

The crashes are real: a process of its own lays out a provisioning with the service's
own functions and is killed with SIGKILL at the step a test names, so that its lock goes
as a crash's does (see `cut_short`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DEFAULT_DATASTORE, faulty, listed

import job_service
from backends import JobQuery, StoreUnavailable
from job_service import PROVISIONING_AREA, PROVISIONING_MARKER, STORE

FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data"}

#: Lays out a provisioning of argv[2] in root argv[1] as the service does, up to the step
#: argv[3] ("prepared": made whole aside, not yet in place; "laid out": in place, before
#: its registration), prints its keys job, then dies by SIGKILL ("wait": lives on).
CRASHING = """
import asyncio, os, signal, sys
from pathlib import Path
import orjson
import job_service as js
root, rdn, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
root.mkdir(parents=True, exist_ok=True)
datastore = js.Datastore(rdn=rdn, name="Crashed", description="", directory=str(root.resolve() / rdn),
                         bumpEnabled=False, deleted=False)
keys_job = js.new_job(datastore, {"operation": "GENERATE_RSA_KEYS", "target": "DATASTORE"},
                      {"userId": "u", "firstName": "F", "lastName": "L"})
keys_job["jobId"] = str(js.uuid.uuid5(js.KEYS_JOB_NAMESPACE, rdn))
provisioner = js.Provisioner(root)
if step == "prepared":
    (provisioner.claim() / rdn / "data").mkdir(parents=True)
else:
    js.lay_out_datastore(provisioner, datastore, keys_job)
print(orjson.dumps({"datastore": datastore, "keysJob": keys_job}).decode(), flush=True)
if step == "wait":
    sys.stdin.read()
os.kill(os.getpid(), signal.SIGKILL)
"""


def cut_short(root: Path, rdn: str, step: str = "laid out") -> tuple[dict, dict, subprocess.Popen]:
    """The datastore and keys job of a provisioning made up to `step` by a process of its own,
    and that process: dead by SIGKILL, or (step "wait") alive until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING, str(root), rdn, step],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(job_service.__file__).parent,
        text=True,
    )
    assert process.stdout is not None
    made = json.loads(process.stdout.readline())
    if step != "wait":
        assert process.wait(timeout=30) == -signal.SIGKILL
    return made["datastore"], made["keysJob"], process


@pytest.fixture
def root(input_dir: Path) -> Path:
    return input_dir.parent / "datastores"


async def keys_jobs(client, rdn: str) -> list[dict]:
    jobs = await (await client.get("/jobs")).json()
    return [job for job in jobs if job["datastoreRdn"] == rdn and job["parameters"]["target"] == "DATASTORE"]


async def test_a_provisioning_killed_before_its_registration_is_undone_by_the_next_post(client, root):
    cut_short(root, "no.ssb.fdb")  # just now: a grace period would still call it under way
    response = await client.post("/datastores", json=FDB)
    assert response.status == 200, await response.text()
    [keys_job] = await keys_jobs(client, "no.ssb.fdb")
    assert keys_job["jobId"] == (await response.json())["job_id"]
    assert not (root / "no.ssb.fdb" / PROVISIONING_MARKER).exists()
    assert (root / "no.ssb.fdb_input").is_dir()


async def test_a_provisioning_killed_after_its_registration_is_finished_at_once_at_the_next_start(make_client, root):
    client = await make_client()
    datastore, keys_job, _ = cut_short(root, "no.ssb.crash")
    await client.app[STORE].add_datastore(datastore)
    await client.close()

    restarted = await make_client()  # within a second of the crash
    assert [job["jobId"] for job in await keys_jobs(restarted, "no.ssb.crash")] == [keys_job["jobId"]]
    assert not (root / "no.ssb.crash" / PROVISIONING_MARKER).exists()
    assert (root / "no.ssb.crash_input").is_dir() and (root / "no.ssb.crash_working").is_dir()
    assert "no.ssb.crash" in await (await restarted.get("/datastores/rdns")).json()


async def test_a_provisioning_under_way_in_a_live_process_is_left_to_it_however_old(make_client, root):
    _, _, process = cut_short(root, "no.ssb.fdb", "wait")
    try:
        long_ago = time.time() - 3600
        os.utime(root / "no.ssb.fdb" / PROVISIONING_MARKER, (long_ago, long_ago))
        client = await make_client()  # its start leaves it be too
        response = await client.post("/datastores", json=FDB)
        assert response.status == 409
        assert "under way in another process" in (await response.json())["message"]
        assert (root / "no.ssb.fdb" / PROVISIONING_MARKER).exists()
    finally:
        process.kill()
        process.wait(timeout=30)
    assert (await client.post("/datastores", json=FDB)).status == 200


async def test_what_a_process_killed_while_preparing_a_directory_left_is_swept_at_start(make_client, root):
    cut_short(root, "no.ssb.fdb", "prepared")
    assert list(root.glob(f"{PROVISIONING_AREA}/*/no.ssb.fdb"))
    client = await make_client()
    assert list(root.glob(f"{PROVISIONING_AREA}/*/no.ssb.fdb")) == []
    assert (await client.post("/datastores", json=FDB)).status == 200


async def test_what_the_store_could_not_end_at_start_the_retry_ends(make_client, root, monkeypatch):
    client = await make_client()
    datastore, keys_job, _ = cut_short(root, "no.ssb.crash")
    await client.app[STORE].add_datastore(datastore)
    await client.close()
    monkeypatch.setattr(job_service, "PROVISIONING_RETRY_SECONDS", 0.05)
    failures = []

    def out_of_reach_twice(store):
        async def get_datastore(rdn):
            if len(failures) < 2:
                failures.append(rdn)
                raise StoreUnavailable("the database is not up yet")
            return await store.get_datastore(rdn)

        return get_datastore

    restarted = await make_client(faulty(get_datastore=out_of_reach_twice))
    for _ in range(100):
        if not (root / "no.ssb.crash" / PROVISIONING_MARKER).exists():
            break
        await asyncio.sleep(0.05)
    assert failures == ["no.ssb.crash", "no.ssb.crash"]
    assert [job["jobId"] for job in await keys_jobs(restarted, "no.ssb.crash")] == [keys_job["jobId"]]


def stored_then_lost(store):
    """An insert_job whose answer is lost: the job is stored, the caller hears a failure."""

    async def insert_job(job):
        await store.insert_job(job)
        raise StoreUnavailable("the connection closed before the answer")

    return insert_job


async def test_a_keys_job_stored_though_its_answer_was_lost_is_the_one_answered(make_client):
    client = await make_client(faulty(insert_job=stored_then_lost))
    response = await client.post("/datastores", json=FDB)
    assert response.status == 200, await response.text()
    assert [job["jobId"] for job in await keys_jobs(client, "no.ssb.fdb")] == [(await response.json())["job_id"]]


async def test_a_keys_job_left_by_an_undone_provisioning_is_taken_by_the_next(make_client, root):
    lost = []

    def unsure_once(store):
        async def get_job(job_id):
            if lost == ["stored"]:  # the check after the lost answer fails too: the provisioning is undone
                lost.append("unsure")
                raise StoreUnavailable("the database is failing over")
            return await store.get_job(job_id)

        return get_job

    def stored_then_lost_once(store):
        async def insert_job(job):
            await store.insert_job(job)
            if not lost:
                lost.append("stored")
                raise StoreUnavailable("the connection closed before the answer")

        return insert_job

    client = await make_client(faulty(insert_job=stored_then_lost_once, get_job=unsure_once))
    failed = await client.post("/datastores", json=FDB)
    assert failed.status == 503
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]
    [orphan] = await listed(client.app[STORE].find_jobs(JobQuery(ignore_completed=True)))

    response = await client.post("/datastores", json=FDB)
    assert response.status == 200, await response.text()
    assert (await response.json())["job_id"] == orphan["jobId"]
    assert [job["jobId"] for job in await keys_jobs(client, "no.ssb.fdb")] == [orphan["jobId"]]
