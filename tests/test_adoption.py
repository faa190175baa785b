"""Adoption: `job-service import --from-platform-sqlite` and `--from-original-mongodb`.

Each source is built the way the platform's services write it (a real SQLite file with
the platform's schema and rows; documents in a real MongoDB server, as the original
Flask service stored them), imported into each backend with the command itself, and
then compared through the HTTP API of a service started on the store.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import bump_job, platform_row_parameters, post_jobs, run_job_service, service_config, write_config
from mongo_server import free_port
from pymongo import MongoClient

from backends.adoption import Progress

ZONE = "Europe/Oslo"
OSLO = ZoneInfo(ZONE)
#: A time as our service writes every time: UTC, microseconds, +00:00.
OUR_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
ADMIN = {"userId": "4a0c3c55-0000-4000-8000-00000000000a", "firstName": "Kari", "lastName": "Nordmann"}
OTHER = {"userId": "4a0c3c55-0000-4000-8000-00000000000b", "firstName": "Ola", "lastName": "Hansen"}


def adopted(config: Path, *source: str) -> str:
    """Run an import that must succeed; its report."""
    result = run_job_service(config, "import", *source, "--timezone", ZONE)
    assert result.returncode == 0, result.stderr
    return result.stdout


def left_out(report: str) -> list[str]:
    """The report's lines of documents not brought over."""
    return [line for line in report.splitlines() if line.startswith("not brought over: ")]


def refused(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command ends with (exit 1)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("job-service: ")
    return lines[-1]


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=OSLO)


def assert_instant(served: str, expected: datetime) -> None:
    """`served` is written as our service writes times, and is the instant `expected`."""
    assert OUR_TIME.fullmatch(served), served
    # In UTC: Python never finds a time of a repeated hour equal to one of another zone (PEP 495).
    assert datetime.fromisoformat(served) == expected.astimezone(UTC)


# --- the platform's SQLite database, written as its service writes it ---------------------

#: The platform's schema: the datastore API's tables and indexes, then its migration.
PLATFORM_SCHEMA = """
CREATE TABLE job (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT, datastore_id INTEGER, status TEXT,
    created_at TIMESTAMP, created_by TEXT, parameters TEXT,
    FOREIGN KEY(datastore_id) REFERENCES datastore(datastore_id));
CREATE TABLE maintenance (
    maintenance_id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT, paused BOOLEAN, timestamp TIMESTAMP);
CREATE TABLE target (
    name TEXT, datastore_id INTEGER, status TEXT, action TEXT, last_updated_at TIMESTAMP, last_updated_by TEXT,
    PRIMARY KEY (name, datastore_id) FOREIGN KEY(datastore_id) REFERENCES datastore(datastore_id));
CREATE TABLE job_log (
    job_log_id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER, msg TEXT, at TIMESTAMP,
    FOREIGN KEY(job_id) REFERENCES job(job_id) ON DELETE CASCADE);
CREATE TABLE datastore (
    datastore_id INTEGER PRIMARY KEY AUTOINCREMENT, rdn TEXT, description TEXT, directory TEXT, name TEXT,
    bump_enabled BOOLEAN DEFAULT FALSE);
CREATE UNIQUE INDEX uq_rdn ON datastore(rdn);
ALTER TABLE datastore ADD COLUMN deleted_at TIMESTAMP;
"""
#: The job service of mid-2025: no bump_enabled nor deleted_at, targets and maintenance by `datastore`.
MID_2025_SCHEMA = """
CREATE TABLE job (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT, datastore_id INTEGER, status TEXT,
    created_at TIMESTAMP, created_by TEXT, parameters TEXT);
CREATE TABLE maintenance (
    maintenance_id INTEGER PRIMARY KEY AUTOINCREMENT, datastore TEXT, msg TEXT, paused BOOLEAN, timestamp TIMESTAMP);
CREATE TABLE target (
    name TEXT, datastore TEXT, status TEXT, action TEXT, last_updated_at TIMESTAMP, last_updated_by TEXT,
    PRIMARY KEY (name, datastore));
CREATE TABLE job_log (
    job_log_id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER, msg TEXT, at TIMESTAMP);
CREATE TABLE datastore (
    datastore_id INTEGER PRIMARY KEY AUTOINCREMENT, rdn TEXT, description TEXT, directory TEXT, name TEXT);
"""


@dataclass
class SourceJob:
    """A job as the platform's API was given it, with its life: each log line a local time and a message."""

    datastore: int
    status: str
    parameters: dict[str, Any]
    created_at: str
    log: list[tuple[str, str]] = field(default_factory=list)
    created_by: dict[str, str] = field(default_factory=lambda: ADMIN)
    job_id: str = ""


