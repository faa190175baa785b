"""Adoption: taking over a deployment of the platform's own job service, history included.

Two foreign sources, each only read, never written:
- the SQLite database of the platform's current service (the datastore API of
  2025-2026 with its several datastores, and the job service of mid-2025 before it,
  whose database may lack `datastore.deleted_at` or the `datastore` table);
- the MongoDB database of the original Flask service (until 2025).

Both wrote times as naive strings in their server's local time (the original's
log times are BSON dates, in UTC): `--timezone` says which zone that was, and every
time comes over as our stores write them, in UTC with microseconds. Each document is
mapped to the shape our stores keep, judged by the API's own rules (a document the
API could not serve never comes over), and loaded through the storage protocol in
batches, so that years of history take bounded memory. What cannot come over is
listed as it is found, with why; nothing is dropped in silence.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError
from pymongo.uri_parser import parse_uri

from . import MongoDBOptions, TinyDBOptions
from .base import (
    FINAL_STATUSES,
    MAX_LOG_CHARACTERS,
    Datastore,
    Job,
    LogEntry,
    MaintenanceStatus,
    Store,
    Target,
    is_text,
    job_order,
    log_characters,
    parse_json,
)
from .transfer import BATCH, IN_DATASTORES, Rules, TransferError, fill_or_empty, open_destination

T = TypeVar("T")
#: Documents per `load_collection` call, and rows per read of the SQLite file: a
#: batch of jobs with their logs is a few megabytes, and a call's own cost (TinyDB
#: writes its files once per call) is spread over many documents.
#: How long the original's MongoDB may take to answer before the import gives up on it.
SOURCE_TIMEOUT_SECONDS = 5.0
#: The original service's database when the URL names none.
ORIGINAL_DATABASE = "jobdb"
ORIGINAL_COLLECTIONS = ("inprogress", "completed", "targets", "maintenance")
#: A progress line at most this often, and none for an import that takes less.
PROGRESS_SECONDS = 1.0


class AdoptionError(TransferError):
    """An adoption that cannot start or go on: its text is the one line printed."""


class Unusable(Exception):
    """A source document that cannot come over in the shape the API serves; its text says why."""


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `--timezone` names."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AdoptionError(f"unknown time zone {name!r}: give an IANA name, such as Europe/Oslo") from None


def instant(value: object, zone: ZoneInfo) -> str:
    """A source's time as our stores write it: ISO-8601 in UTC with microseconds (so
    that the strings sort as the instants do), the same instant.

    A naive time is a local time of `zone`. Of an hour that the autumn's change of
    clocks repeats, it is the first (fold=0, the summer-time offset); a time in the
    hour the spring's change skips is read with the offset before the change. A
    time with an offset, and a BSON date, are instants already.
    """
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Unusable(f"{value!r} is not an ISO-8601 time") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise Unusable(f"{value!r} is not a time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    except OverflowError:
        raise Unusable(f"{value!r} is out of range") from None


@dataclass(frozen=True)
class Read:
    """One document read from a source: mapped to our shape, or why it cannot be;
    `note` is anything else the report should say of it."""

    what: str
    document: Any = None
    problem: str | None = None
    note: str | None = None


def mapped(what: str, mapping: Callable[[], Any], note: str | None = None) -> Read:
    """`mapping()`'s document, or the reason it raised Unusable."""
    try:
        return Read(what, mapping(), note=note)
    except Unusable as exc:
        return Read(what, problem=str(exc), note=note)


def json_object(text: object, name: str) -> dict[str, Any]:
    """A column that holds a JSON object."""
    try:
        value = parse_json(text) if isinstance(text, str | bytes) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise Unusable(f"{name}: {text!r} is not a JSON object")
    return value


def time_of(value: object, zone: ZoneInfo, name: str) -> str:
    try:
        return instant(value, zone)
    except Unusable as exc:
        raise Unusable(f"{name}: {exc}") from None


class Source(Protocol):
    """A foreign store, read a collection at a time, each as a stream."""

    #: What it is, for the report's first line.
    description: str

    async def open(self, adoption: Adoption) -> None:
        """Connect and check it is what it claims, and not the destination itself;
        raise AdoptionError, having read nothing, if not."""

    async def close(self) -> None: ...

    async def job_count(self) -> int:
        """About how many jobs `jobs` yields: what the progress display counts to."""

    #: Each yields every document of its kind, mapped or with its problem.
    def datastores(self) -> AsyncIterator[Read]: ...
    def jobs(self) -> AsyncIterator[Read]: ...
    def targets(self) -> AsyncIterator[Read]: ...
    #: Oldest first.
    def maintenance(self) -> AsyncIterator[Read]: ...


