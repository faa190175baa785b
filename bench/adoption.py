"""The adoption benchmark: `job-service import` of a platform's history, from each source into each backend.

It writes a source of --jobs jobs of each kind, as the platform's services leave them
(5 to 10 log lines a job, a job in progress on a few targets, some BUMPs with their
manifestos, the maintenance history), and times the command as operators run it, one
process per import, into TinyDB and into MongoDB (SecantusDB, started as the tests
start it, or the server MONGODB_URL names):
- the platform's SQLite database (`--from-platform-sqlite`);
- the original service's MongoDB database (`--from-original-mongodb`), on that server.

    SECANTUSD=.venv-secantus/bin/secantusd-py python bench/adoption.py --jobs 100000

Prints a markdown table: seconds, jobs a second and the import's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import platform_row_parameters, service_config, write_config  # noqa: E402
from mongo_server import MongoServer, secantusd  # noqa: E402
from pymongo import MongoClient  # noqa: E402

ZONE = "Europe/Oslo"
OSLO = ZoneInfo(ZONE)
RDN = "no.ssb.fdb"
USERS = [{"userId": str(uuid.UUID(int=n)), "firstName": f"Kari{n}", "lastName": "Nordmann"} for n in range(20)]
STEPS = [
    "initiated",
    "validating",
    "decrypting",
    "transforming",
    "pseudonymizing",
    "partitioning",
    "built",
    "importing",
]
IN_PROGRESS = 50
TARGETS = 5000
MAINTENANCE = 200
SCHEMA = """
CREATE TABLE job (job_id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT, datastore_id INTEGER, status TEXT,
    created_at TIMESTAMP, created_by TEXT, parameters TEXT);
CREATE TABLE maintenance (maintenance_id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT, paused BOOLEAN,
    timestamp TIMESTAMP);
CREATE TABLE target (name TEXT, datastore_id INTEGER, status TEXT, action TEXT, last_updated_at TIMESTAMP,
    last_updated_by TEXT, PRIMARY KEY (name, datastore_id));
CREATE TABLE job_log (job_log_id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER, msg TEXT, at TIMESTAMP);
CREATE TABLE datastore (datastore_id INTEGER PRIMARY KEY AUTOINCREMENT, rdn TEXT, description TEXT,
    directory TEXT, name TEXT, bump_enabled BOOLEAN DEFAULT FALSE, deleted_at TIMESTAMP);