def lived(statuses: list[str], start: str) -> list[tuple[str, str]]:
    """The log lines of a job moved through `statuses`, a minute apart after `start` (local)."""
    first = datetime.fromisoformat(start)
    return [
        ((first + timedelta(minutes=n, seconds=7.25)).isoformat(timespec="microseconds"), f"Set status: {status}")
        for n, status in enumerate(statuses, start=1)
    ]


def platform_jobs() -> list[SourceJob]:
    """Jobs of three datastores (1 the default of these tests, 2 deleted, 3 live), as the platform's API made them."""
    bump = bump_job()
    bump["bumpManifesto"]["updateType"] = None
    return [
        SourceJob(
            1,
            "completed",
            {"operation": "ADD", "target": "DATASET_A"},
            "2025-01-15T10:00:00.123456",
            lived(["initiated", "validating", "completed"], "2025-01-15T10:00"),
        ),
        SourceJob(
            1,
            "queued",
            {"operation": "SET_STATUS", "target": "DATASET_B", "releaseStatus": "PENDING_RELEASE"},
            "2025-07-01T12:30:00.000001",
            created_by=OTHER,
        ),
        SourceJob(
            1,
            "completed",
            bump,
            "2025-03-01T08:00:00",
            lived(["initiated", "importing", "completed"], "2025-03-01T08:00"),
        ),
        SourceJob(
            1,
            "validating",
            {"operation": "REMOVE", "target": "DATASET_C", "description": "Tilbaketrukket ✓"},
            "2025-10-26T02:30:00.500000",  # in the hour the end of summer time repeats
            [
                ("2025-10-26T02:45:00", "Set status: initiated"),
                ("2025-10-26T02:50:00.100000", "Set status: validating"),
            ],
        ),
        SourceJob(1, "failed", {"operation": "PATCH_METADATA", "target": "DATASET_D"}, "2025-02-01T09:00:00.5"),
        # An older job still in progress on the same target as a newer one: the newer one is kept.
        SourceJob(1, "queued", {"operation": "ADD", "target": "DATASET_E"}, "2025-04-01T09:00:00.000000"),
        SourceJob(1, "built", {"operation": "CHANGE", "target": "DATASET_E"}, "2025-05-01T09:00:00.000000"),
        SourceJob(2, "completed", {"operation": "ADD", "target": "OLD_DATASET"}, "2024-12-01T09:00:00.000000"),
        SourceJob(3, "importing", {"operation": "ADD", "target": "DATASET_A"}, "2025-06-01T09:00:00.000000"),
        SourceJob(
            3,
            "queued",
            {"operation": "DELETE_ARCHIVE", "target": "DATASET_F"},
            "2025-06-02T09:00:00.000000",
            # Written out of order (as a migration appends older lines): the log is in the order of `at`.
            [("2025-06-02T09:05:00.000000", "second"), ("2025-06-02T09:01:00.000000", "first")],
        ),
    ]


#: A job of the very first service, carried over by a migration: not a job of the SPEC.
UNKNOWN_OPERATION = SourceJob(
    1, "completed", {"operation": "ADD_OR_CHANGE_DATA", "target": "DATASET_Z"}, "2023-01-01T00:00:00"
)

DATASTORES = [
    # datastore_id, rdn, description, directory, name, bump_enabled, deleted_at
    (1, "no.ssb.fdb", "Forskningsdata", "/datastores/no_ssb_fdb", "Forskningsdata", True, None),
    (2, "no.ssb.old", "Retired", "/datastores/no_ssb_old", "Gammel", False, "2025-09-01T10:00:00.000000"),
    (3, "no.ssb.lab", "Trials", "/datastores/no_ssb_lab", "Lab", True, None),
]
TARGETS = [
    # datastore_id, name, status, action, last_updated_at (local), last_updated_by
    (1, "DATASET_A", "completed", "ADD", "2025-01-15T10:03:07.250000", ADMIN),
    (1, "DATASET_B", "queued", "SET_STATUS,PENDING_RELEASE", "2025-07-01T12:30:00.000100", OTHER),
    (1, "DATASTORE", "completed", "BUMP,1.0.0,1.1.0", "2025-03-01T08:03:07.250000", ADMIN),
    (1, "NEW_DATASET", "completed", "RELEASED,1.1.0", "2025-03-01T08:03:07.260000", ADMIN),
    (2, "OLD_DATASET", "completed", "ADD", "2024-12-01T10:00:00", ADMIN),
    (3, "DATASET_A", "importing", "ADD", "2025-06-01T09:30:00.000000", ADMIN),
]
MAINTENANCE = [
    # msg, paused, timestamp (local)
    ("Initial status inserted by at startup.", False, "2024-11-01T08:00:00.000001"),
    ("Oppgradering", True, "2025-08-01T22:00:00.000000"),
    ("Ferdig", False, "2025-08-02T06:00:00"),
]


