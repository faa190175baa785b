"""MongoDB as production has it: a database shared with the world, failing mid-request.

Failures are the server's own: its `failCommand` fail point fails chosen commands of
the service's client (named by `appName`), as a mongod started with test commands does.
Documents the service did not write are put in behind its back, with a plain driver client.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from helpers import listed, run_job_service, service_config, stored_job, write_config
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import OperationFailure

from backends import JobChange, JobFinal, JobQuery, StoreCorrupt, StoreUnavailable
from backends.base import PAGE_SIZE
from backends.mongo import MongoStore
from job_service import create_app

#: The application name of the service's (and the store's) client: what the fail points fail.
SERVICE = "job-service-under-test"
T_CREATED = "2026-11-29T10:00:00.000001+00:00"
T_NEWER_JOB = "2026-11-30T09:00:00.000000+00:00"
T_COMPLETED = "2026-11-30T10:00:00.000000+00:00"
T_LATER = "2026-11-30T11:00:00.000000+00:00"
USER = {"userId": "u", "firstName": "F", "lastName": "L"}


def named(url: str, application: str) -> str:
    """`url` for a client that names itself `application`."""
    separator = "&" if "?" in url else ("?" if url.endswith("/") else "/?")
    return f"{url}{separator}appName={application}"


@pytest.fixture
def backend() -> str:
    return "mongodb"


@pytest.fixture
def storage(storage):
    """The fresh database, as the service reaches it: through a client named SERVICE."""
    mongodb = storage["mongodb"]
    return {**storage, "mongodb": {**mongodb, "url": named(mongodb["url"], SERVICE)}}


@pytest.fixture
async def database(storage):
    """The fresh database through a client of the tests' own, which no fail point touches."""
    client = AsyncMongoClient(storage["mongodb"]["url"], appname="job-service-tests")
    yield client[storage["mongodb"]["database"]]
    await client.close()


@pytest.fixture
async def fail_commands(database):
    """Arm the server's `failCommand` fail point for the service's client: `await
    fail_commands(["getMore"], {"times": 1}, closeConnection=True)`; "off" disarms it."""
    admin = database.client.admin
    try:
        await admin.command("configureFailPoint", "failCommand", mode="off")
    except OperationFailure:
        if os.environ.get("CI"):
            pytest.fail("CI's MongoDB server must have test commands on (see tests/mongo_server.py)")
        pytest.skip("the MongoDB server has no test commands: start it with them enabled")

    async def arm(commands: list[str], mode: Any, **data: Any) -> None:
        fail = {"failCommands": commands, "appName": SERVICE, **data}
        await admin.command("configureFailPoint", "failCommand", mode=mode, data=fail)

    yield arm
    await admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.fixture
async def open_store(storage):
    stores = []

    async def open_one() -> MongoStore:
        options = storage["mongodb"]
        # A second of retries is plenty for a server on loopback.
        store = await MongoStore.open(options["url"], options["database"], 1, default_datastore="local")
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


def target(name: str, **overrides: Any) -> dict[str, Any]:
    document = {
        "datastoreRdn": "local",
        "name": name,
        "lastUpdatedAt": T_CREATED,
        "status": "queued",
        "lastUpdatedBy": USER,
        "action": ["ADD"],
    }
    return {**document, **overrides}


def status(n: int, **overrides: Any) -> dict[str, Any]:
    return {"msg": f"status {n}", "paused": False, "timestamp": f"2026-11-29T10:00:00.{n:06d}+00:00", **overrides}


