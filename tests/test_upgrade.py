"""A store written by the release before datastores opens with nothing lost.

The previous release's data is written here by hand, exactly as it wrote it (no
`datastoreRdn` anywhere; on MongoDB its unique indexes on the target and on the
target's name alone), so that these tests do not depend on the code they check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import DEFAULT_DATASTORE, bump_job, listed, stored_job
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient

from backends import JobChange, JobQuery, TargetBusy
from backends.mongo import MongoStore
from backends.tinydb import LOCK_FILE, TinyDBStore

FDB = "no.ssb.fdb"
USER = {"userId": "u", "firstName": "F", "lastName": "L"}
STARTED = {"msg": "Started", "paused": False, "timestamp": "2026-01-01T00:00:00.000000+00:00"}
#: What a serving process passes at start: it must not be stored, as a status is there already.
INITIAL = {"msg": "initial", "paused": False, "timestamp": "2026-11-30T00:00:00.000000+00:00"}


def in_default(document: dict) -> dict:
    """A document of the previous release as it reads now."""
    return {**document, "datastoreRdn": DEFAULT_DATASTORE}


def previous_job(job_id: str, target: str, status: str) -> dict:
    return {key: value for key, value in stored_job(job_id, target, status).items() if key != "datastoreRdn"}


def previous_target(name: str, status: str) -> dict:
    return {
        "name": name,
        "lastUpdatedAt": "2026-11-29T10:00:00.000000+00:00",
        "status": status,
        "lastUpdatedBy": USER,
        "action": ["ADD"],
    }


COMPLETED = [
    previous_job("1", "DONE", "completed"),
    {**previous_job("2", "DATASTORE", "completed"), "parameters": bump_job()},  # lists NEW_DATASET
]
IN_PROGRESS = [previous_job("3", "HELD", "queued"), previous_job("4", "OTHER", "validating")]
TARGETS = [previous_target("DONE", "completed"), previous_target("HELD", "queued")]


async def assert_everything_is_in_the_default_datastore(store) -> None:
    jobs = [in_default(job) for job in [*COMPLETED, *IN_PROGRESS]]
    assert await listed(store.find_jobs(JobQuery(datastore=DEFAULT_DATASTORE))) == jobs
    assert await listed(store.find_jobs(JobQuery())) == jobs
    assert await store.get_job("3") == jobs[2]
    assert [job["jobId"] for job in await listed(store.jobs_for_target(DEFAULT_DATASTORE, "NEW_DATASET"))] == ["2"]
    assert await listed(store.list_targets(DEFAULT_DATASTORE)) == [in_default(target) for target in TARGETS]
    assert await store.target_in_progress(DEFAULT_DATASTORE, "HELD")
    stats = await store.stats()
    assert (stats.in_progress, stats.completed) == ({("local", "queued"): 1, ("local", "validating"): 1}, 2)
    assert await listed(store.maintenance_history()) == [STARTED]


async def assert_the_rule_holds_per_datastore(store) -> None:
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("5", "HELD"))
    await store.add_datastore(
        {"rdn": FDB, "name": "F", "description": "", "directory": "/d", "bumpEnabled": False, "deleted": False}
    )  # a job goes only into a live datastore
    await store.insert_job(stored_job("5", "HELD", datastore=FDB))  # which records its target there
    assert [target["datastoreRdn"] for target in await listed(store.dump_collection("targets"))] == [
        "local",
        "local",
        FDB,
    ]


# TinyDB


def tinydb_file(documents: list[dict]) -> bytes:
    """A TinyDB file as the previous release wrote it (orjson's compact JSON)."""
    table = {str(doc_id): document for doc_id, document in enumerate(documents, start=1)}
    return json.dumps({"_default": table}, separators=(",", ":")).encode()


def write_previous_data_directory(path: Path) -> dict[str, bytes]:
    files = {
        "inprogress.json": tinydb_file(IN_PROGRESS),
        "targets.json": tinydb_file(TARGETS),
        "maintenance.json": tinydb_file([STARTED]),
        "completed/00000001.json": tinydb_file(COMPLETED),
    }
    (path / "completed").mkdir(parents=True)
    for name, content in files.items():
        (path / name).write_bytes(content)
    return files


def files_in(path: Path) -> dict[str, bytes]:
    """Every data file in the directory (the lock is not data)."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in path.rglob("*")
        if file.is_file() and file.name != LOCK_FILE
    }


async def test_a_data_directory_of_the_previous_release_opens_as_it_is_in_the_default_datastore(tmp_path):
    written = write_previous_data_directory(tmp_path)
    store = await TinyDBStore.open(tmp_path, DEFAULT_DATASTORE, INITIAL)
    # Not one document rewritten; the store file, new, remembers the default datastore.
    written["store.json"] = b'{"defaultDatastore":"local","folded":0}'
    try:
        await assert_everything_is_in_the_default_datastore(store)
        assert [job["datastoreRdn"] for job in await listed(store.dump_collection("completed"))] == ["local", "local"]
        assert files_in(tmp_path) == written, "opening and reading must write nothing"
    finally:
        await store.close()
    assert files_in(tmp_path) == written


async def test_a_target_held_by_a_job_of_the_previous_release_is_busy_in_the_default_datastore(tmp_path):
    write_previous_data_directory(tmp_path)
    store = await TinyDBStore.open(tmp_path, DEFAULT_DATASTORE)
    try:
        await assert_the_rule_holds_per_datastore(store)
    finally:
        await store.close()


async def test_a_document_of_the_previous_release_gains_its_datastore_when_next_written(tmp_path):
    write_previous_data_directory(tmp_path)
    store = await TinyDBStore.open(tmp_path, DEFAULT_DATASTORE)
    await store.update_job("3", JobChange(status="validating"))  # which records its target, HELD
    await store.close()

    stored_jobs = json.loads((tmp_path / "inprogress.json").read_bytes())["_default"]
    assert {job["jobId"]: job.get("datastoreRdn") for job in stored_jobs.values()} == {"3": "local", "4": None}
    stored_targets = json.loads((tmp_path / "targets.json").read_bytes())["_default"]
    assert [(target["name"], target.get("datastoreRdn")) for target in stored_targets.values()] == [
        ("DONE", None),
        ("HELD", "local"),
    ], "the old target is updated in place, not stored twice"

    store = await TinyDBStore.open(tmp_path, DEFAULT_DATASTORE)
    try:
        assert [target["status"] for target in await listed(store.list_targets(DEFAULT_DATASTORE))] == [
            "completed",
            "validating",
        ]
        assert [job["status"] for job in await listed(store.find_jobs(JobQuery(ignore_completed=True)))] == [
            "validating",
            "validating",
        ]
    finally:
        await store.close()


# MongoDB

MANIFESTO_NAME = "parameters.bumpManifesto.dataStructureUpdates.name"
JOB_SORT = [("createdAt", ASCENDING), ("jobId", ASCENDING)]
#: The indexes the previous release created, as it created them.
PREVIOUS_INDEXES = {
    "inprogress": [
        ([("parameters.target", ASCENDING)], {"unique": True, "name": "one_job_per_target"}),
        ([("jobId", ASCENDING)], {"unique": True}),
        ([("status", ASCENDING)], {}),
        (JOB_SORT, {}),
        ([(MANIFESTO_NAME, ASCENDING)], {}),
    ],
    "completed": [
        ([("jobId", ASCENDING)], {"unique": True}),
        ([("status", ASCENDING)], {}),
        (JOB_SORT, {}),
        ([("parameters.target", ASCENDING)], {}),
        ([(MANIFESTO_NAME, ASCENDING)], {}),
    ],
    "targets": [([("name", ASCENDING)], {"unique": True})],
    "maintenance": [([("timestamp", DESCENDING), ("_id", DESCENDING)], {})],
}


@pytest.fixture
def backend() -> str:
    return "mongodb"


@pytest.fixture
async def database(storage):
    """The test's database, as the previous release left it."""
    client = AsyncMongoClient(storage["mongodb"]["url"])
    database = client[storage["mongodb"]["database"]]
    documents = {"inprogress": IN_PROGRESS, "completed": COMPLETED, "targets": TARGETS, "maintenance": [STARTED]}
    for name, collection_documents in documents.items():
        await database[name].insert_many([dict(document) for document in collection_documents])
    for name, indexes in PREVIOUS_INDEXES.items():
        for keys, options in indexes:
            await database[name].create_index(keys, **options)
    yield database
    await client.close()


@pytest.fixture
async def open_store(storage):
    stores = []

    async def open_one() -> MongoStore:
        options = storage["mongodb"]
        store = await MongoStore.open(
            options["url"],
            options["database"],
            options["timeout_seconds"],
            default_datastore=DEFAULT_DATASTORE,
            initial_maintenance=INITIAL,
        )
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


async def everything_in(database) -> dict:
    """Every document, with its `_id`, and every index of every collection."""
    names = sorted(await database.list_collection_names())
    return {
        name: (
            await database[name].find({}).sort("_id", ASCENDING).to_list(),
            await database[name].index_information(),
        )
        for name in names
    }


async def assert_upgraded(database) -> None:
    """Seen behind the store's back: every document in the default, the old rules replaced."""
    for name in ["inprogress", "completed", "targets"]:
        assert await database[name].count_documents({"datastoreRdn": DEFAULT_DATASTORE}) == 2
    inprogress = await database["inprogress"].index_information()
    assert "one_job_per_target" not in inprogress
    assert inprogress["one_job_per_target_per_datastore"]["key"] == [("datastoreRdn", 1), ("parameters.target", 1)]
    assert inprogress["one_job_per_target_per_datastore"]["unique"]
    targets = await database["targets"].index_information()
    assert "name_1" not in targets
    assert [index.get("unique") for index in targets.values() if index["key"] == [("datastoreRdn", 1), ("name", 1)]]


async def test_a_database_of_the_previous_release_opens_with_everything_in_the_default_datastore(database, open_store):
    store = await open_store()
    await assert_everything_is_in_the_default_datastore(store)
    await assert_upgraded(database)


async def test_the_rule_holds_per_datastore_on_a_database_of_the_previous_release(database, open_store):
    await assert_the_rule_holds_per_datastore(await open_store())


async def test_preparing_an_upgraded_database_again_changes_nothing(database, open_store):
    await (await open_store()).ping()
    upgraded = await everything_in(database)
    await (await open_store()).ping()
    assert await everything_in(database) == upgraded


async def test_an_upgrade_cut_short_is_finished_by_the_next_start(database, open_store):
    """The first start died after moving the in-progress jobs and building their new
    index, before the rest: the old rule and half the documents are as they were."""
    await database["inprogress"].update_many({}, {"$set": {"datastoreRdn": DEFAULT_DATASTORE}})
    await database["inprogress"].create_index(
        [("datastoreRdn", ASCENDING), ("parameters.target", ASCENDING)],
        unique=True,
        name="one_job_per_target_per_datastore",
    )

    store = await open_store()
    await assert_everything_is_in_the_default_datastore(store)
    await assert_upgraded(database)
    await assert_the_rule_holds_per_datastore(store)