def write_platform_db(path: Path, jobs: list[SourceJob], schema: str = PLATFORM_SCHEMA) -> None:
    """The database as the platform's service leaves it: each job inserted when posted, its
    log appended as it moved on, targets upserted, maintenance statuses inserted."""
    mid_2025 = schema is MID_2025_SCHEMA
    db = sqlite3.connect(path)
    db.executescript(schema)
    if mid_2025:
        db.execute(
            "INSERT INTO datastore (name, rdn, description, directory) VALUES (?, ?, ?, ?)",
            ("Forskningsdata", "no.ssb.fdb", "Forskningsdata", "/datastores/no_ssb_fdb"),
        )
    else:
        db.executemany("INSERT INTO datastore VALUES (?, ?, ?, ?, ?, ?, ?)", DATASTORES)
    for job in jobs:
        cursor = db.execute(
            "INSERT INTO job (target, datastore_id, status, parameters, created_at, created_by)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                job.parameters["target"],
                job.datastore,
                job.status,
                platform_row_parameters(job.parameters),
                job.created_at,
                json.dumps(job.created_by),
            ),
        )
        job.job_id = str(cursor.lastrowid)
        for at, message in job.log:
            db.execute("INSERT INTO job_log (job_id, msg, at) VALUES (?, ?, ?)", (job.job_id, message, at))
    column = "datastore" if mid_2025 else "datastore_id"
    for datastore, name, status, action, at, by in TARGETS:
        if not mid_2025 or datastore == 1:
            db.execute(
                f"INSERT INTO target (name, {column}, status, last_updated_at, last_updated_by, action)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, datastore, status, at, json.dumps(by), action),
            )
    for msg, paused, timestamp in MAINTENANCE:
        db.execute("INSERT INTO maintenance (msg, paused, timestamp) VALUES (?, ?, ?)", (msg, paused, timestamp))
    db.commit()
    db.close()


def platform_config(tmp_path: Path, storage: dict[str, Any], input_dir: Path, default: str) -> Path:
    sections = service_config(storage, input_dir)
    sections["datastores"]["default"] = default
    return write_config(tmp_path / "adopting.toml", sections)


async def assert_job_served(client: Any, job: SourceJob, datastore: str) -> None:
    response = await client.get(f"/jobs/{job.job_id}")
    assert response.status == 200, (job, await response.text())
    served = await response.json()
    assert served["datastoreRdn"] == datastore
    assert served["status"] == job.status
    assert served["parameters"] == job.parameters
    assert served["createdBy"] == job.created_by
    assert_instant(served["createdAt"], local(job.created_at))
    expected_log = sorted(job.log)
    assert [entry["message"] for entry in served["log"]] == [message for _, message in expected_log]
    for entry, (at, _) in zip(served["log"], expected_log, strict=True):
        assert_instant(entry["at"], local(at))


async def assert_targets_served(client: Any, path: str, datastore: int) -> None:
    response = await client.get(path)
    assert response.status == 200
    served = await response.json()
    expected = sorted((target for target in TARGETS if target[0] == datastore), key=lambda target: target[1])
    assert [target["name"] for target in served] == [target[1] for target in expected]
    for target, (_, _, status, action, at, by) in zip(served, expected, strict=True):
        assert (target["status"], target["action"], target["lastUpdatedBy"]) == (status, action.split(","), by)
        assert_instant(target["lastUpdatedAt"], local(at))


async def assert_maintenance_served(client: Any) -> None:
    response = await client.get("/maintenance-history")
    history = await response.json()
    assert [(status["msg"], status["paused"]) for status in history] == [(m, p) for m, p, _ in reversed(MAINTENANCE)]
    for status, (_, _, at) in zip(history, reversed(MAINTENANCE), strict=True):
        assert_instant(status["timestamp"], local(at))