async def metrics(client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


# --- a failure after the first batch of a long answer ----------------------------------

#: Each streamed answer: its route, the collection it reads and what fills it past one batch.
LONG_ANSWERS: dict[str, tuple[str, str, Callable[[int], dict[str, Any]]]] = {
    "/jobs": ("/jobs", "completed", lambda n: stored_job(f"{n:06d}", status="completed")),
    "/jobs?status=queued&ignoreCompleted=true": ("/jobs", "inprogress", lambda n: stored_job(f"{n:06d}", f"T{n}")),
    "/targets": ("/targets", "targets", lambda n: target(f"T{n:06d}")),
    "/targets/MY_DATASET/jobs": (
        "/targets/{name}/jobs",
        "completed",
        lambda n: stored_job(f"{n:06d}", status="completed"),
    ),
    "/maintenance-history": ("/maintenance-history", "maintenance", status),
}


@pytest.mark.parametrize("path", LONG_ANSWERS)
async def test_a_failure_after_the_first_batch_cuts_the_answer_and_says_so(
    client, database, fail_commands, caplog, path
):
    route, collection, document = LONG_ANSWERS[path]
    await database[collection].insert_many([document(n) for n in range(1, 1201)])
    await fail_commands(["getMore"], {"times": 1}, closeConnection=True)
    with caplog.at_level(logging.INFO):
        response = await client.get(path)
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 5)
    assert f"GET {path} 200 aborted mid-stream" in [record.getMessage() for record in caplog.records]
    assert not [record for record in caplog.records if record.exc_info], "an outage is no unexpected error"
    text = await metrics(client)
    assert f'http_requests_total{{method="GET",route="{route}",status="aborted"}} 1.0' in text
    assert 'status="503"' not in text and 'status="500"' not in text
    # The connection was cut, not the service: the same answer is whole once the server is.
    assert len(await (await client.get(path)).json()) == 1200 + (path == "/maintenance-history")


@pytest.mark.parametrize("command", ["insert", "findAndModify"])
async def test_a_write_the_server_keeps_failing_is_a_503_and_whole_when_sent_again(
    make_client, storage, fail_commands, command
):
    """The driver retries a write while the timeout lasts; a server that still fails it is
    a 503, with nothing of the write stored, and the same request succeeds once it does not."""
    client = await make_client(storage={"mongodb": {**storage["mongodb"], "timeout_seconds": 1}})
    [first] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "FIRST"}]})).json()
    await fail_commands([command], "alwaysOn", closeConnection=True)
    requests = {
        "insert": ("POST", "/jobs", {"jobs": [{"operation": "ADD", "target": "SECOND"}]}),
        "findAndModify": ("PUT", f"/jobs/{first['job_id']}", {"status": "built"}),
    }
    method, path, body = requests[command]
    refused = await client.request(method, path, json=body)
    assert refused.status == 503
    assert await refused.json() == {"message": "The database cannot be reached"}
    await fail_commands([], "off")
    assert (await client.request(method, path, json=body)).status == 200
    jobs = await (await client.get("/jobs")).json()
    assert [(job["parameters"]["target"], job["status"]) for job in jobs] == (
        [("FIRST", "queued"), ("SECOND", "queued")] if command == "insert" else [("FIRST", "built")]
    )
    assert all(len(job["log"]) == (command == "findAndModify") for job in jobs), "the failed write stored nothing"


async def test_a_post_whose_database_fails_partway_says_which_jobs_exist(make_client, storage, database, fail_commands):
    """The batch is one insert; a target held by a finished job whose move a crash cut short
    is freed and taken by a second insert, which the database fails here."""
    client = await make_client(storage={"mongodb": {**storage["mongodb"], "timeout_seconds": 1}})
    assert (await client.get("/health/ready")).status == 200
    await database["inprogress"].insert_one(stored_job("unmoved", target="DATASET_2", status="completed"))
    await fail_commands(
        ["insert"], {"skip": 2}, closeConnection=True
    )  # its audit begun, the batch stored, then no insert
    entries = [{"operation": "ADD", "target": f"DATASET_{n}"} for n in range(5)]
    results = await (await client.post("/jobs", json={"jobs": entries})).json()
    await fail_commands([], "off")

    assert [result["status"] for result in results] == ["queued", "queued", "FAILED", "queued", "queued"]
    assert results[2]["msg"] == "FAILED: The database cannot be reached"
    jobs = await (await client.get("/jobs?ignoreCompleted=true")).json()
    assert {job["jobId"] for job in jobs} == {results[n]["job_id"] for n in (0, 1, 3, 4)}
    # What failed is not held: sent again, that entry is stored.
    [again] = await (await client.post("/jobs", json={"jobs": entries[2:3]})).json()
    assert again["status"] == "queued"


