"""What only the MongoDB backend must show: shared by processes, crash-safe moves, outages."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiohttp
import pytest
from helpers import bump_job, create_job, listed, put_job, service_config, stored_job
from pymongo import AsyncMongoClient
from service_process import ServiceProcess

from backends import (
    DatastoreBusy,
    DatastoreGone,
    JobChange,
    JobFinal,
    JobNotFound,
    JobQuery,
    StoreCorrupt,
    StoreUnavailable,
    TargetBusy,
    revision_of,
)
from backends.base import PAGE_SIZE, target_of
from backends.mongo import MongoStore
from job_service import create_app


@pytest.fixture
def backend() -> str:
    return "mongodb"


@pytest.fixture
async def database(storage):
    """The fresh database, through a plain driver client: the tests' view behind the service's back."""
    client = AsyncMongoClient(storage["mongodb"]["url"])
    yield client[storage["mongodb"]["database"]]
    await client.close()


@pytest.fixture
async def open_store(storage):
    stores = []

    async def open_one() -> MongoStore:
        options = storage["mongodb"]
        store = await MongoStore.open(
            options["url"], options["database"], options["timeout_seconds"], default_datastore="local"
        )
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


async def test_the_indexes_are_created_at_start_and_again_without_harm(open_store, database):
    for _ in range(3):  # each opening prepares the database
        await (await open_store()).ping()
    indexes = await database["inprogress"].index_information()
    assert indexes["one_job_per_target_per_datastore"]["unique"] is True
    assert indexes["one_job_per_target_per_datastore"]["key"] == [("datastoreRdn", 1), ("parameters.target", 1)]
    assert any(index.get("unique") and index["key"] == [("jobId", 1)] for index in indexes.values())
    completed_keys = [index["key"] for index in (await database["completed"].index_information()).values()]
    assert [("parameters.bumpManifesto.dataStructureUpdates.name", 1)] in completed_keys
    assert [("parameters.operation", 1)] in completed_keys
    # In-progress jobs are few: no index beyond the rule, the id and job order costs their writes.
    assert sorted(index["key"] for index in indexes.values()) == [
        [("_id", 1)],
        [("createdAt", 1), ("jobId", 1)],
        [("datastoreRdn", 1), ("parameters.target", 1)],
        [("jobId", 1)],
    ]


async def test_the_in_progress_query_indexes_of_an_earlier_release_are_dropped_at_start(open_store, database):
    await database["inprogress"].create_index("status")
    await database["inprogress"].create_index("parameters.operation")
    await database["inprogress"].create_index("targetsDueAt", sparse=True)
    await (await open_store()).ping()
    assert sorted(await database["inprogress"].index_information()) == [
        "_id_",
        "createdAt_1_jobId_1",
        "jobId_1",
        "one_job_per_target_per_datastore",
    ]


async def test_writes_wait_for_a_majority_and_reads_see_only_what_a_majority_has(open_store, storage, caplog):
    store = await open_store()
    for collection in ("inprogress", "completed", "targets", "datastores", "maintenance"):
        handle = store._collections[collection]
        assert handle.write_concern.document == {"w": "majority"}
        assert handle.read_concern.level == "majority"
        assert handle.read_preference.mode == 0  # the primary
    # SecantusDB is a standalone server, which takes majority as MongoDB does.
    await store.insert_job(stored_job("1"))
    assert (await store.get_job("1"))["status"] == "queued"
    caplog.set_level("INFO", logger="backends.mongo")
    options = storage["mongodb"]
    other = await MongoStore.open(
        options["url"], options["database"], 5, write_concern=1, read_concern="local", default_datastore="local"
    )
    try:
        assert other._collections["inprogress"].write_concern.document == {"w": 1}
        assert other._collections["inprogress"].read_concern.level == "local"
    finally:
        await other.close()
    assert f"MongoDB database {options['database']}: write concern {{'w': 1}}, read concern local" in caplog.text


async def test_a_database_keeps_the_default_datastore_it_was_first_opened_with(open_store, storage, database):
    await (await open_store()).insert_job({**stored_job("1"), "datastoreRdn": "local"})
    options = storage["mongodb"]
    with pytest.raises(StoreCorrupt) as refused:
        await MongoStore.open(options["url"], options["database"], 5, default_datastore="no.ssb.fdb")
    assert str(refused.value) == (
        f"MongoDB database {options['database']} belongs to default datastore 'local', not 'no.ssb.fdb':"
        " set [datastores] default to 'local' again, or use another database"
    )
    assert await database["meta"].find_one({}) == {"_id": "defaultDatastore", "rdn": "local"}
    await (await open_store()).ping()  # the first default opens it as before


async def test_a_database_from_before_takes_the_current_default(open_store, database):
    await database["inprogress"].insert_one(
        {key: value for key, value in stored_job("1").items() if key != "datastoreRdn"}
    )
    store = await open_store()
    assert (await store.get_job("1"))["datastoreRdn"] == "local"
    assert await database["meta"].find_one({}) == {"_id": "defaultDatastore", "rdn": "local"}


async def test_every_write_of_a_target_bumps_its_revision(open_store):
    store = await open_store()
    await store.insert_job(stored_job("1"))
    assert revision_of(await store.get_target("local", "MY_DATASET")) == 1
    await store.update_job("1", JobChange(status="validating"))
    assert revision_of(await store.get_target("local", "MY_DATASET")) == 2
    await store.update_job("1", JobChange(status="completed"))
    target = await store.get_target("local", "MY_DATASET")
    assert (target["status"], revision_of(target)) == ("completed", 3)


async def test_a_crash_after_the_final_status_before_the_move(open_store, database):
    """The service set `completed` in inprogress and died before copying the job."""
    await (await open_store()).ping()
    await database["inprogress"].insert_one(stored_job("1", status="completed"))

    store = await open_store()  # the other process, still running, reads it once and as completed
    assert [(j["jobId"], j["status"]) for j in await listed(store.find_jobs(JobQuery()))] == [("1", "completed")]
    assert await listed(store.find_jobs(JobQuery(ignore_completed=True))) == []
    assert not await store.target_in_progress("local", "MY_DATASET")

    restarted = await open_store()
    await restarted.ping()
    assert await database["inprogress"].count_documents({}) == 0
    assert await database["completed"].count_documents({"jobId": "1", "status": "completed"}) == 1


async def test_a_crash_after_the_copy_before_the_delete(open_store, database):
    """The job is in both collections: reads show it once, and the next touch finishes the move."""
    store = await open_store()
    await store.ping()
    await database["inprogress"].insert_one(stored_job("1", status="failed"))
    await database["completed"].insert_one(stored_job("1", status="failed"))

    assert [j["jobId"] for j in await listed(store.find_jobs(JobQuery()))] == ["1"]
    assert [j["jobId"] for j in await listed(store.find_jobs(JobQuery(status="failed")))] == ["1"]
    assert [j["jobId"] for j in await listed(store.jobs_for_target("local", "MY_DATASET"))] == ["1"]
    with pytest.raises(JobFinal):
        await store.update_job("1", JobChange(status="queued"))
    assert await database["inprogress"].count_documents({}) == 0
    assert await database["completed"].count_documents({}) == 1


async def test_a_target_held_by_an_unfinished_move_is_freed_by_the_next_job(open_store, database):
    store = await open_store()
    await store.ping()
    await database["inprogress"].insert_one(stored_job("1", status="completed"))
    await store.insert_job(stored_job("2"))
    assert [(j["jobId"], j["status"]) for j in await listed(store.find_jobs(JobQuery()))] == [
        ("1", "completed"),
        ("2", "queued"),
    ]


async def test_concurrent_updates_never_change_a_job_after_it_is_final(open_store):
    store = await open_store()
    await store.insert_job(stored_job("1"))
    changes = [JobChange(status="completed")] + [JobChange(status="built") for _ in range(20)]
    results = await asyncio.gather(*(store.update_job("1", change) for change in changes), return_exceptions=True)
    assert all(not isinstance(r, Exception) or isinstance(r, JobFinal) for r in results)
    final = await store.get_job("1")
    assert final["status"] == "completed"
    assert final["log"] == []
    assert [j["jobId"] for j in await listed(store.find_jobs(JobQuery()))] == ["1"]


async def test_two_service_processes_on_one_database_create_one_job_per_target(storage, tmp_path):
    config = service_config(storage, tmp_path / "input")
    services = [ServiceProcess(tmp_path, config), ServiceProcess(tmp_path, config)]
    try:
        for service in services:
            await service.start()
        async with aiohttp.ClientSession() as session:

            async def post(service: ServiceProcess) -> dict:
                body = {"jobs": [{"operation": "ADD", "target": "SHARED_DATASET"}]}
                async with session.post(f"{service.url}/jobs", json=body) as response:
                    assert response.status == 200
                    [result] = await response.json()
                    return result

            results = await asyncio.gather(*(post(services[n % 2]) for n in range(50)))
            async with session.get(f"{services[0].url}/jobs") as response:
                jobs = await response.json()
    finally:
        for service in services:
            service.stop()
    assert sum(r["msg"] == "CREATED" for r in results) == 1
    busy = "FAILED: Job with target SHARED_DATASET already in progress"
    assert sum(r["msg"] == busy for r in results) == 49
    assert len(jobs) == 1


async def test_an_outage_is_a_503_and_the_service_recovers_without_restart(aiohttp_client, make_config, own_server):
    config = make_config(storage={"mongodb": {"url": own_server.url, "timeout_seconds": 1}})
    client = await aiohttp_client(create_app(config))
    job_id = await create_job(client, operation="ADD", target="BEFORE_OUTAGE")

    await asyncio.to_thread(own_server.stop)
    ready = await client.get("/health/ready")
    assert ready.status == 503
    assert "message" in await ready.json()
    for method, path, body in [
        ("GET", "/jobs", None),
        ("GET", f"/jobs/{job_id}", None),
        ("POST", "/jobs", {"jobs": [{"operation": "ADD", "target": "DURING_OUTAGE"}]}),
        ("PUT", f"/jobs/{job_id}", {"status": "built"}),
        ("GET", "/targets", None),
        ("GET", "/maintenance-status", None),
    ]:
        response = await client.request(method, path, json=body)
        assert response.status == 503, (method, path, await response.text())
        assert await response.json() == {"message": "The database cannot be reached"}

    await asyncio.to_thread(own_server.start)
    for _ in range(100):
        if (await client.get("/health/ready")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/health/ready")).status == 200
    await put_job(client, job_id, status="built")
    jobs = await (await client.get("/jobs")).json()
    assert [(j["parameters"]["target"], j["status"]) for j in jobs] == [("BEFORE_OUTAGE", "built")]


async def test_a_server_down_at_start_is_a_503_until_it_comes_up(own_server):
    await asyncio.to_thread(own_server.stop)
    store = await MongoStore.open(own_server.url, f"test_{uuid.uuid4().hex[:8]}", 2, default_datastore="local")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await asyncio.to_thread(own_server.start)
        assert await listed(store.list_targets("local")) == []
        assert store.prepared
    finally:
        await store.close()


# --- a change and its targets, without transactions: stopped after each step -----------------


class Crash(Exception):
    """The process died here."""


T1 = "2026-11-30T10:00:00.000001+00:00"
T2 = "2026-11-30T10:00:00.000002+00:00"
T3 = "2026-11-30T10:00:00.000003+00:00"
WRITES = {
    "insert_one",
    "insert_many",
    "replace_one",
    "update_one",
    "update_many",
    "delete_one",
    "delete_many",
    "find_one_and_update",
    "bulk_write",
}
#: Writes of many documents at once.
BULK_WRITES = {"insert_many", "bulk_write"}


class Stopping:
    """A collection whose writes stop, as a killed process's do, once `allowed` single-document
    writes of the store have gone through (a bulk write or insert counts each document, and stops midway)."""

    def __init__(self, collection, budget: dict) -> None:
        self._collection = collection
        self._budget = budget

    def __getattr__(self, name):
        operation = getattr(self._collection, name)
        if name not in WRITES:
            return operation

        async def write(*args, **kwargs):
            if name in BULK_WRITES:
                requests = args[0]
                allowed = self._budget["left"]
                self._budget["left"] = max(0, allowed - len(requests))
                if allowed < len(requests):
                    if allowed:
                        await operation(requests[:allowed], **kwargs)
                    raise Crash
                return await operation(*args, **kwargs)
            if self._budget["left"] == 0:
                raise Crash
            self._budget["left"] -= 1
            return await operation(*args, **kwargs)

        return write


def stopping_after(store: MongoStore, writes: int) -> None:
    budget = {"left": writes}
    for name in ("_inprogress", "_completed", "_targets", "_datastores"):
        setattr(store, name, Stopping(getattr(store, name), budget))


def bump_document(job_id: str) -> dict:
    """A BUMP in progress whose manifesto releases NEW_DATASET, removes OLD_DATASET, drafts DRAFT_DATASET."""
    return {**stored_job(job_id, "DATASTORE"), "parameters": bump_job()}


async def shown(store: MongoStore) -> dict:
    jobs = await listed(store.find_jobs(JobQuery()))
    return {
        "jobs": [(job["jobId"], job["status"]) for job in jobs],
        "in progress": [job["jobId"] for job in await listed(store.find_jobs(JobQuery(ignore_completed=True)))],
        "targets": {
            target["name"]: (target["status"], target["action"], target["lastUpdatedAt"])
            for target in await listed(store.list_targets("local"))
        },
    }


async def nothing_due(database) -> bool:
    """No job whose targets may not show it: no final job marked, and each marked job in
    progress (a new one keeps its mark) shown on its target."""
    if await database["completed"].count_documents({"targetsDueAt": {"$exists": True}}):
        return False
    async for job in database["inprogress"].find({"targetsDueAt": {"$exists": True}}):
        held = {"datastoreRdn": job["datastoreRdn"], "name": job["parameters"]["target"]}
        target = await database["targets"].find_one(held)
        if target is None or target["shownJob"]["jobId"] != job["jobId"]:
            return False
    return True


COMPLETED_BUMP = {
    "jobs": [("1", "completed")],
    "in progress": [],
    "targets": {
        "DATASTORE": ("completed", ["BUMP", "1.0.0", "1.1.0"], T2),
        "NEW_DATASET": ("completed", ["RELEASED", "1.1.0"], T2),
        "OLD_DATASET": ("completed", ["REMOVED", "1.1.0"], T2),
    },
}
VALIDATING_BUMP = {
    "jobs": [("1", "validating")],
    "in progress": ["1"],
    "targets": {"DATASTORE": ("validating", ["BUMP", "1.0.0", "1.1.0"], T1)},
}


@pytest.mark.parametrize("how", ["the next start", "the next touch"])
async def test_a_completion_stopped_after_any_step_is_finished_with_all_its_targets(open_store, database, how):
    """Completing a BUMP is 7 writes: the job, its copy to completed, its delete from
    in-progress, 3 targets, the mark removed. Stopped after each, then repaired."""
    for writes in range(8):
        running = await open_store()  # a process that keeps running beside the one that dies
        await running.clear()
        await running.insert_job(bump_document("1"))
        await running.update_job("1", JobChange(status="validating", at=T1))
        dying = await open_store()
        await dying.ping()
        stopping_after(dying, writes)
        try:
            await dying.update_job("1", JobChange(status="completed", at=T2))
            stopped = False
        except Crash:
            stopped = True
        assert stopped == (writes < 7)

        if how == "the next start":
            repaired = await open_store()
            await repaired.ping()
        else:
            repaired = running
            if writes > 0:  # the job is final: the executor's retry is refused, and repairs
                with pytest.raises(JobFinal):
                    await running.update_job("1", JobChange(status="completed", at=T3))
        assert await shown(repaired) == (COMPLETED_BUMP if writes > 0 else VALIDATING_BUMP), f"after {writes} writes"
        assert await nothing_due(database)


@pytest.mark.parametrize("how", ["the next start", "the next touch"])
async def test_a_new_job_stopped_after_any_step_is_there_with_its_target_or_not_at_all(open_store, database, how):
    """Inserting a job is 2 writes: the job (marked), its target."""
    created = stored_job("1")["createdAt"]
    new_job = {"jobs": [("1", "queued")], "in progress": ["1"], "targets": {"MY_DATASET": ("queued", ["ADD"], created)}}
    for writes in range(3):
        running = await open_store()
        await running.clear()
        dying = await open_store()
        await dying.ping()
        stopping_after(dying, writes)
        with contextlib.suppress(Crash):
            await dying.insert_job(stored_job("1"))

        if how == "the next start":
            repaired = await open_store()
            await repaired.ping()
        else:
            repaired = running
            if writes > 0:  # a new job on the target is refused, and repairs the job that holds it
                with pytest.raises(TargetBusy):
                    await running.insert_job(stored_job("2"))
        nothing = {"jobs": [], "in progress": [], "targets": {}}
        assert await shown(repaired) == (new_job if writes > 0 else nothing), f"after {writes} writes"
        assert await nothing_due(database)


async def test_a_late_repair_never_puts_an_older_change_over_a_newer_target(open_store, database):
    """A completion stopped before its targets, repaired only after a newer job took its target."""
    store = await open_store()
    await store.insert_job(stored_job("1"))
    dying = await open_store()
    await dying.ping()
    stopping_after(dying, 3)  # the job completed and moved; no target written
    with pytest.raises(Crash):
        await dying.update_job("1", JobChange(status="completed", at=T1))
    # Meanwhile the job's completion is visible and its target free: a new job takes it.
    newer = {**stored_job("2"), "createdAt": T3}
    await store.insert_job(newer)

    restarted = await open_store()
    await restarted.ping()
    target = await restarted.get_target("local", "MY_DATASET")
    assert (target["status"], target["lastUpdatedAt"]) == ("queued", T3)
    assert await nothing_due(database)


# --- a batch of new jobs: a few round trips, each entry answered on its own -------------------


async def test_a_batch_is_stored_in_bulk_and_each_entry_answered_on_its_own(open_store, database):
    store = await open_store()
    await store.insert_job(stored_job("1", "HELD"))
    # A finished job whose move a crash cut short still holds FREED: the batch frees it.
    await database["inprogress"].insert_one(stored_job("2", "FREED", status="completed"))
    batch = [stored_job("3", "NEW"), stored_job("4", "HELD"), stored_job("5", "NEW"), stored_job("6", "FREED")]

    answers = await store.insert_jobs([*batch, stored_job("7", "OTHER")])

    assert [type(answer).__name__ if answer else None for answer in answers] == [
        None,
        "TargetBusy",
        "TargetBusy",  # the later of two entries for one target
        None,
        None,
    ]
    assert str(answers[1]) == "Job with target HELD already in progress"
    in_progress = await listed(store.find_jobs(JobQuery(ignore_completed=True)))
    assert sorted(job["jobId"] for job in in_progress) == ["1", "3", "6", "7"]
    assert (await store.get_job("2"))["status"] == "completed"
    targets = {target["name"]: target["status"] for target in await listed(store.list_targets("local"))}
    assert targets == {"HELD": "queued", "NEW": "queued", "FREED": "queued", "OTHER": "queued"}
    assert (await store.get_target("local", "FREED"))["lastUpdatedAt"] == stored_job("6")["createdAt"]
    assert await nothing_due(database)


async def test_a_new_jobs_mark_stays_unseen_and_a_start_or_a_refused_job_writes_no_target_again(open_store, database):
    store = await open_store()
    await store.insert_jobs([stored_job(str(n), f"DATASET_{n}") for n in range(1, 4)])
    marked = {"targetsDueAt": {"$exists": True}}
    assert await database["inprogress"].count_documents(marked) == 3  # no write per job to remove them
    read = [
        await store.get_job("1"),
        *await listed(store.find_jobs(JobQuery())),
        *await listed(store.dump_collection("inprogress")),
    ]
    assert read and all("targetsDueAt" not in job for job in read)

    # A repair reads the targets, finds them showing their jobs, and writes none.
    [refused] = await store.insert_jobs([stored_job("4", "DATASET_1")])
    assert isinstance(refused, TargetBusy)
    restarted = await open_store()
    await restarted.ping()
    assert [revision_of(target) for target in await listed(restarted.list_targets("local"))] == [1, 1, 1]
    # The job's next change replaces its mark, and removes it once its targets show it.
    await restarted.update_job("1", JobChange(status="validating"))
    assert await database["inprogress"].count_documents(marked) == 2
    assert (await restarted.get_target("local", "DATASET_1"))["status"] == "validating"


async def test_a_start_after_a_batch_cut_short_writes_only_the_targets_missing_a_page_at_a_time(open_store, database):
    batch = [stored_job(str(n), f"DATASET_{n:04d}") for n in range(1, PAGE_SIZE + 101)]
    dying = await open_store()
    # A target between the batch's names that is no job of it, written as a store writes one.
    await database["targets"].insert_one({**target_of(stored_job("0", "DATASET_0300_OTHER"), T1), "revision": 1})
    stopping_after(dying, len(batch) + 300)  # every job stored, the targets of the first 300
    with pytest.raises(Crash):
        await dying.insert_jobs(batch)

    restarted = await open_store()
    await restarted.ping()
    targets = await listed(restarted.list_targets("local"))
    assert len(targets) == len(batch) + 1
    # Those the batch wrote are not written again, nor is one between its names.
    assert {revision_of(target) for target in targets} == {1}
    assert await nothing_due(database)


async def test_a_batch_stopped_after_any_step_leaves_each_job_there_with_its_target_or_not_at_all(open_store, database):
    """A batch of three is 6 single-document writes: the jobs (marked), their targets; the
    marks stay (a write per job saved), and a repair reads the targets to find what is due."""
    batch = [stored_job(str(n), f"DATASET_{n}") for n in range(1, 4)]
    for writes in range(7):
        running = await open_store()
        await running.clear()
        dying = await open_store()
        await dying.ping()
        stopping_after(dying, writes)
        try:
            await dying.insert_jobs(batch)
            stopped = False
        except Crash:
            stopped = True
        assert stopped == (writes < 6)

        repaired = await open_store()
        await repaired.ping()
        stored = min(writes, 3)
        assert await shown(repaired) == {
            "jobs": [(job["jobId"], "queued") for job in batch[:stored]],
            "in progress": [job["jobId"] for job in batch[:stored]],
            "targets": {job["parameters"]["target"]: ("queued", ["ADD"], job["createdAt"]) for job in batch[:stored]},
        }, f"after {writes} writes"
        assert await nothing_due(database)


# --- a job goes only into a live datastore, against a delete from any process ----------------

FDB = "no.ssb.fdb"


def registered(rdn: str) -> dict:
    return {
        "rdn": rdn,
        "name": rdn,
        "description": "",
        "directory": f"/srv/{rdn}",
        "bumpEnabled": False,
        "deleted": False,
    }


class Meanwhile:
    """A collection whose first call of `method` lets another process's operation run to
    its end first: an interleaving of two processes' steps, chosen by the test."""

    def __init__(self, collection, method: str, operation) -> None:
        self._collection = collection
        self._method = method
        self._operation = operation
        self.outcome: BaseException | None = None

    def __getattr__(self, name):
        call = getattr(self._collection, name)
        if name != self._method or self._operation is None:
            return call
        operation, self._operation = self._operation, None

        async def interleaved(*args, **kwargs):
            try:
                await operation()
            except Exception as exc:
                self.outcome = exc
            return await call(*args, **kwargs)

        return interleaved