async def test_the_platforms_database_comes_over_whole_and_the_executor_carries_on(
    tmp_path, storage, input_dir, make_client
):
    jobs = platform_jobs()
    database = tmp_path / "datastore-api.db"
    write_platform_db(database, [*jobs, UNKNOWN_OPERATION])
    before = database.read_bytes()
    config = platform_config(tmp_path, storage, input_dir, default="no.ssb.fdb")

    report = adopted(config, "--from-platform-sqlite", str(database))

    assert database.read_bytes() == before  # only read
    older, newer = jobs[5], jobs[6]
    assert len(left_out(report)) == 2
    assert f"not brought over: job {UNKNOWN_OPERATION.job_id}: parameters.operation: Must be one of" in report
    assert f"not brought over: job {older.job_id}: in progress on target DATASET_E of datastore no.ssb.fdb" in report
    assert "note: datastore 1 (no.ssb.fdb): it is the configured default datastore" in report
    assert (
        "datastores: 2 (1 deleted), jobs: 9 (5 in progress), log lines: 10, targets: 6, maintenance statuses: 3;"
        " not brought over: 2"
    ) in report
    client = await make_client(datastores={"default": "no.ssb.fdb"})
    for job in jobs:
        if job is not older:
            await assert_job_served(client, job, DATASTORES[job.datastore - 1][1])
    for job in (older, UNKNOWN_OPERATION):
        assert (await client.get(f"/jobs/{job.job_id}")).status == 404
    # The summer-time offset of the repeated hour (fold=0), and the manifesto's null updateType kept.
    served = await (await client.get(f"/jobs/{jobs[3].job_id}")).json()
    assert served["createdAt"] == "2025-10-26T00:30:00.500000+00:00"
    served = await (await client.get(f"/jobs/{jobs[2].job_id}")).json()
    assert served["parameters"]["bumpManifesto"]["updateType"] is None
    listed = await (await client.get("/jobs?ignoreCompleted=true")).json()
    assert sorted(job["jobId"] for job in listed) == sorted(
        job.job_id for job in (jobs[1], jobs[3], newer, jobs[8], jobs[9])
    )

    await assert_targets_served(client, "/targets", 1)
    await assert_targets_served(client, "/datastores/no.ssb.lab/targets", 3)
    await assert_maintenance_served(client)
    assert await (await client.get("/datastores/rdns")).json() == ["no.ssb.fdb", "no.ssb.lab"]
    assert await (await client.get("/datastores/no.ssb.lab")).json() == {
        "rdn": "no.ssb.lab",
        "name": "Lab",
        "description": "Trials",
        "directory": "/datastores/no_ssb_lab",
        "bumpEnabled": True,
    }
    # The deleted datastore is registered, deleted: out of every list, its rdn never reused, its jobs kept.
    assert (await client.get("/datastores/no.ssb.old")).status == 404
    taken = await client.post("/datastores", json={"rdn": "no.ssb.old", "name": "Again", "description": "d"})
    assert taken.status == 409

    # The executor goes on: a busy target stays busy, and an in-progress job moves on to its end.
    [busy] = await post_jobs(client, {"operation": "ADD", "target": "DATASET_C"})
    assert busy == {"status": "FAILED", "msg": "FAILED: Job with target DATASET_C already in progress"}
    response = await client.post(
        "/datastores/no.ssb.lab/jobs", json={"jobs": [{"operation": "ADD", "target": "DATASET_A"}]}
    )
    assert (await response.json())[0]["msg"] == "FAILED: Job with target DATASET_A already in progress"
    for status in ("built", "completed"):
        response = await client.put(f"/jobs/{jobs[3].job_id}", json={"status": status, "log": "carried on"})
        assert response.status == 200, await response.text()
    served = await (await client.get(f"/jobs/{jobs[3].job_id}")).json()
    assert served["status"] == "completed" and served["log"][-1]["message"] == "carried on"
    assert (await client.get("/targets/DATASET_C")).status == 200
    [created] = await post_jobs(client, {"operation": "ADD", "target": "DATASET_C"})
    assert created["msg"] == "CREATED"


async def test_a_mid_2025_database_comes_over_into_its_one_datastore(tmp_path, storage, input_dir, make_client):
    jobs = [job for job in platform_jobs() if job.datastore == 1 and job.status in ("completed", "queued")][:3]
    database = tmp_path / "job-service.db"
    write_platform_db(database, jobs, MID_2025_SCHEMA)
    config = platform_config(tmp_path, storage, input_dir, default="local")

    report = adopted(config, "--from-platform-sqlite", str(database))

    assert "note: the configured default datastore local: it is none of the source's" in report
    client = await make_client()
    for job in jobs:
        await assert_job_served(client, job, "no.ssb.fdb")
    await assert_targets_served(client, "/datastores/no.ssb.fdb/targets", 1)
    await assert_maintenance_served(client)
    assert await (await client.get("/datastores/rdns")).json() == ["local", "no.ssb.fdb"]
    datastore = await (await client.get("/datastores/no.ssb.fdb")).json()
    assert datastore["bumpEnabled"] is False  # that service had no such column