async def test_a_job_whose_target_write_fails_is_stored_and_its_target_recorded_later(
    make_client, storage, fail_commands
):
    client = await make_client(storage={"mongodb": {**storage["mongodb"], "timeout_seconds": 1}})
    await fail_commands(
        ["insert"], {"skip": 2}, closeConnection=True
    )  # its audit begun, the job stored, its target not
    [result] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})).json()
    await fail_commands([], "off")

    assert result["status"] == "queued", "the job was stored: the client must hear of it"
    assert (await client.get("/targets/MY_DATASET")).status == 404
    # The next touch of the job records what it left due.
    assert (await client.put(f"/jobs/{result['job_id']}", json={"status": "validating"})).status == 200
    target = await (await client.get("/targets/MY_DATASET")).json()
    assert target["status"] == "validating"


async def test_a_batch_whose_targets_write_fails_has_them_recorded_by_a_refused_job_and_the_next_start(
    make_client, storage, fail_commands
):
    client = await make_client(storage={"mongodb": {**storage["mongodb"], "timeout_seconds": 1}})
    await fail_commands(
        ["insert"], {"skip": 2}, closeConnection=True
    )  # its audit begun, the jobs stored, not their targets
    entries = [{"operation": "ADD", "target": f"DATASET_{n}"} for n in range(3)]
    results = await (await client.post("/jobs", json={"jobs": entries})).json()
    await fail_commands([], "off")
    assert [result["status"] for result in results] == ["queued"] * 3, "the jobs were stored: the client must hear"
    assert (await client.get("/targets/DATASET_0")).status == 404

    # A job refused for a held target records what the holder left due.
    [refused] = await (await client.post("/jobs", json={"jobs": entries[:1]})).json()
    assert refused["status"] == "FAILED"
    assert (await (await client.get("/targets/DATASET_0")).json())["status"] == "queued"
    # The next start records the rest.
    restarted = await make_client()
    for name in ("DATASET_1", "DATASET_2"):
        assert (await (await restarted.get(f"/targets/{name}")).json())["status"] == "queued"


# --- documents the store cannot work with, at start ----------------------------------------


def two_jobs_on_one_target() -> list[dict[str, Any]]:
    """What a restore from before the unique index holds: two jobs in progress on one target."""
    return [{**stored_job("1"), "_id": "first"}, {**stored_job("2"), "_id": "second"}]


async def test_two_jobs_in_progress_on_one_target_stop_the_store_with_one_line_naming_them(open_store, database):
    await database["inprogress"].insert_many(two_jobs_on_one_target())
    with pytest.raises(StoreCorrupt) as refused:
        await open_store()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("MongoDB collection inprogress of database test_")
    assert "datastoreRdn 'local', parameters.target 'MY_DATASET': 2 documents" in message
    assert "'first' (jobId '1'), 'second' (jobId '2')" in message
    assert message.endswith("the service checks again at its next start or request")


async def test_an_in_progress_document_that_is_not_a_job_stops_the_store_naming_it(open_store, database):
    no_job_id = {key: value for key, value in stored_job("1").items() if key != "jobId"}
    await database["inprogress"].insert_many([no_job_id, {**stored_job("2", "OTHER"), "createdBy": "someone"}])
    with pytest.raises(StoreCorrupt) as refused:
        await open_store()
    message = str(refused.value)
    assert "holds 2 document(s) that are not jobs" in message
    assert f"document {no_job_id['_id']} has no text jobId" in message
    assert "has no createdBy with a text userId, firstName and lastName" in message
    assert await database["inprogress"].count_documents({}) == 2, "nothing is changed"