# --- the platform's SQLite database -----------------------------------------------

#: The columns read from each table; `datastore_id` of the target table is `datastore`
#: in some databases of the mid-2025 service.
SQLITE_COLUMNS = {
    "job": ("job_id", "datastore_id", "status", "created_at", "created_by", "parameters"),
    "job_log": ("job_log_id", "job_id", "msg", "at"),
    "target": ("name", "status", "action", "last_updated_at", "last_updated_by"),
    "maintenance": ("maintenance_id", "msg", "paused", "timestamp"),
}
DATASTORE_COLUMNS = ("datastore_id", "rdn", "description", "directory", "name")
#: The log rows that can belong to a job, whose id is an integer (its row id).
JOB_ID = "typeof(job_id) = 'integer'"
#: What SQLite keeps a Python bool as.
SQLITE_BOOLEANS = {0: False, 1: True}
#: SQLite's answers for a database another connection holds locked (SQLITE_BUSY, SQLITE_LOCKED).
SQLITE_LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class NotText:
    """A TEXT value of the SQLite file that is not UTF-8 (a Latin-1 byte, say): read as this,
    not as an error that would end the reading, so that its document alone is left out."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"{self.data!r} (not UTF-8 text)"


def text_or_not(data: bytes) -> str | NotText:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return NotText(data)


def without_nulls(parameters: dict[str, Any]) -> dict[str, Any]:
    """The platform's `parameters` hold every optional key, unset ones as null; the
    API leaves them out. A manifesto's `updateType` keeps its null: it is nested."""
    return {name: value for name, value in parameters.items() if value is not None}