"""


def history(count: int) -> Iterator[dict[str, Any]]:
    """`count` jobs over four years, oldest first, each with its local times: the last
    IN_PROGRESS ones still in progress, each on a target of its own."""
    rng = random.Random(12)
    start = datetime(2021, 1, 1, 8, 0)
    for number in range(count):
        created = start + timedelta(seconds=number * 1200 + rng.randrange(600), microseconds=rng.randrange(10**6))
        in_progress = number >= count - IN_PROGRESS
        target = f"DATASET_{number % TARGETS:05d}" if not in_progress else f"BUSY_{number:06d}"
        kind = rng.random()
        if kind < 0.02 and not in_progress:
            parameters = bump(rng, number)
        elif kind < 0.3:
            parameters = {"operation": "SET_STATUS", "target": target, "releaseStatus": "PENDING_RELEASE"}
        else:
            parameters = {"operation": rng.choice(["ADD", "CHANGE", "PATCH_METADATA"]), "target": target}
        steps = rng.randrange(5, 11)
        status = STEPS[steps % len(STEPS)] if in_progress else ("failed" if rng.random() < 0.05 else "completed")
        names = [*STEPS[: steps - 1], status][:steps]
        log = [
            (created + timedelta(seconds=7 * n, microseconds=n), f"Set status: {name}") for n, name in enumerate(names)
        ]
        yield {
            "status": status,
            "parameters": parameters,
            "createdAt": created,
            "createdBy": USERS[number % len(USERS)],
            "log": log,
        }


def bump(rng: random.Random, number: int) -> dict[str, Any]:
    updates = [
        {
            "name": f"DATASET_{rng.randrange(TARGETS):05d}",
            "description": "Ny versjon",
            "operation": "ADD",
            "releaseStatus": rng.choice(["PENDING_RELEASE", "PENDING_DELETE", "DRAFT"]),
        }
        for _ in range(10)
    ]
    manifesto = {
        "version": f"{number}.0.0.0",
        "description": "Publisering",
        "releaseTime": 1700000000 + number,
        "languageCode": "no",
        "updateType": None,
        "dataStructureUpdates": updates,
    }
    return {
        "operation": "BUMP",
        "target": "DATASTORE",
        "description": "Publisering",
        "bumpManifesto": manifesto,
        "bumpFromVersion": f"{number - 1}.0.0",
        "bumpToVersion": f"{number}.0.0",
    }


def targets(jobs: int) -> Iterator[tuple[str, str, list[str], datetime, dict[str, str]]]:
    for number in range(min(TARGETS, jobs)):
        at = datetime(2024, 6, 1, 12) + timedelta(minutes=number)
        yield f"DATASET_{number:05d}", "completed", ["ADD"], at, USERS[number % len(USERS)]


def maintenance() -> Iterator[tuple[str, bool, datetime]]:
    for number in range(MAINTENANCE):
        yield f"Status {number}", number % 2 == 1, datetime(2021, 1, 1, 7) + timedelta(days=7 * number)


def write_sqlite(path: Path, jobs: int) -> None:
    """The platform's SQLite database: its schema, its rows as its service writes them."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute(
        "INSERT INTO datastore VALUES (1, ?, 'Forskningsdata', '/datastores/fdb', 'Forskningsdata', 1, NULL)", (RDN,)
    )
    logs = []
    for number, job in enumerate(history(jobs), start=1):
        stored = platform_row_parameters(job["parameters"])
        db.execute(
            "INSERT INTO job VALUES (?, ?, 1, ?, ?, ?, ?)",
            (number, job["parameters"]["target"], job["status"], job["createdAt"].isoformat(),
             json.dumps(job["createdBy"]), stored),
        )  # fmt: skip
        logs += [(number, message, at.isoformat()) for at, message in job["log"]]
        if len(logs) > 50_000:
            db.executemany("INSERT INTO job_log (job_id, msg, at) VALUES (?, ?, ?)", logs)
            logs = []
    db.executemany("INSERT INTO job_log (job_id, msg, at) VALUES (?, ?, ?)", logs)
    db.executemany(
        "INSERT INTO target VALUES (?, 1, ?, ?, ?, ?)",
        [
            (name, status, ",".join(action), at.isoformat(), json.dumps(by))
            for name, status, action, at, by in targets(jobs)
        ],
    )
    db.executemany(
        "INSERT INTO maintenance (msg, paused, timestamp) VALUES (?, ?, ?)",
        [(msg, paused, at.isoformat()) for msg, paused, at in maintenance()],
    )
    db.commit()
    db.close()


def write_mongodb(url: str, jobs: int) -> None:
    """The original service's database: jobs as it stored them (naive local `createdAt`,
    BSON log times in UTC, a manifesto's null updateType left out), targets, maintenance."""
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    with client:
        database = client.get_default_database()
        batch: dict[str, list[dict[str, Any]]] = {"inprogress": [], "completed": []}
        for job in history(jobs):
            parameters = job["parameters"]
            if "bumpManifesto" in parameters:
                parameters["bumpManifesto"] = {k: v for k, v in parameters["bumpManifesto"].items() if v is not None}
            document = {
                "jobId": str(uuid.uuid4()),
                "status": job["status"],
                "parameters": parameters,
                "log": [{"at": utc(at), "message": message} for at, message in job["log"]],
                "createdAt": job["createdAt"].isoformat(),
                "createdBy": job["createdBy"],
            }
            collection = "completed" if job["status"] in ("completed", "failed") else "inprogress"
            batch[collection].append(document)
            if len(batch[collection]) == 1000:
                database[collection].insert_many(batch[collection])
                batch[collection] = []
        for collection, documents in batch.items():
            if documents:
                database[collection].insert_many(documents)
        database.targets.insert_many(
            [
                {"name": name, "lastUpdatedAt": at.isoformat(), "status": status, "lastUpdatedBy": by, "action": action}
                for name, status, action, at, by in targets(jobs)
            ]
        )
        database.maintenance.insert_many(
            [{"msg": msg, "paused": paused, "timestamp": str(at)} for msg, paused, at in maintenance()]
        )