def test_the_service_refuses_to_start_on_such_a_database_with_one_line(storage, tmp_path):
    with MongoClient(storage["mongodb"]["url"]) as client:
        client[storage["mongodb"]["database"]]["inprogress"].insert_many(two_jobs_on_one_target())
    config = write_config(tmp_path / "config.toml", service_config(storage, tmp_path / "in"))
    result = run_job_service(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("job-service: MongoDB collection inprogress of database ")
    assert "'first' (jobId '1'), 'second' (jobId '2')" in last_line


async def test_reached_only_after_start_it_answers_503_with_that_line_until_the_data_is_fixed(
    aiohttp_client, make_config, own_server, caplog
):
    with MongoClient(own_server.url) as client:
        client["jobdb"]["inprogress"].insert_many(two_jobs_on_one_target())
    await asyncio.to_thread(own_server.stop)
    config = make_config(storage={"mongodb": {"url": own_server.url, "database": "jobdb", "timeout_seconds": 1}})
    client = await aiohttp_client(create_app(config))
    await asyncio.to_thread(own_server.start)

    with caplog.at_level(logging.INFO):
        for path in ("/health/ready", "/jobs", "/targets", "/maintenance-status", "/jobs/1"):
            response = await client.get(path)
            assert response.status == 503, path
            message = (await response.json())["message"]
            assert message.startswith("MongoDB collection inprogress of database jobdb holds documents that share")
            assert "parameters.target 'MY_DATASET'" in message
        text = await metrics(client)
    assert "store_up 0.0" in text and "jobs_in_progress" not in text
    assert not [record for record in caplog.records if record.exc_info], "no stack trace for data to fix"
    assert sum("holds documents that share" in record.getMessage() for record in caplog.records) == 1, "logged once"

    async with AsyncMongoClient(own_server.url) as fixing:
        await fixing["jobdb"]["inprogress"].delete_one({"_id": "second"})
    assert (await client.get("/health/ready")).status == 200
    assert [job["jobId"] for job in await (await client.get("/jobs")).json()] == ["1"]


# --- serving with documents it did not write -------------------------------------------------


async def test_listings_leave_a_malformed_document_out_and_a_read_of_it_names_the_problem(client, database, caplog):
    """A hand edit or a restore after the service started: the executor's poll goes on."""
    sound = [job["job_id"] for job in await (await client.post("/jobs", json={"jobs": [
        {"operation": "ADD", "target": "MY_DATASET"},
        {"operation": "ADD", "target": "OTHER"},
    ]})).json()]  # fmt: skip
    no_job_id = {key: value for key, value in stored_job("9", "NO_ID").items() if key != "jobId"}
    await database["inprogress"].insert_many([no_job_id, {**stored_job("broken", "BROKEN"), "createdBy": None}])
    await database["completed"].insert_one({**stored_job("old", status="completed"), "status": 42})
    await database["targets"].insert_many([target("NO_TIME", lastUpdatedAt=None), target("NO_ACTION", action="ADD")])
    await database["maintenance"].insert_one(status(0, paused="yes"))
    await database["datastores"].insert_one({"rdn": "no.ssb.broken", "name": "Broken"})

    with caplog.at_level(logging.WARNING, logger="backends.mongo"):
        for _ in range(2):  # each malformed document is logged once, however often it is met
            for path in ("/jobs", "/datastores/local/jobs", "/targets/MY_DATASET/jobs"):
                jobs = await (await client.get(path)).json()
                assert [job["jobId"] for job in jobs] == sound[: 1 if "MY_DATASET" in path else 2], path
            poll = await client.get("/jobs?status=queued&operation=ADD,CHANGE&ignoreCompleted=true")
            assert [job["jobId"] for job in await poll.json()] == sound
            for path in ("/targets", "/datastores/local/targets"):
                assert [found["name"] for found in await (await client.get(path)).json()] == ["MY_DATASET", "OTHER"]
            history = await (await client.get("/maintenance-history")).json()
            assert [entry["paused"] for entry in history] == [False]
            assert await (await client.get("/datastores/rdns")).json() == ["local"]
    logged = [record.getMessage() for record in caplog.records if record.name == "backends.mongo"]
    assert len(logged) == 7, logged
    assert f"MongoDB collection inprogress: document {no_job_id['_id']} has no text jobId" in logged[0]
    assert any("collection completed: document" in line and "has no text status" in line for line in logged)

    for path, problem in [
        ("/jobs/broken", "has no createdBy with a text userId, firstName and lastName"),
        ("/targets/NO_TIME", "has no text lastUpdatedAt"),
        ("/targets/NO_ACTION", "has no action list of texts"),
        ("/datastores/no.ssb.broken/targets", "has no text description"),
    ]:
        response = await client.get(path)
        assert response.status == 500, path
        message = (await response.json())["message"]
        assert message.startswith("A stored document is malformed: ") and problem in message, message
        assert message.endswith("an operator must fix or remove it")
    text = await metrics(client)
    # Met 2 times by each of 3 listings, twice, read once, and 2 times by the scrape (stale jobs, queue age).
    assert 'malformed_documents_total{collection="inprogress"} 15.0' in text
    assert 'malformed_documents_total{collection="datastores"} 3.0' in text
    assert "jobs_in_progress" in text, "the counts leave malformed documents out, and still answer"


async def test_a_job_whose_move_a_crash_left_unfinished_counts_as_completed(client, database):
    await database["inprogress"].insert_one(stored_job("1", status="completed"))
    text = await metrics(client)
    assert "jobs_completed 1.0" in text
    assert 'jobs_in_progress{datastore="local",status="queued"} 0.0' in text


# --- targets follow job order -----------------------------------------------------------


@pytest.mark.parametrize("how", ["the next start", "the next touch"])
async def test_a_completion_whose_target_write_comes_late_never_hides_a_newer_job(
    open_store, database, fail_commands, how
):
    """The race of a completing PUT and a POST on one target, in its worst order: the old
    job is completed and moved (its target free), a new job takes the target, and only
    then is the old job's target written, though its change is later than the new job."""
    store = await open_store()
    await store.insert_job(stored_job("1"))
    # Its copy into completed goes through; the write of its target fails, each retry too.
    await fail_commands(["update"], {"skip": 1}, closeConnection=True)
    with pytest.raises(StoreUnavailable):
        await store.update_job("1", JobChange(status="completed", at=T_COMPLETED))
    await fail_commands([], "off")
    await store.insert_job({**stored_job("2"), "createdAt": T_NEWER_JOB})

    if how == "the next start":
        await open_store()
    else:
        with pytest.raises(JobFinal):
            await store.update_job("1", JobChange(status="completed", at=T_LATER))
    shown = await store.get_target("local", "MY_DATASET")
    assert (shown["status"], shown["lastUpdatedAt"]) == ("queued", T_NEWER_JOB)
    assert await database["completed"].count_documents({"targetsDueAt": {"$exists": True}}) == 0


# --- reads a batch at a time ------------------------------------------------------------------


async def test_a_listing_of_more_jobs_in_progress_than_a_page_holds_has_every_job_once_in_order(open_store, database):
    """In-progress jobs are read a page at a time, each page with the completed jobs up to its last."""
    store = await open_store()
    jobs = [stored_job(f"{n:06d}", f"T{n}", status="queued" if n % 3 == 0 else "completed") for n in range(1, 2001)]
    in_progress = [job["jobId"] for job in jobs if job["status"] == "queued"]
    await database["inprogress"].insert_many([dict(job) for job in jobs if job["status"] == "queued"])
    await database["completed"].insert_many([dict(job) for job in jobs if job["status"] == "completed"])
    assert len(in_progress) > PAGE_SIZE
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == [job["jobId"] for job in jobs]
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery(ignore_completed=True)))] == in_progress