class PlatformSqlite:
    """The SQLite file of the platform's current service, opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the platform's SQLite database {path}"

    async def open(self, adoption: Adoption) -> None:
        self._zone, self._default = adoption.zone, adoption.default["rdn"]
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if not self.path.is_file():
            raise AdoptionError(f"{self.path}: no such file")
        # Read-only: the platform's service may be started again on it if the switch is called off.
        uri = self.path.absolute().as_uri() + "?mode=ro"
        try:
            # Each batch is read on a worker thread, one at a time.
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.text_factory = text_or_not
            self._db.execute("PRAGMA query_only = ON")
            tables = {name: self._columns(name) for name in (*SQLITE_COLUMNS, "datastore")}
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) in SQLITE_LOCKED:
                raise AdoptionError(
                    f"{self.path} is locked by another process ({exc}): stop the platform's service"
                    " (or import a copy of the file) and run the import again"
                ) from None
            raise AdoptionError(f"{self.path} is not an SQLite database ({exc})") from None
        missing = [name for name in SQLITE_COLUMNS if not tables[name]]
        if missing:
            raise AdoptionError(
                f"{self.path} is not a database of the platform's job service: it has no table {', '.join(missing)}"
            )
        columns = {**SQLITE_COLUMNS, **({"datastore": DATASTORE_COLUMNS} if tables["datastore"] else {})}
        for table, needed in columns.items():
            absent = [column for column in needed if column not in tables[table]]
            if absent:
                raise AdoptionError(
                    f"{self.path} is not a database of the platform's job service: its table {table} "
                    f"has no column {', '.join(absent)}"
                )
        self._datastore_columns = tables["datastore"]
        target_datastore = next((name for name in ("datastore_id", "datastore") if name in tables["target"]), None)
        self._target_datastore = target_datastore or "NULL"
        self._rdns = self._read(self._datastore_rdns)

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _read(self, function: Callable[[], T]) -> T:
        try:
            return function()
        except sqlite3.Error as exc:
            raise AdoptionError(f"cannot read {self.path}: {exc}") from None

    async def _rows(self, query: str) -> AsyncIterator[tuple[Any, ...]]:
        """The rows of `query`, read a batch at a time on a worker thread."""
        # On the thread too: SQLite sorts a whole table (job_log's) at the first step.
        cursor = await asyncio.to_thread(self._read, lambda: self._db.execute(query))
        while batch := await asyncio.to_thread(self._read, lambda: cursor.fetchmany(BATCH)):
            for row in batch:
                yield row

    async def close(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()

    async def job_count(self) -> int:
        count: int = await asyncio.to_thread(self._count, "job", "TRUE")
        return count

    def _count(self, table: str, condition: str) -> int:
        return int(
            self._read(lambda: self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE {condition}").fetchone()[0])
        )

    # --- datastores ---------------------------------------------------------------

    def _datastore_rdns(self) -> dict[Any, Any]:
        if not self._datastore_columns:
            return {}
        return dict(self._db.execute("SELECT datastore_id, rdn FROM datastore"))

    def _rdn_of(self, datastore_id: object) -> str:
        """The rdn a job's or target's datastore column names. Without datastores (a
        database of the mid-2025 service) everything is the default datastore's."""
        if not self._rdns:
            return self._default
        # A column of TEXT affinity (the target's `datastore`) holds the id as text.
        key = int(datastore_id) if isinstance(datastore_id, str) and datastore_id.isdigit() else datastore_id
        rdn = self._rdns.get(key)
        if not isinstance(rdn, str):
            raise Unusable(f"its datastore ({datastore_id!r}) is not in the datastore table")
        return rdn

    async def datastores(self) -> AsyncIterator[Read]:
        if not self._datastore_columns:
            return
        optional = [name if name in self._datastore_columns else "NULL" for name in ("bump_enabled", "deleted_at")]
        query = f"SELECT {', '.join([*DATASTORE_COLUMNS, *optional])} FROM datastore ORDER BY datastore_id"
        async for row in self._rows(query):
            yield mapped(f"datastore {row[0]} ({row[1]})", functools.partial(self._datastore, row))

    @staticmethod
    def _datastore(row: tuple[Any, ...]) -> Datastore:
        _, rdn, description, directory, name, bump_enabled, deleted_at = row
        if bump_enabled not in (None, *SQLITE_BOOLEANS):
            raise Unusable(f"bump_enabled: {bump_enabled!r} is not a boolean")
        return Datastore(
            rdn=rdn,
            name=name,
            description=description,
            directory=directory,
            bumpEnabled=bool(bump_enabled),
            deleted=deleted_at is not None,
        )

    # --- jobs, with their logs ----------------------------------------------------------

    async def jobs(self) -> AsyncIterator[Read]:
        """Every job with its log: the job table and the job_log table, each in one
        pass in job order, merged, so that no more than a batch is in memory."""
        jobs = self._rows(
            "SELECT job_id, datastore_id, status, created_at, created_by, parameters FROM job ORDER BY job_id"
        )
        # A job's log is its rows in the order of `at`, then of their id: as the platform reads them.
        logs = self._rows(f"SELECT job_id, msg, at FROM job_log WHERE {JOB_ID} ORDER BY job_id, at, job_log_id")
        strays = await asyncio.to_thread(self._count, "job_log", f"NOT {JOB_ID}")
        if strays:
            yield Read(f"{strays} lines of the job_log table", problem="their job_id is not a job's id (an integer)")
        log = await anext(logs, None)
        async for job in jobs:
            while log is not None and log[0] < job[0]:
                log, orphans = await self._skip_log(log, logs)
                yield orphans
            lines = []
            while log is not None and log[0] == job[0]:
                lines.append(log[1:])
                log = await anext(logs, None)
            yield mapped(f"job {job[0]}", functools.partial(self._job, job, lines))
        while log is not None:
            log, orphans = await self._skip_log(log, logs)
            yield orphans

    @staticmethod
    async def _skip_log(first: tuple[Any, ...], logs: AsyncIterator[tuple[Any, ...]]) -> tuple[Any, Read]:
        """The log rows of a job the job table does not hold: the next row after them, and their report."""
        count, log = 1, await anext(logs, None)
        while log is not None and log[0] == first[0]:
            count, log = count + 1, await anext(logs, None)
        return log, Read(f"the log of job {first[0]}", problem=f"the job table holds no job {first[0]} ({count} lines)")

    def _job(self, row: tuple[Any, ...], lines: list[tuple[Any, Any]]) -> Job:
        job_id, datastore_id, status, created_at, created_by, parameters = row
        return Job(
            jobId=str(job_id),
            datastoreRdn=self._rdn_of(datastore_id),
            status=status,
            parameters=without_nulls(json_object(parameters, "parameters")),
            log=[
                LogEntry(at=time_of(at, self._zone, f"log line {number}"), message=message)
                for number, (message, at) in enumerate(lines, start=1)
            ],
            createdAt=time_of(created_at, self._zone, "created_at"),
            createdBy=json_object(created_by, "created_by"),  # type: ignore[typeddict-item]
        )

    # --- targets and maintenance ------------------------------------------------------

    async def targets(self) -> AsyncIterator[Read]:
        query = (
            f"SELECT {self._target_datastore}, name, status, action, last_updated_at, last_updated_by"
            f" FROM target ORDER BY {self._target_datastore}, name"
        )
        async for row in self._rows(query):
            yield mapped(f"target {row[1]} of datastore {row[0]}", functools.partial(self._target, row))

    def _target(self, row: tuple[Any, ...]) -> Target:
        datastore_id, name, status, action, last_updated_at, last_updated_by = row
        if not isinstance(action, str):
            raise Unusable(f"action: {action!r} is not text")
        return Target(
            datastoreRdn=self._rdn_of(datastore_id),
            name=name,
            lastUpdatedAt=time_of(last_updated_at, self._zone, "last_updated_at"),
            status=status,
            lastUpdatedBy=json_object(last_updated_by, "last_updated_by"),  # type: ignore[typeddict-item]
            action=action.split(","),
        )

    async def maintenance(self) -> AsyncIterator[Read]:
        query = "SELECT maintenance_id, msg, paused, timestamp FROM maintenance ORDER BY timestamp, maintenance_id"
        async for row in self._rows(query):
            yield mapped(f"maintenance status {row[0]}", functools.partial(self._maintenance, row))

    def _maintenance(self, row: tuple[Any, ...]) -> MaintenanceStatus:
        _, msg, paused, timestamp = row
        if paused not in SQLITE_BOOLEANS:
            raise Unusable(f"paused: {paused!r} is not a boolean")
        return MaintenanceStatus(
            msg=msg, paused=SQLITE_BOOLEANS[paused], timestamp=time_of(timestamp, self._zone, "timestamp")
        )