def utc(local_time: datetime) -> datetime:
    """A local time as the original stored its log times: a BSON date in UTC."""
    return local_time.replace(tzinfo=OSLO).astimezone(UTC).replace(tzinfo=None)


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` (its path)."""
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def timed_import(config: Path, source: list[str]) -> tuple[float, float, str]:
    """One `job-service import` as operators run it, a process of its own: its seconds,
    its peak memory (MiB), and its report's summary line."""
    command = [sys.executable, "-m", "job_service", "--config", str(config), "import", *source, "--timezone", ZONE]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        # wait4, not wait: it gives this child's own peak memory.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read()}")
        summary = next(line for line in out.read().splitlines() if line.startswith("datastores: "))
    return seconds, usage.ru_maxrss / 1024, summary


def destination(backend: str, work: Path, url: str) -> dict[str, Any]:
    """A `[storage]` section of an empty store."""
    if backend == "tinydb":
        return {"backend": "tinydb", "tinydb": {"path": str(work / f"data-{uuid.uuid4().hex[:8]}")}}
    database = f"adoption_{uuid.uuid4().hex[:8]}"
    return {"backend": "mongodb", "mongodb": {"url": url, "database": database, "timeout_seconds": 30}}


def run(jobs: int, url: str) -> list[str]:
    rows = []
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    with tempfile.TemporaryDirectory(prefix="job-service-adoption-") as tmp, client:
        work = Path(tmp)
        original = f"adoption_original_{uuid.uuid4().hex[:8]}"
        sqlite_path = work / "platform.db"
        started = time.perf_counter()
        write_sqlite(sqlite_path, jobs)
        written = {"platform's SQLite": time.perf_counter() - started}
        started = time.perf_counter()
        write_mongodb(with_database(url, original), jobs)
        written["original's MongoDB"] = time.perf_counter() - started
        sources = {
            "platform's SQLite": ["--from-platform-sqlite", str(sqlite_path)],
            "original's MongoDB": ["--from-original-mongodb", with_database(url, original)],
        }
        try:
            for name, source in sources.items():
                for backend in ("tinydb", "mongodb"):
                    storage = destination(backend, work, url)
                    sections = service_config(storage, work / "input")
                    sections["datastores"]["default"] = RDN
                    config = write_config(work / "adopting.toml", sections)
                    seconds, memory, summary = timed_import(config, source)
                    if backend == "mongodb":
                        client.drop_database(storage["mongodb"]["database"])
                    counts = dict(re.findall(r"([a-z ]+): ([\d,]+)", summary))
                    moved, lines = (int(counts[key].replace(",", "")) for key in (" jobs", " log lines"))
                    if moved != jobs or counts[" not brought over"] != "0":
                        raise RuntimeError(f"{name} into {backend}: {summary}")
                    rows.append(
                        f"| {name} | {backend} | {moved:,} | {lines:,} | {seconds:.1f} | {moved / seconds:,.0f}"
                        f" | {memory:,.0f} |"
                    )
        finally:
            client.drop_database(original)
    return [
        f"`job-service import` of {jobs:,} jobs (5-10 log lines each, {TARGETS:,} targets, {MAINTENANCE} maintenance"
        f" statuses), one process per import; MongoDB is {'SecantusDB' if 'MONGODB_URL' not in os.environ else url}.",
        "",
        "| source | into | jobs | log lines | seconds | jobs a second | peak memory MiB |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Writing the sources took " + ", ".join(f"{seconds:.0f} s ({name})" for name, seconds in written.items()) + ".",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in each source")
    args = parser.parse_args()
    server = None
    url = os.environ.get("MONGODB_URL")
    if url is None:
        command = secantusd()
        if command is None:
            sys.exit("bench/adoption.py: set SECANTUSD (a secantusd-py) or MONGODB_URL")
        server = MongoServer(command)
        server.start()
        url = server.url
    try:
        print("\n".join(run(args.jobs, url)))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