async def test_a_database_without_datastores_comes_over_into_the_default_datastore(
    tmp_path, storage, input_dir, make_client
):
    jobs = [job for job in platform_jobs() if job.datastore == 1][:4]
    database = tmp_path / "job-service.db"
    write_platform_db(database, jobs, MID_2025_SCHEMA)
    db = sqlite3.connect(database)
    db.execute("DROP TABLE datastore")
    db.commit()
    db.close()
    config = platform_config(tmp_path, storage, input_dir, default="local")

    report = adopted(config, "--from-platform-sqlite", str(database))

    assert "datastores: 0 (0 deleted), jobs: 4 (2 in progress)" in report
    client = await make_client()
    for job in jobs:
        await assert_job_served(client, job, "local")
    await assert_targets_served(client, "/targets", 1)
    assert await (await client.get("/datastores/rdns")).json() == ["local"]


# --- the original service's MongoDB, written as it wrote it ------------------------------


@pytest.fixture
def original_url(mongodb_url):
    """The URL of an empty database for the original service, on the tests' MongoDB server."""
    name = f"original_{uuid.uuid4().hex[:12]}"
    yield mongodb_url.replace("/?", f"/{name}?")
    with MongoClient(mongodb_url) as client:
        client.drop_database(name)


def bson_time(local_text: str) -> datetime:
    """A log time as the original stored it: `datetime.now(UTC)` without its zone, a BSON date in UTC."""
    return local(local_text).astimezone(UTC).replace(tzinfo=None)


def original_job(job: SourceJob, job_id: str) -> dict[str, Any]:
    """A job document as the original stored it: the SPEC's job, naive local `createdAt`, BSON log times."""
    return {
        "jobId": job_id,
        "status": job.status,
        "parameters": copy.deepcopy(job.parameters),
        "log": [{"at": bson_time(at), "message": message} for at, message in job.log],
        "createdAt": job.created_at,
        "createdBy": job.created_by,
    }


def write_original(url: str, collections: dict[str, list[dict[str, Any]]]) -> None:
    with MongoClient(url) as client:
        database = client.get_default_database()
        for name, documents in collections.items():
            if documents:
                database[name].insert_many(documents)


def original_source() -> tuple[dict[str, list[dict[str, Any]]], dict[str, SourceJob]]:
    """The original's collections, and the jobs each should serve afterwards by id."""
    jobs = {str(uuid.uuid4()): job for job in platform_jobs() if job.datastore == 1}
    for job_id, job in jobs.items():
        job.job_id = job_id
    bump_id = next(job_id for job_id, job in jobs.items() if job.parameters["operation"] == "BUMP")
    documents = {job_id: original_job(job, job_id) for job_id, job in jobs.items()}
    # The original left a null updateType out.
    del documents[bump_id]["parameters"]["bumpManifesto"]["updateType"]
    in_progress = [document for document in documents.values() if document["status"] not in ("completed", "failed")]
    completed = [document for document in documents.values() if document["status"] in ("completed", "failed")]
    # A crash while completing a job: the job is in both collections, final in completed.
    crashed = SourceJob(
        1,
        "completed",
        {"operation": "ADD", "target": "DATASET_G"},
        "2025-02-02T10:00:00.000000",
        lived(["completed"], "2025-02-02T10:00"),
    )
    crashed.job_id = str(uuid.uuid4())
    jobs[crashed.job_id] = crashed
    completed.append(original_job(crashed, crashed.job_id))
    in_progress.append({**original_job(crashed, crashed.job_id), "status": "importing", "log": []})
    targets = [
        {"name": name, "lastUpdatedAt": at, "status": status, "lastUpdatedBy": by, "action": action.split(",")}
        for datastore, name, status, action, at, by in TARGETS
        if datastore == 1
    ]
    maintenance = [
        {"msg": msg, "paused": paused, "timestamp": str(datetime.fromisoformat(timestamp))}
        for msg, paused, timestamp in MAINTENANCE
    ]
    return {"inprogress": in_progress, "completed": completed, "targets": targets, "maintenance": maintenance}, jobs