#: (whose step, its collection, the call the other's whole operation comes before, which one wins).
INTERLEAVINGS = [
    ("insert", "_datastores", "find_one", "delete"),  # after the job is written, before the datastore is read
    ("insert", "_inprogress", "update_many", "delete"),  # after the datastore is read live, before the settle
    ("insert", "_targets", "insert_many", "insert"),  # after the settle
    ("delete", "_datastores", "update_one", "insert"),  # before the mark
    ("delete", "_inprogress", "delete_many", "delete"),  # after the mark, before the unchecked jobs go
    ("delete", "_inprogress", "find_one", "delete"),  # after they went, before the look for settled jobs
]


@pytest.mark.parametrize(("paused", "collection", "method", "winner"), INTERLEAVINGS)
async def test_an_insert_and_a_delete_in_two_processes_never_leave_a_job_in_a_deleted_datastore(
    open_store, database, paused, collection, method, winner
):
    inserter, deleter = await open_store(), await open_store()
    await inserter.add_datastore(registered(FDB))
    await deleter.ping()
    operations = {
        "insert": lambda: inserter.insert_job(stored_job("1", datastore=FDB)),
        "delete": lambda: deleter.delete_datastore(FDB),
    }
    other = "delete" if paused == "insert" else "insert"
    store = inserter if paused == "insert" else deleter
    meanwhile = Meanwhile(getattr(store, collection), method, operations[other])
    setattr(store, collection, meanwhile)
    try:
        await operations[paused]()
        outcomes = {paused: None, other: meanwhile.outcome}
    except (DatastoreGone, DatastoreBusy) as exc:
        outcomes = {paused: exc, other: meanwhile.outcome}

    # Exactly one of them wins, and the store shows what the winner was told.
    expected = {"insert": (None, DatastoreBusy), "delete": (DatastoreGone, None)}[winner]
    assert (type(outcomes["insert"]) if outcomes["insert"] else None) == expected[0], outcomes
    assert (type(outcomes["delete"]) if outcomes["delete"] else None) == expected[1], outcomes
    for reader in (await open_store(), inserter):
        await reader.ping()
        jobs = await listed(reader.find_jobs(JobQuery(datastore=FDB)))
        assert [job["jobId"] for job in jobs] == (["1"] if winner == "insert" else [])
        assert (await reader.get_datastore(FDB))["deleted"] == (winner == "delete")
        targets = await listed(reader.list_targets(FDB))
        assert [target["name"] for target in targets] == (["MY_DATASET"] if winner == "insert" else [])
    assert await database["inprogress"].count_documents({"unchecked": {"$exists": True}}) == 0