# --- the original service's MongoDB --------------------------------------------------


def final_first(copy: tuple[str, dict[str, Any]]) -> tuple[bool, bool]:
    """How much a copy of a job found in both collections is to be preferred: a final
    one first, then the one whose collection fits its status."""
    collection, document = copy
    final = document.get("status") in FINAL_STATUSES
    return final, final == (collection == "completed")


def same_database(options: TinyDBOptions | MongoDBOptions, hosts: list[tuple[str, int]], name: str) -> bool:
    """Whether the configured store is the database `name` on `hosts`."""
    if not isinstance(options, MongoDBOptions) or options.database != name:
        return False
    try:
        return set(parse_uri(options.url)["nodelist"]) == set(hosts)
    except (PyMongoError, ValueError):
        return False


class OriginalMongo:
    """The original service's MongoDB database, read with finds alone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.description = "the original service's MongoDB"

    async def open(self, adoption: Adoption) -> None:
        self._zone, self._default = adoption.zone, adoption.default["rdn"]
        try:
            parsed = parse_uri(self.url)
        except (PyMongoError, ValueError) as exc:
            raise AdoptionError(f"not a MongoDB URL: {exc}") from None
        # The hosts alone: the URL may hold a password, which no report repeats.
        hosts = ",".join(f"{host}:{port}" for host, port in parsed["nodelist"])
        name = parsed["database"] or ORIGINAL_DATABASE
        self.description = f"the original service's MongoDB database {name} at {hosts}"
        if same_database(adoption.options, parsed["nodelist"], name):
            # --replace would empty the source before reading it.
            raise AdoptionError(f"{self.description} is the configured store: import into a database of its own")
        timeout = int(SOURCE_TIMEOUT_SECONDS * 1000)
        # tz_aware: BSON dates come as UTC instants, never as naive times that would read as local ones.
        self._client: AsyncMongoClient = AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=timeout, connectTimeoutMS=timeout, tz_aware=True
        )
        self._db: AsyncDatabase = self._client[name]
        try:
            names = await self._db.list_collection_names()
        except ServerSelectionTimeoutError:
            raise AdoptionError(f"cannot reach MongoDB at {hosts} within {SOURCE_TIMEOUT_SECONDS:g} s") from None
        except PyMongoError as exc:
            raise AdoptionError(f"cannot read the database {name} at {hosts}: {exc}") from None
        if not set(names) & set(ORIGINAL_COLLECTIONS):
            raise AdoptionError(
                f"the database {name} at {hosts} is not the original job service's:"
                f" it has none of the collections {', '.join(ORIGINAL_COLLECTIONS)}"
            )

    async def close(self) -> None:
        if hasattr(self, "_client"):
            await self._client.close()

    async def _documents(self, collection: str, **sort: int) -> AsyncIterator[dict[str, Any]]:
        cursor = self._db[collection].find({}, batch_size=BATCH, sort=list(sort.items()) or None)
        try:
            async for document in cursor:
                yield document
        except PyMongoError as exc:
            raise AdoptionError(f"cannot read {collection} of {self.description}: {exc}") from None

    async def job_count(self) -> int:
        try:
            counts = [await self._db[name].estimated_document_count() for name in ("inprogress", "completed")]
        except PyMongoError as exc:
            raise AdoptionError(f"cannot read {self.description}: {exc}") from None
        return sum(counts)

    async def datastores(self) -> AsyncIterator[Read]:
        """None: the original service knew one datastore, the default."""
        return
        yield

    async def jobs(self) -> AsyncIterator[Read]:
        """Every job, each once. After a crash of the original service a job may be in
        both collections: the final copy is kept if either is final, else the copy in
        the collection its status belongs to. The in-progress jobs (few: one per
        target) are read first, and the completed history streamed past them."""
        in_progress: dict[str, dict[str, Any]] = {}
        async for document in self._documents("inprogress"):
            job_id = document.get("jobId")
            if not isinstance(job_id, str) or job_id in in_progress:
                yield self._unidentified(document, "inprogress", job_id)
                continue
            in_progress[job_id] = document
        # The ids of the completed history: about a hundred bytes a job, the least that finds a repeat.
        seen: set[str] = set()
        async for document in self._documents("completed"):
            job_id = document.get("jobId")
            if not isinstance(job_id, str) or job_id in seen:
                yield self._unidentified(document, "completed", job_id)
                continue
            seen.add(job_id)
            other = in_progress.pop(job_id, None)
            if other is None:
                yield self._job_read("completed", document)
                continue
            kept, dropped = sorted([("inprogress", other), ("completed", document)], key=final_first, reverse=True)
            note = (
                f"in both inprogress and completed, as a crash of the original service leaves it: kept the copy in"
                f" {kept[0]} (status {kept[1].get('status')!r}), not the one in {dropped[0]}"
                f" (status {dropped[1].get('status')!r})"
            )
            yield self._job_read(*kept, note=note)
        for document in in_progress.values():
            yield self._job_read("inprogress", document)

    @staticmethod
    def _unidentified(document: dict[str, Any], collection: str, job_id: object) -> Read:
        if isinstance(job_id, str):
            return Read(f"job {job_id} in {collection}", problem=f"a second document of it in {collection}")
        return Read(f"the document {document.get('_id')} in {collection}", problem="it has no text jobId")

    def _job_read(self, collection: str, document: dict[str, Any], note: str | None = None) -> Read:
        return mapped(f"job {document['jobId']} in {collection}", functools.partial(self._job, document), note)

    def _job(self, document: dict[str, Any]) -> Job:
        """The job in the shape the API serves. Anything else it holds stays, for the
        API's rules to refuse: nothing is changed beyond the times and `updateType`."""
        job = {name: value for name, value in document.items() if name != "_id"}
        for name in ("createdAt", "log", "parameters"):
            if name not in job:
                raise Unusable(f"{name}: missing")
        if not isinstance(job["log"], list) or not all(isinstance(entry, dict) for entry in job["log"]):
            raise Unusable("log: not a list of entries")
        parameters = job["parameters"]
        if isinstance(parameters, dict) and isinstance(parameters.get("bumpManifesto"), dict):
            # The original left a manifesto's null `updateType` out; the API keeps the key.
            job["parameters"] = {**parameters, "bumpManifesto": {"updateType": None, **parameters["bumpManifesto"]}}
        job["log"] = [
            {**entry, "at": time_of(entry.get("at"), self._zone, f"log line {number}")}
            for number, entry in enumerate(job["log"], start=1)
        ]
        job["createdAt"] = time_of(job["createdAt"], self._zone, "createdAt")
        job["datastoreRdn"] = self._default
        return job  # type: ignore[return-value]

    async def targets(self) -> AsyncIterator[Read]:
        async for document in self._documents("targets"):
            yield mapped(f"target {document.get('name')!r}", functools.partial(self._target, document))

    def _target(self, document: dict[str, Any]) -> Target:
        target = {name: value for name, value in document.items() if name != "_id"}
        target["lastUpdatedAt"] = time_of(target.get("lastUpdatedAt"), self._zone, "lastUpdatedAt")
        target["datastoreRdn"] = self._default
        return target  # type: ignore[return-value]

    async def maintenance(self) -> AsyncIterator[Read]:
        # Its timestamps are local times of one format, so they sort as the instants do.
        async for document in self._documents("maintenance", timestamp=ASCENDING, _id=ASCENDING):
            yield mapped(f"maintenance status {document.get('_id')}", functools.partial(self._status, document))

    def _status(self, document: dict[str, Any]) -> MaintenanceStatus:
        status = {name: value for name, value in document.items() if name != "_id"}
        if not isinstance(status.get("paused"), bool):
            raise Unusable(f"paused: {status.get('paused')!r} is not a boolean")
        status["timestamp"] = time_of(status.get("timestamp"), self._zone, "timestamp")
        return status  # type: ignore[return-value]