async def test_the_original_services_mongodb_comes_over_whole(tmp_path, storage, input_dir, make_client, original_url):
    collections, jobs = original_source()
    await asyncio.to_thread(write_original, original_url, collections)
    config = write_config(tmp_path / "adopting.toml", service_config(storage, input_dir))

    report = adopted(config, "--from-original-mongodb", original_url)

    older = next(job for job in jobs.values() if job.created_at.startswith("2025-04-01"))
    crashed = next(job for job in jobs.values() if job.parameters["target"] == "DATASET_G")
    assert len(left_out(report)) == 1
    assert f"not brought over: job {older.job_id} in inprogress: in progress on target DATASET_E" in report
    assert f"note: job {crashed.job_id} in completed: in both inprogress and completed" in report
    assert "jobs: 7 (3 in progress), log lines: 9, targets: 4, maintenance statuses: 3; not brought over: 1" in report
    client = await make_client()
    for job in jobs.values():
        if job is older:
            assert (await client.get(f"/jobs/{job.job_id}")).status == 404
        else:
            await assert_job_served(client, job, "local")
    bump = next(job for job in jobs.values() if job.parameters["operation"] == "BUMP")
    served = await (await client.get(f"/jobs/{bump.job_id}")).json()
    assert served["parameters"]["bumpManifesto"]["updateType"] is None
    await assert_targets_served(client, "/targets", 1)
    await assert_maintenance_served(client)
    # The maintenance timestamp's format of the original: a space, and microseconds.
    assert collections["maintenance"][0]["timestamp"] == "2024-11-01 08:00:00.000001"

    [busy] = await post_jobs(client, {"operation": "ADD", "target": "DATASET_B"})
    assert busy["msg"] == "FAILED: Job with target DATASET_B already in progress"
    queued = next(job for job in jobs.values() if job.parameters["target"] == "DATASET_B")
    assert (await client.put(f"/jobs/{queued.job_id}", json={"status": "failed"})).status == 200
    [created] = await post_jobs(client, {"operation": "ADD", "target": "DATASET_B"})
    assert created["msg"] == "CREATED"


async def test_a_job_left_in_completed_unfinished_by_a_crash_comes_over_in_progress(
    tmp_path, storage, input_dir, make_client, original_url
):
    """The original moved a completing job by inserting it into completed, then setting its status:
    a crash between the two leaves it there with its old status, which it keeps."""
    job = SourceJob(1, "importing", {"operation": "ADD", "target": "DATASET_H"}, "2025-02-03T10:00:00.000000")
    job.job_id = str(uuid.uuid4())
    await asyncio.to_thread(write_original, original_url, {"completed": [original_job(job, job.job_id)]})
    config = write_config(tmp_path / "adopting.toml", service_config(storage, input_dir))

    adopted(config, "--from-original-mongodb", original_url)

    client = await make_client()
    await assert_job_served(client, job, "local")
    [busy] = await post_jobs(client, {"operation": "ADD", "target": "DATASET_H"})
    assert busy["msg"] == "FAILED: Job with target DATASET_H already in progress"


# --- bad sources, a check, a store that is not empty --------------------------------------


@pytest.fixture
def tinydb_config(tmp_path, input_dir) -> Path:
    storage = {"backend": "tinydb", "tinydb": {"path": str(tmp_path / "data")}}
    return write_config(tmp_path / "adopting.toml", service_config(storage, input_dir))


def nothing_written(config: Path) -> bool:
    data = config.parent / "data"
    return not data.exists() or not any(data.iterdir())


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"job_id,status\n1,queued\n" * 100)


def other_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE job (job_id INTEGER PRIMARY KEY, status TEXT)")
    db.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (None, "{path}: no such file"),
        (not_sqlite, "{path} is not an SQLite database (file is not a database)"),
        (
            other_sqlite,
            "{path} is not a database of the platform's job service: it has no table job_log, target, maintenance",
        ),
    ],
)
def test_a_bad_sqlite_source_is_refused_with_one_line_and_nothing_written(tinydb_config, tmp_path, make, expected):
    path = tmp_path / "source.db"
    if make is not None:
        make(path)
    result = run_job_service(tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE)
    assert refused(result) == "job-service: " + expected.format(path=path)
    assert nothing_written(tinydb_config)


def test_a_platform_database_lacking_a_column_is_refused(tinydb_config, tmp_path):
    path = tmp_path / "source.db"
    write_platform_db(path, [])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE job_log DROP COLUMN at")
    db.close()
    result = run_job_service(tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE)
    assert refused(result) == (
        f"job-service: {path} is not a database of the platform's job service: its table job_log has no column at"
    )


def test_an_unreachable_mongodb_is_refused_with_one_line_and_nothing_written(tinydb_config):
    port = free_port()
    url = f"mongodb://127.0.0.1:{port}/jobdb?directConnection=true"
    result = run_job_service(tinydb_config, "import", "--from-original-mongodb", url, "--timezone", ZONE)
    assert refused(result) == f"job-service: cannot reach MongoDB at 127.0.0.1:{port} within 5 s"
    assert nothing_written(tinydb_config)


def test_an_import_that_fails_on_the_way_leaves_the_store_empty_again(tinydb_config, tmp_path):
    """A database whose schema reads but whose job pages are damaged: the datastores are
    written before the jobs are read, and taken out again when reading them fails."""
    path = tmp_path / "source.db"
    many = [
        SourceJob(1, "completed", {"operation": "ADD", "target": f"D_{n}"}, "2025-01-01T00:00:00") for n in range(3000)
    ]
    write_platform_db(path, many)
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle - 20_000 : middle + 20_000] = bytes(range(256)) * 156 + bytes(64)
    path.write_bytes(bytes(content))
    result = run_job_service(tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE)
    assert refused(result) == (
        f"job-service: cannot read {path}: database disk image is malformed; nothing was imported"
    )
    assert "Reading the platform's SQLite database" in result.stdout

    good = tmp_path / "good.db"
    write_platform_db(good, platform_jobs())
    adopted(tinydb_config, "--from-platform-sqlite", str(good))  # without --replace: the store is empty