async def test_a_job_not_yet_checked_is_seen_by_no_reader_and_settled_by_the_next_insert_on_its_target(
    open_store, database
):
    store = await open_store()
    await store.add_datastore(registered(FDB))
    dying = await open_store()
    await dying.ping()
    stopping_after(dying, 1)  # the job written, unchecked; its datastore never read
    with pytest.raises(Crash):
        await dying.insert_job(stored_job("1", datastore=FDB))

    assert await listed(store.find_jobs(JobQuery())) == []
    assert await listed(store.find_jobs(JobQuery(datastore=FDB, ignore_completed=True))) == []
    assert await store.get_job("1") is None
    assert not await store.target_in_progress(FDB, "MY_DATASET")
    assert (await store.stats()).in_progress == {}
    with pytest.raises(JobNotFound):
        await store.update_job("1", JobChange(status="validating"))
    # The next insert on its target settles it: the datastore is live, so the job stands.
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("2", datastore=FDB))
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == ["1"]
    assert (await store.get_target(FDB, "MY_DATASET"))["status"] == "queued"
    assert await nothing_due(database)


async def test_a_delete_removes_a_job_not_yet_checked_and_goes_through(open_store, database):
    store = await open_store()
    await store.add_datastore(registered(FDB))
    dying = await open_store()
    await dying.ping()
    stopping_after(dying, 1)
    with pytest.raises(Crash):
        await dying.insert_jobs([stored_job("1", "A", datastore=FDB), stored_job("2", "B", datastore=FDB)])

    await store.delete_datastore(FDB)
    assert (await store.get_datastore(FDB))["deleted"]
    assert await database["inprogress"].count_documents({}) == 0
    assert await listed(store.list_targets(FDB)) == []