# --- the adoption ------------------------------------------------------------------

#: What an adopted job in progress whose log is over MAX_LOG_CHARACTERS keeps of it (see `Copy.trimmed`).
KEPT_LOG_CHARACTERS = MAX_LOG_CHARACTERS // 2


def job_collection(job: Any) -> str:
    """The collection a job read from a source goes to: its status says."""
    status = job.get("status") if isinstance(job, dict) else None
    return "completed" if isinstance(status, str) and status in FINAL_STATUSES else "inprogress"


class Report:
    """What an adoption found, on stdout: each document not brought over, and each
    note, the moment it is found (a source of many bad documents takes no memory for
    them), then the counts."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.counts: Counter[str] = Counter()
        self.left_out = 0

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def not_brought_over(self, what: str, why: str) -> None:
        self.left_out += 1
        self.line(f"not brought over: {what}: {why}")

    def note(self, what: str, text: str) -> None:
        self.line(f"note: {what}: {text}")

    def summary(self) -> str:
        counts = self.counts
        return (
            f"datastores: {counts['datastores']:,} ({counts['deleted datastores']:,} deleted),"
            f" jobs: {counts['jobs']:,} ({counts['jobs in progress']:,} in progress),"
            f" log lines: {counts['log lines']:,}, targets: {counts['targets']:,},"
            f" maintenance statuses: {counts['maintenance statuses']:,};"
            f" not brought over: {self.left_out:,}"
        )


class Progress:
    """A line on stderr at most every `every` seconds while jobs are read, none for
    an import quicker than that: a long import shows it is moving, and how fast."""

    def __init__(self, total: int, stream: TextIO, every: float = PROGRESS_SECONDS) -> None:
        self.total, self.stream, self.every = total, stream, every
        self.done = 0
        self.start = time.monotonic()
        self.next_line = self.start + every
        self.shown = False

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now >= self.next_line:
            self.next_line = now + self.every
            self.show(now)

    def show(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        print(f"job-service: {self.done:,} of {self.total:,} jobs read{share}, {rate:,.0f} a second", file=self.stream)
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.total = self.done
            self.show(time.monotonic())


class Writer:
    """Documents into the store a batch at a time (none with no store: a check)."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self.pending: defaultdict[str, list[Any]] = defaultdict(list)

    async def add(self, collection: str, document: Any) -> None:
        self.pending[collection].append(document)
        if len(self.pending[collection]) >= BATCH:
            await self.flush(collection)

    async def flush(self, collection: str) -> None:
        batch = self.pending.pop(collection, [])
        if batch and self.store is not None:
            await self.store.load_collection(collection, batch)