def test_a_mongodb_database_that_is_not_the_originals_is_refused(tinydb_config, original_url):
    write_original(original_url, {"orders": [{"number": 1}]})
    result = run_job_service(tinydb_config, "import", "--from-original-mongodb", original_url, "--timezone", ZONE)
    assert refused(result).endswith(
        "is not the original job service's: it has none of the collections inprogress, completed, targets, maintenance"
    )
    assert nothing_written(tinydb_config)


def test_the_originals_own_database_is_never_the_destination(tmp_path, input_dir, mongodb_url, original_url):
    """With --replace, importing into the source's own database would empty it first."""
    job = platform_jobs()[0]
    write_original(original_url, {"completed": [original_job(job, str(uuid.uuid4()))]})
    name = original_url.split("/")[3].split("?")[0]
    storage = {"backend": "mongodb", "mongodb": {"url": mongodb_url, "database": name}}
    config = write_config(tmp_path / "adopting.toml", service_config(storage, input_dir))
    result = run_job_service(config, "import", "--from-original-mongodb", original_url, "--timezone", ZONE, "--replace")
    assert refused(result).endswith(
        f"database {name} at {mongodb_url.split('/')[2]} is the configured store: import into a database of its own"
    )
    with MongoClient(original_url) as client:
        assert client.get_default_database().completed.count_documents({}) == 1


def test_an_unknown_time_zone_is_refused_with_one_line(tinydb_config, tmp_path):
    path = tmp_path / "source.db"
    write_platform_db(path, platform_jobs())
    result = run_job_service(
        tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", "Europe/Atlantis"
    )
    assert refused(result) == "job-service: unknown time zone 'Europe/Atlantis': give an IANA name, such as Europe/Oslo"
    assert nothing_written(tinydb_config)


def test_the_time_zone_is_needed_to_read_the_platforms_times(tinydb_config, tmp_path):
    result = run_job_service(tinydb_config, "import", "--from-platform-sqlite", str(tmp_path / "source.db"))
    assert result.returncode == 2
    assert "--timezone is needed" in result.stderr


def test_a_check_reads_and_reports_everything_and_writes_nothing(tinydb_config, tmp_path):
    path = tmp_path / "source.db"
    write_platform_db(path, [*platform_jobs(), UNKNOWN_OPERATION])
    result = run_job_service(
        tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE, "--check"
    )
    assert result.returncode == 0, result.stderr
    assert f"not brought over: job {UNKNOWN_OPERATION.job_id}: parameters.operation" in result.stdout
    assert "datastores: 3 (1 deleted), jobs: 9 (5 in progress)" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "Checked only: nothing was written."
    assert not (tmp_path / "data").exists()


async def test_a_store_that_is_not_empty_is_refused_unless_replace(tmp_path, storage, input_dir, make_client):
    jobs = platform_jobs()
    path = tmp_path / "source.db"
    write_platform_db(path, jobs)
    config = platform_config(tmp_path, storage, input_dir, default="no.ssb.fdb")
    adopted(config, "--from-platform-sqlite", str(path))
    client = await make_client(datastores={"default": "no.ssb.fdb"})
    await post_jobs(client, {"operation": "ADD", "target": "POSTED_LATER"})
    await client.close()

    result = run_job_service(config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE)
    assert refused(result) == "job-service: the destination store is not empty; add --replace to empty it first"
    adopted(config, "--from-platform-sqlite", str(path), "--replace")

    client = await make_client(datastores={"default": "no.ssb.fdb"})
    assert (await client.get("/targets/POSTED_LATER")).status == 404
    listed = await (await client.get("/jobs")).json()
    assert sorted(job["jobId"] for job in listed) == sorted(job.job_id for job in jobs if job is not jobs[5])


def test_the_progress_display_counts_jobs_at_most_once_a_period():
    stream = io.StringIO()
    progress = Progress(4, stream, every=0)
    for _ in range(4):
        progress.advance()
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert re.fullmatch(r"job-service: 1 of 4 jobs read \(25%\), [\d,]+ a second", lines[0])
    assert lines[-1].startswith("job-service: 4 of 4 jobs read (100%)")
    quiet = io.StringIO()
    progress = Progress(4, quiet)
    for _ in range(4):
        progress.advance()
    progress.finish()
    assert quiet.getvalue() == ""