@pytest.mark.parametrize("live", [True, False], ids=["live", "deleted"])
async def test_an_insert_stopped_after_any_step_is_settled_by_the_next_start(open_store, database, live):
    """Into another datastore than the default, a job is 4 writes: the job (unchecked and
    marked), the settle, its target, the mark removed; the datastore is read between the first two."""
    for writes in range(5):
        running = await open_store()
        await running.clear()
        await running.add_datastore(registered(FDB))
        if not live:
            await running.delete_datastore(FDB)
        dying = await open_store()
        await dying.ping()
        stopping_after(dying, writes)
        with contextlib.suppress(Crash, DatastoreGone):
            await dying.insert_job(stored_job("1", datastore=FDB))

        repaired = await open_store()
        await repaired.ping()
        jobs = await listed(repaired.find_jobs(JobQuery()))
        targets = await listed(repaired.list_targets(FDB))
        stands = live and writes > 0
        assert [job["jobId"] for job in jobs] == (["1"] if stands else []), f"after {writes} writes"
        assert [target["name"] for target in targets] == (["MY_DATASET"] if stands else []), f"after {writes} writes"
        assert await database["inprogress"].count_documents({"unchecked": {"$exists": True}}) == 0
        assert await nothing_due(database)


async def test_a_delete_stopped_after_any_step_leaves_a_busy_datastore_live_after_the_next_start(open_store):
    """A delete of a datastore with a job in progress is 3 writes: the mark, the removal of
    unchecked jobs, the mark taken back (with DatastoreBusy)."""
    for writes in range(4):
        running = await open_store()
        await running.clear()
        await running.add_datastore(registered(FDB))
        await running.insert_job(stored_job("1", datastore=FDB))
        dying = await open_store()
        await dying.ping()
        stopping_after(dying, writes)
        with pytest.raises(Crash if writes < 3 else DatastoreBusy):
            await dying.delete_datastore(FDB)

        repaired = await open_store()
        await repaired.ping()
        assert not (await repaired.get_datastore(FDB))["deleted"], f"after {writes} writes"
        assert [job["jobId"] for job in await listed(repaired.find_jobs(JobQuery(datastore=FDB)))] == ["1"]
        await repaired.update_job("1", JobChange(status="completed"))
        await repaired.delete_datastore(FDB)  # once the job is done, the delete goes through
        assert (await repaired.get_datastore(FDB))["deleted"]