@dataclass(frozen=True)
class Adoption:
    """What `job-service import --from-platform-sqlite/--from-original-mongodb` is to do."""

    zone: ZoneInfo
    options: TinyDBOptions | MongoDBOptions
    #: The configured default datastore: the original routes', and everything's without a datastore.
    default: Datastore
    rules: Rules
    replace: bool = False
    #: Read and report, write nothing.
    check: bool = False


async def adopt(source: Source, adoption: Adoption, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Bring everything of `source` into the configured store, which must be empty
    unless `replace`, reporting on `out` what came over and what could not, and the
    progress on `err`. A source that cannot be read, or a store that is not empty,
    stops it before anything is written; a failure on the way leaves the store empty."""
    try:
        await source.open(adoption)
        if adoption.check:
            await Copy(source, adoption, Writer(None), Report(out), err).run()
            print("Checked only: nothing was written.", file=out)
            return
        report = Report(out)
        store = await open_destination(adoption.options, adoption.default["rdn"], adoption.replace, report.line)
        try:
            await fill_or_empty(store, Copy(source, adoption, Writer(store), report, err).run())
        finally:
            await store.close()
        print(f"Imported into {destination(adoption.options)}.", file=out)
    finally:
        await source.close()


def destination(options: TinyDBOptions | MongoDBOptions) -> str:
    """The store, named for the report (never by a URL, which may hold a password)."""
    if isinstance(options, TinyDBOptions):
        return f"the TinyDB store in {options.path}"
    return f"the MongoDB database {options.database}"


class Copy:
    """The documents of a source, judged and written: datastores first (jobs and
    targets must name one that came over), then jobs, targets and maintenance."""

    def __init__(self, source: Source, adoption: Adoption, writer: Writer, report: Report, err: TextIO) -> None:
        self.source, self.writer, self.err = source, writer, err
        self.report = report
        self.rules = adoption.rules
        self.configured = adoption.default
        self.default = adoption.default["rdn"]
        self.zone = adoption.zone
        #: The rdns of the datastores that came over, the default one's included.
        self.rdns: set[str] = {self.default}
        #: Those of them that are deleted.
        self.deleted: set[str] = set()
        #: The in-progress job kept on each (datastore, target), with what the report calls it.
        self.in_progress: dict[tuple[str, str], tuple[str, Job]] = {}

    async def run(self) -> None:
        self.report.line(f"Reading {self.source.description}; its local times are of {self.zone.key}.")
        await self.datastores()
        await self.jobs(Progress(await self.source.job_count(), self.err))
        await self.targets()
        await self.maintenance()
        self.report.line(self.report.summary())

    def usable(self, read: Read, collection: str) -> Any:
        """The document of `read` if it may come over into `collection`, else None, reported."""
        if read.note is not None:
            self.report.note(read.what, read.note)
        problem = read.problem if read.problem is not None else self.rules.problem(collection, read.document)
        if problem is None and collection in IN_DATASTORES:
            rdn = read.document["datastoreRdn"]
            if rdn not in self.rdns:
                problem = f"its datastore {rdn} is not brought over"
            elif collection == "inprogress" and rdn in self.deleted:
                problem = (
                    f"in progress in the datastore {rdn}, which is deleted: a deleted datastore has no job in progress"
                )
        if problem is not None:
            self.report.not_brought_over(read.what, problem)
            return None
        return read.document

    async def datastores(self) -> None:
        """The source's datastores into the registry; the one that is the configured
        default is not registered: the default is the configuration's."""
        found = default_found = False
        async for read in self.source.datastores():
            found = True
            datastore: Datastore | None = self.usable(read, "datastores")
            if datastore is None:
                continue
            rdn = datastore["rdn"]
            if rdn == self.default:
                default_found = True
                self.report.note(read.what, self.default_note(datastore))
            elif rdn in self.rdns:
                self.report.not_brought_over(read.what, f"an earlier datastore has the rdn {rdn}")
            else:
                self.rdns.add(rdn)
                if datastore["deleted"]:
                    self.deleted.add(rdn)
                self.report.counts["datastores"] += 1
                self.report.counts["deleted datastores"] += datastore["deleted"]
                await self.writer.add("datastores", datastore)
        await self.writer.flush("datastores")
        if found and not default_found:
            self.report.note(
                f"the configured default datastore {self.default}",
                "it is none of the source's, so the original routes (what the admin UI and executor of 2025 use)"
                " show none of their jobs; to have them act on one, set [datastores] default to its rdn",
            )

    def default_note(self, datastore: Datastore) -> str:
        text = (
            "it is the configured default datastore, whose jobs and targets the original routes show; its"
            f" directory ({self.configured['directory']}) and bumpEnabled ({self.configured['bumpEnabled']})"
            f" are the configuration's, where the source has {datastore['directory']} and {datastore['bumpEnabled']}"
        )
        if (self.configured["directory"], self.configured["bumpEnabled"]) != (
            datastore["directory"],
            datastore["bumpEnabled"],
        ):
            text += " (to keep the source's, set [datastores] default_directory and [jobs] bump_enabled)"
        if datastore["deleted"]:
            text += "; deleted in the source, it is live here: the default datastore cannot be deleted"
        return text

    async def jobs(self, progress: Progress) -> None:
        async for read in self.source.jobs():
            progress.advance()
            job: Job | None = self.usable(self.trimmed(read), job_collection(read.document))
            if job is None:
                continue
            if job["status"] in FINAL_STATUSES:
                self.count(job)
                await self.writer.add("completed", job)
            else:
                self.hold(read.what, job)
        progress.finish()
        await self.writer.flush("completed")
        for _, job in self.in_progress.values():
            self.count(job)
            self.report.counts["jobs in progress"] += 1
            await self.writer.add("inprogress", job)
        await self.writer.flush("inprogress")

    def trimmed(self, read: Read) -> Read:
        """`read`, its job's log trimmed if the job is in progress and its log over
        MAX_LOG_CHARACTERS, which no change but a final one could then pass: the oldest
        lines go, to half the limit (room for the job to go on), and a first line says so."""
        job = read.document
        if job_collection(job) != "inprogress" or not isinstance(job.get("log"), list):
            return read
        log = job["log"]
        if not all(isinstance(entry, dict) and is_text(entry.get("message")) for entry in log):
            return read
        total = log_characters(log)
        if total <= MAX_LOG_CHARACTERS:
            return read
        kept, room = len(log), KEPT_LOG_CHARACTERS
        while kept and len(log[kept - 1]["message"]) <= room:
            kept -= 1
            room -= len(log[kept]["message"])
        dropped = log[:kept]
        characters = log_characters(dropped)
        note = LogEntry(
            at=dropped[-1]["at"],
            message=f"job-service left out the {len(dropped):,} oldest lines of this log ({characters:,} characters)"
            f" when it adopted the job: a job in progress holds at most {MAX_LOG_CHARACTERS:,} characters of log",
        )
        self.report.note(
            read.what,
            f"in progress with {total:,} characters of log, over the {MAX_LOG_CHARACTERS:,} a job may hold:"
            f" its {len(dropped):,} oldest lines are left out, and its log says so",
        )
        return Read(read.what, {**job, "log": [note, *log[kept:]]}, read.problem, read.note)

    def count(self, job: Job) -> None:
        self.report.counts["jobs"] += 1
        self.report.counts["log lines"] += len(job["log"])

    def hold(self, what: str, job: Job) -> None:
        """Keep `job` in progress unless a newer job holds its target: one job in
        progress per target of a datastore, the newest (the older one is most likely
        one the executor abandoned). The other is not brought over."""
        key = (job["datastoreRdn"], job["parameters"]["target"])
        kept, other = (what, job), self.in_progress.get(key)
        if other is not None and job_order(other[1]) > job_order(job):
            kept, other = other, kept
        self.in_progress[key] = kept
        if other is not None:
            self.report.not_brought_over(
                other[0],
                f"in progress on target {key[1]} of datastore {key[0]}, as is the newer {kept[0]}:"
                " one job in progress per target",
            )

    async def targets(self) -> None:
        """Targets, each once per datastore: of two with the same name, the one updated later.
        Held until all are read (they are few: one per dataset), then written in batches."""
        kept: dict[tuple[str, str], tuple[str, Target]] = {}
        async for read in self.source.targets():
            target: Target | None = self.usable(read, "targets")
            if target is None:
                continue
            key = (target["datastoreRdn"], target["name"])
            newer, other = (read.what, target), kept.get(key)
            if other is not None and other[1]["lastUpdatedAt"] > target["lastUpdatedAt"]:
                newer, other = other, newer
            kept[key] = newer
            if other is not None:
                self.report.not_brought_over(other[0], f"{newer[0]} is the same target, updated later")
        for _, target in kept.values():
            self.report.counts["targets"] += 1
            await self.writer.add("targets", target)
        await self.writer.flush("targets")

    async def maintenance(self) -> None:
        async for read in self.source.maintenance():
            status: MaintenanceStatus | None = self.usable(read, "maintenance")
            if status is not None:
                self.report.counts["maintenance statuses"] += 1
                await self.writer.add("maintenance", status)
        await self.writer.flush("maintenance")
