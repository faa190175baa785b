"""What only the MongoDB backend must show: shared by processes, crash-safe moves, outages."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from helpers import create_job, listed, put_job, service_config, stored_job
from mongo_server import MongoServer, secantusd
from pymongo import AsyncMongoClient
from service_process import ServiceProcess

from backends import JobChange, JobFinal, JobQuery, StoreUnavailable
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
    await (await open_store()).ping()
    await (await open_store()).list_targets("local")  # the first operation prepares the database
    await (await open_store()).list_targets("local")
    indexes = await database["inprogress"].index_information()
    assert indexes["one_job_per_target_per_datastore"]["unique"] is True
    assert indexes["one_job_per_target_per_datastore"]["key"] == [("datastoreRdn", 1), ("parameters.target", 1)]
    assert any(index.get("unique") and index["key"] == [("jobId", 1)] for index in indexes.values())
    completed_keys = [index["key"] for index in (await database["completed"].index_information()).values()]
    assert [("parameters.bumpManifesto.dataStructureUpdates.name", 1)] in completed_keys


async def test_a_crash_after_the_final_status_before_the_move(open_store, database):
    """The service set `completed` in inprogress and died before copying the job."""
    await (await open_store()).list_targets("local")
    await database["inprogress"].insert_one(stored_job("1", status="completed"))

    store = await open_store()  # the other process, still running, reads it once and as completed
    assert [(j["jobId"], j["status"]) for j in await listed(store.find_jobs(JobQuery()))] == [("1", "completed")]
    assert await listed(store.find_jobs(JobQuery(ignore_completed=True))) == []
    assert not await store.target_in_progress("local", "MY_DATASET")

    restarted = await open_store()
    await restarted.list_targets("local")
    assert await database["inprogress"].count_documents({}) == 0
    assert await database["completed"].count_documents({"jobId": "1", "status": "completed"}) == 1


async def test_a_crash_after_the_copy_before_the_delete(open_store, database):
    """The job is in both collections: reads show it once, and the next touch finishes the move."""
    store = await open_store()
    await store.list_targets("local")
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
    await store.list_targets("local")
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


@pytest.fixture
def own_server(tmp_path):
    """A SecantusDB of this test's own, on disk, so that it can be stopped and started again."""
    command = secantusd()
    if command is None:
        pytest.skip("needs SECANTUSD to start a server of its own")
    server = MongoServer(command, storage=tmp_path / "mongo")
    server.start()
    yield server
    server.stop()


async def test_an_outage_is_a_503_and_the_service_recovers_without_restart(aiohttp_client, make_config, own_server):
    config = make_config(storage={"mongodb": {"url": own_server.url, "timeout_seconds": 1}})
    client = await aiohttp_client(create_app(config))
    job_id = await create_job(client, operation="ADD", target="BEFORE_OUTAGE")

    own_server.stop()
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

    own_server.start()
    for _ in range(100):
        if (await client.get("/health/ready")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/health/ready")).status == 200
    await put_job(client, job_id, status="built")
    jobs = await (await client.get("/jobs")).json()
    assert [(j["parameters"]["target"], j["status"]) for j in jobs] == [("BEFORE_OUTAGE", "built")]


async def test_a_server_down_at_start_is_a_503_until_it_comes_up(own_server):
    own_server.stop()
    store = await MongoStore.open(own_server.url, f"test_{uuid.uuid4().hex[:8]}", 0.5, default_datastore="local")
    try:
        with pytest.raises(StoreUnavailable):
            await store.list_targets("local")
        own_server.start()
        assert await store.list_targets("local") == []
        assert store.prepared
    finally:
        await store.close()