# --- what the API would refuse -------------------------------------------------------------


def long_log(start: str, lines: int, characters: int) -> list[tuple[str, str]]:
    first = datetime.fromisoformat(start)
    return [((first + timedelta(seconds=n)).isoformat(timespec="microseconds"), "x" * characters) for n in range(lines)]


async def test_what_the_api_would_refuse_is_reported_and_everything_else_comes_over(
    tmp_path, storage, input_dir, make_client
):
    jobs = platform_jobs()
    latin = jobs[0]
    in_deleted = SourceJob(2, "queued", {"operation": "ADD", "target": "OLD_DATASET"}, "2025-09-02T09:00:00")
    # Over the log limit in progress (70 lines of 16,000 characters), and a job of 17.6 MB.
    full = SourceJob(1, "validating", {"operation": "ADD", "target": "FULL"}, "2025-08-01T09:00:00", [])
    full.log = long_log("2025-08-01T09:00:00", 70, 16_000)
    huge = SourceJob(1, "completed", {"operation": "ADD", "target": "HUGE"}, "2025-08-02T09:00:00")
    huge.log = long_log("2025-08-02T09:00:00", 1100, 16_000)
    database = tmp_path / "datastore-api.db"
    write_platform_db(database, [*jobs, in_deleted, full, huge])
    db = sqlite3.connect(database)
    # One Latin-1 byte in one log line, and a datastore whose rdn is a route.
    db.execute(
        "UPDATE job_log SET msg = CAST(? AS TEXT) WHERE job_id = ? AND msg = 'Set status: validating'",
        (b"Set status: validat\xe9", int(latin.job_id)),
    )
    db.execute("INSERT INTO datastore (rdn, description, directory, name) VALUES ('rdns', 'd', '/d/rdns', 'Rdns')")
    db.commit()
    db.close()
    config = platform_config(tmp_path, storage, input_dir, default="no.ssb.fdb")

    report = adopted(config, "--from-platform-sqlite", str(database))

    assert (
        f"not brought over: job {latin.job_id}: log.1.message: b'Set status: validat\\xe9' (not UTF-8 text)" in report
    )
    assert "not brought over: datastore 4 (rdns): rdn: rdns is the name of a route" in report
    assert (
        f"not brought over: job {in_deleted.job_id}: in progress in the datastore no.ssb.old, which is deleted"
        in report
    )
    assert f"not brought over: job {huge.job_id}: it is 17," in report
    assert f"note: job {full.job_id}: in progress with 1,120,000 characters of log" in report
    assert "SPEC" not in report
    client = await make_client(datastores={"default": "no.ssb.fdb"})
    for job in (latin, in_deleted, huge):
        assert (await client.get(f"/jobs/{job.job_id}")).status == 404
    await assert_job_served(client, jobs[1], "no.ssb.fdb")
    served = await (await client.get(f"/jobs/{full.job_id}")).json()
    assert served["log"][0]["message"].startswith("job-service left out the 38 oldest lines of this log")
    assert len(served["log"]) == 1 + 32
    # The job goes on: a change that is not final finds room in its log.
    response = await client.put(f"/jobs/{full.job_id}", json={"status": "built", "log": "carried on"})
    assert response.status == 200, await response.text()


async def test_a_bson_binary_value_of_the_original_is_reported_and_the_rest_comes_over(
    tmp_path, storage, input_dir, make_client, original_url
):
    from bson import Binary

    collections, jobs = original_source()
    binary = collections["completed"][0]
    binary["parameters"]["description"] = Binary(b"\x80\x81", 0)
    await asyncio.to_thread(write_original, original_url, collections)
    config = write_config(tmp_path / "adopting.toml", service_config(storage, input_dir))

    report = adopted(config, "--from-original-mongodb", original_url)

    assert f"not brought over: job {binary['jobId']} in completed: parameters.description: b'\\x80\\x81'" in report
    assert "not brought over: 2" in report
    client = await make_client()
    assert (await client.get(f"/jobs/{binary['jobId']}")).status == 404
    listed = await client.get("/jobs")
    assert listed.status == 200
    assert len(await listed.json()) == len(jobs) - 2


def test_a_locked_sqlite_file_is_reported_as_locked(tinydb_config, tmp_path):
    path = tmp_path / "source.db"
    write_platform_db(path, platform_jobs())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_job_service(tinydb_config, "import", "--from-platform-sqlite", str(path), "--timezone", ZONE)
    finally:
        holder.close()
    assert refused(result) == (
        f"job-service: {path} is locked by another process (database is locked): stop the platform's service"
        " (or import a copy of the file) and run the import again"
    )
    assert nothing_written(tinydb_config)
