"""The production backend: MongoDB through PyMongo's native async client.

Several service processes may share one database, so nothing here relies on
in-process locking: the unique index on the in-progress (datastore, target) is
what keeps one job in progress per target in each datastore, and finishing a job
is a sequence of single-document writes ordered so that a crash between any two
of them loses nothing. No step needs a multi-document transaction, which a
standalone mongod lacks.

A change of a job and the targets it shows are written the same way: the job is
written first, marked `targetsDueAt` (the time of the change), then its targets
(each only over an older one), then the mark is removed. A job still marked is a
change whose targets a crash may have cut short: the next start, or the next touch
of the job or its target, records them again from the job itself and removes the
mark. Readers never see the mark.

A database written before datastores existed is upgraded as it is prepared, by
steps that are each idempotent, so an upgrade cut short is finished by the next
start: its jobs and targets are put in the default datastore, the new unique
indexes are built, then the old ones (on the target or name alone) are dropped.
Processes of the old release must be stopped first: they would write documents
without a datastore, and their rule would be gone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from .base import (
    COLLECTIONS,
    FINAL_STATUSES,
    Datastore,
    DatastoreBusy,
    DatastoreTaken,
    Job,
    JobChange,
    JobFinal,
    JobNotFound,
    JobQuery,
    MaintenanceStatus,
    StoreStats,
    StoreUnavailable,
    Target,
    TargetBusy,
    change_time,
    job_order,
    targets_of,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
NOT_FINAL = {"$nin": sorted(FINAL_STATUSES)}
NO_ID = {"_id": False}
#: On a job whose targets may not be recorded yet: the time of its change.
TARGETS_DUE = "targetsDueAt"
#: What readers of jobs get: neither MongoDB's id nor the store's own mark.
JOB_FIELDS = {"_id": False, TARGETS_DUE: False}
#: MongoDB's error code for a duplicate key.
DUPLICATE_KEY = 11000
JOB_SORT = [("createdAt", ASCENDING), ("jobId", ASCENDING)]
MANIFESTO_NAME = "parameters.bumpManifesto.dataStructureUpdates.name"
#: Newest first; `_id` breaks ties in insertion order within one process.
HISTORY_SORT = [("timestamp", DESCENDING), ("_id", DESCENDING)]
INITIAL_MAINTENANCE_ID = "initial-status"

#: Documents of these belong to a datastore.
IN_DATASTORES = ("inprogress", "completed", "targets")
#: Both job collections': a job by id, and what the job queries filter and sort on
#: (status, datastore, operation, job order, the datasets of a BUMP manifesto).
JOB_QUERY_INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("jobId", ASCENDING)], {"unique": True}),
    ([("status", ASCENDING)], {}),
    (JOB_SORT, {}),
    ([("datastoreRdn", ASCENDING), *JOB_SORT], {}),
    ([("parameters.operation", ASCENDING)], {}),
    ([(MANIFESTO_NAME, ASCENDING)], {}),
    # The few jobs whose targets a crash may have cut short, found at start.
    ([(TARGETS_DUE, ASCENDING)], {"sparse": True}),
]
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "inprogress": [
        # The rule itself: one document per target and datastore in this collection, across processes.
        (
            [("datastoreRdn", ASCENDING), ("parameters.target", ASCENDING)],
            {"unique": True, "name": "one_job_per_target_per_datastore"},
        ),
        *JOB_QUERY_INDEXES,
    ],
    "completed": [*JOB_QUERY_INDEXES, ([("parameters.target", ASCENDING)], {})],
    "targets": [([("datastoreRdn", ASCENDING), ("name", ASCENDING)], {"unique": True})],
    "datastores": [([("rdn", ASCENDING)], {"unique": True})],
    "maintenance": [(HISTORY_SORT, {})],
}
#: The rules from before datastores (one job per target, one target per name, across
#: all datastores), which the new ones replace.
OLD_INDEXES = {"inprogress": "one_job_per_target", "targets": "name_1"}
#: MongoDB's error code for dropping an index that is not there.
INDEX_NOT_FOUND = 27


@contextlib.asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn "cannot reach MongoDB in time" into StoreUnavailable, the 503 of the API."""
    try:
        yield
    except PyMongoError as exc:
        if isinstance(exc, ConnectionFailure) or exc.timeout:
            log.warning("MongoDB cannot be reached: %s", exc)
            raise StoreUnavailable("The database cannot be reached") from exc
        raise


def store_operation(
    method: Callable[Concatenate[MongoStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[MongoStore, P], Coroutine[Any, Any, T]]:
    """Run an operation on a prepared database, with its errors translated."""

    @functools.wraps(method)
    async def wrapper(self: MongoStore, *args: P.args, **kwargs: P.kwargs) -> T:
        async with translate_errors():
            await self.ensure_prepared()
            return await method(self, *args, **kwargs)

    return wrapper


async def merge_in_order(stream: AsyncIterator[Job], jobs: list[Job]) -> AsyncIterator[Job]:
    """`stream` and `jobs`, both in job order, as one sequence in job order; on a
    tie the job from `stream` comes first."""
    pending = iter(jobs)
    waiting = next(pending, None)
    async for job in stream:
        while waiting is not None and job_order(waiting) < job_order(job):
            yield waiting
            waiting = next(pending, None)
        yield job
    while waiting is not None:
        yield waiting
        waiting = next(pending, None)


def job_filter(query: JobQuery) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if query.datastore is not None:
        conditions["datastoreRdn"] = query.datastore
    if query.status is not None:
        conditions["status"] = query.status
    if query.operations is not None:
        conditions["parameters.operation"] = {"$in": sorted(query.operations)}
    return conditions


def job_updates(change: JobChange, at: str) -> dict[str, Any]:
    """The update of `change`, which marks the job's targets due as of `at`."""
    fields: dict[str, Any] = {TARGETS_DUE: at}
    if change.status is not None:
        fields["status"] = change.status
    if change.description is not None:
        fields["parameters.description"] = change.description
    return {"$push": {"log": {"$each": change.log}}, "$inc": {"revision": 1}, "$set": fields}


def as_read(job: dict[str, Any]) -> Job:
    """A job as readers see it: without the store's mark."""
    job.pop(TARGETS_DUE, None)
    return cast(Job, job)


def newer_than_stored(target: Target) -> dict[str, Any]:
    """The target of the same datastore and name, if it shows an older change than `target`."""
    return {
        "datastoreRdn": target["datastoreRdn"],
        "name": target["name"],
        "$or": [{"lastUpdatedAt": {"$lte": target["lastUpdatedAt"]}}, {"lastUpdatedAt": {"$exists": False}}],
    }


async def drop_index_if_present(collection: AsyncCollection, name: str) -> None:
    """Drop an index; another process preparing the same database may have dropped it first."""
    try:
        await collection.drop_index(name)
    except OperationFailure as exc:
        if exc.code != INDEX_NOT_FOUND:
            raise


class MongoStore:
    """The Store protocol on one MongoDB database."""

    def __init__(
        self,
        client: AsyncMongoClient,
        database: str,
        default_datastore: str,
        initial_maintenance: MaintenanceStatus | None,
    ) -> None:
        self._client = client
        self._default = default_datastore
        self._initial_maintenance = initial_maintenance
        self.prepared = False
        db = client[database]
        self._collections: dict[str, AsyncCollection] = {name: db[name] for name in COLLECTIONS}
        self._datastores = db["datastores"]
        self._inprogress = db["inprogress"]
        self._completed = db["completed"]
        self._targets = db["targets"]
        self._maintenance = db["maintenance"]

    @classmethod
    async def open(
        cls,
        url: str,
        database: str,
        timeout_seconds: float,
        username: str | None = None,
        password: str | None = None,
        *,
        default_datastore: str,
        initial_maintenance: MaintenanceStatus | None = None,
    ) -> MongoStore:
        """Connect and prepare the database, whose jobs and targets from before
        datastores belong to `default_datastore`.

        The client binds to the running event loop, so this runs inside the
        app's lifetime, never at import time. A server that is down at start is
        not fatal: the service starts and answers 503, and the first operation
        after the server is back prepares the database before anything else.
        """
        credentials: dict[str, Any] = {"username": username, "password": password, "authSource": "admin"}
        client: AsyncMongoClient = AsyncMongoClient(
            url,
            timeoutMS=int(timeout_seconds * 1000),
            serverSelectionTimeoutMS=int(timeout_seconds * 1000),
            **(credentials if username else {}),
        )
        store = cls(client, database, default_datastore, initial_maintenance)
        with contextlib.suppress(StoreUnavailable):
            await store.ping()
        return store

    async def ensure_prepared(self) -> None:
        if not self.prepared:
            await self.prepare()

    async def prepare(self) -> None:
        """Idempotent start-up work, before any other operation: documents from
        before datastores put in the default one, the indexes the rules and
        queries rely on (the new rules built before the old ones go, so that one
        always holds), any job move a crash cut short, and the initial
        maintenance status of a service's first start."""
        for name in IN_DATASTORES:
            await self._collections[name].update_many(
                {"datastoreRdn": {"$exists": False}}, {"$set": {"datastoreRdn": self._default}}
            )
        for name, indexes in INDEXES.items():
            for keys, options in indexes:
                await self._collections[name].create_index(keys, **options)
        for name, index in OLD_INDEXES.items():
            await drop_index_if_present(self._collections[name], index)
        async for job in self._inprogress.find({"status": {"$in": sorted(FINAL_STATUSES)}}, NO_ID):
            await self._finish(job)
        for collection in (self._inprogress, self._completed):
            async for job in collection.find({TARGETS_DUE: {"$exists": True}}, NO_ID):
                await self._record_targets(job)
        if self._initial_maintenance is not None:
            await self._insert_initial_maintenance(self._initial_maintenance)
        self.prepared = True

    async def _insert_initial_maintenance(self, status: MaintenanceStatus) -> None:
        """Store `status` unless some status is stored already. Processes starting
        together all upsert the one document with a fixed `_id`, so it exists once."""
        if await self._maintenance.find_one({}) is not None:
            return
        with contextlib.suppress(DuplicateKeyError):  # another process's upsert won the race
            await self._maintenance.update_one({"_id": INITIAL_MAINTENANCE_ID}, {"$setOnInsert": status}, upsert=True)

    @store_operation
    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()

    async def _finish(self, job: Job) -> None:
        """Move a final job to the completed set (with its mark, if it has one).

        Each step is idempotent and readers look in `inprogress` before
        `completed`, so whatever step a crash stops at, the job is found, and
        found once: upsert into completed first, delete from in-progress second.
        """
        await self._completed.replace_one({"jobId": job["jobId"]}, job, upsert=True)
        await self._inprogress.delete_one({"jobId": job["jobId"]})

    async def _record_targets(self, job: dict[str, Any]) -> None:
        """Record what a marked job's targets show, each over an older one only, then
        remove the mark (unless a later change has marked the job again). Idempotent:
        the repair of a change a crash cut short, and the last steps of every change."""
        at = job[TARGETS_DUE]
        targets = targets_of(cast(Job, job), at)
        requests = [ReplaceOne(newer_than_stored(target), target, upsert=True) for target in targets]
        for _ in range(2):
            try:
                await self._targets.bulk_write(requests, ordered=False)
                break
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error["code"] != DUPLICATE_KEY for error in errors):
                    raise
                # A duplicate key: a newer target is there, or another process inserted
                # one first; once more, for the second case.
                requests = [requests[error["index"]] for error in errors]
        mark = {"jobId": job["jobId"], TARGETS_DUE: at}
        collection = self._completed if job["status"] in FINAL_STATUSES else self._inprogress
        await collection.update_one(mark, {"$unset": {TARGETS_DUE: ""}})

    @store_operation
    async def insert_job(self, job: Job) -> None:
        held = {"datastoreRdn": job["datastoreRdn"], "parameters.target": job["parameters"]["target"]}
        marked = {**job, TARGETS_DUE: job["createdAt"]}
        for _ in range(2):
            try:
                await self._inprogress.insert_one(marked)  # insert_one adds _id to what it is given
                await self._record_targets(marked)
                return
            except DuplicateKeyError:
                holder = await self._inprogress.find_one(held, NO_ID)
                if holder is None:
                    break
                if holder["status"] in FINAL_STATUSES:
                    # The target is held by a finished job whose move a crash cut short.
                    await self._finish(holder)
                if TARGETS_DUE in holder:
                    await self._record_targets(holder)  # a change of the holder a crash cut short
                if holder["status"] not in FINAL_STATUSES:
                    break
                marked = {**job, TARGETS_DUE: job["createdAt"]}
        raise TargetBusy(job["parameters"]["target"])

    async def insert_jobs(self, jobs: list[Job]) -> list[TargetBusy | None]:
        """One after the other: each is a change of its own, repairable as `insert_job`'s is."""
        answers: list[TargetBusy | None] = []
        for job in jobs:
            try:
                await self.insert_job(job)
                answers.append(None)
            except TargetBusy as exc:
                answers.append(exc)
        return answers

    @store_operation
    async def get_job(self, job_id: str) -> Job | None:
        job = await self._inprogress.find_one({"jobId": job_id}, JOB_FIELDS)
        if job is None:
            job = await self._completed.find_one({"jobId": job_id}, JOB_FIELDS)
        return job

    async def _stream(self, cursor: AsyncCursor) -> AsyncIterator[Job]:
        async with translate_errors():
            async for job in cursor:
                yield job

    async def _find_both(self, conditions: dict[str, Any]) -> AsyncIterator[Job]:
        """Jobs from both sets, in job order, each once.

        In-progress (a few) is read first and completed streamed after, so a job
        that moves in between is in one answer or both, never in neither; both
        copies then sort next to each other, the completed one first, and only
        that one is kept.
        """
        async with translate_errors():
            await self.ensure_prepared()
            in_progress = await self._inprogress.find(conditions, JOB_FIELDS).sort(JOB_SORT).to_list()
        completed = self._stream(self._completed.find(conditions, JOB_FIELDS).sort(JOB_SORT))
        previous = None
        async for job in merge_in_order(completed, in_progress):
            if job["jobId"] != previous:
                yield job
            previous = job["jobId"]

    async def find_jobs(self, query: JobQuery) -> AsyncIterator[Job]:
        conditions = job_filter(query)
        if not query.ignore_completed:
            async for job in self._find_both(conditions):
                yield job
            return
        conditions["status"] = {"$eq": query.status, **NOT_FINAL} if query.status else NOT_FINAL
        async with translate_errors():
            await self.ensure_prepared()
            jobs = await self._inprogress.find(conditions, JOB_FIELDS).sort(JOB_SORT).to_list()
        for job in jobs:
            yield job

    def jobs_for_target(self, datastore: str, name: str) -> AsyncIterator[Job]:
        # The datastore in each branch, so that each can use its own index.
        return self._find_both(
            {
                "$or": [
                    {"datastoreRdn": datastore, "parameters.target": name},
                    {"datastoreRdn": datastore, "parameters.operation": "BUMP", MANIFESTO_NAME: name},
                ]
            }
        )

    @store_operation
    async def update_job(self, job_id: str, change: JobChange) -> Job:
        # The job changed and marked, moved if final, its targets recorded, the mark
        # removed: a crash after any step leaves what the next start or touch finishes.
        job = await self._inprogress.find_one_and_update(
            {"jobId": job_id, "status": NOT_FINAL},
            job_updates(change, change_time(change)),
            projection=NO_ID,
            return_document=ReturnDocument.AFTER,
        )
        if job is None:
            return await self._refuse_update(job_id)
        if job["status"] in FINAL_STATUSES:
            await self._finish(job)
        await self._record_targets(job)
        return as_read(job)

    async def _refuse_update(self, job_id: str) -> Job:
        """Why an update found no job to change: it is final, or it does not exist.
        This touch finishes what a crash left of the job's last change."""
        job = await self._inprogress.find_one({"jobId": job_id}, NO_ID)
        if job is not None:
            await self._finish(job)  # final but not yet moved: this touch completes the move
        else:
            job = await self._completed.find_one({"jobId": job_id}, NO_ID)
        if job is None:
            raise JobNotFound(job_id)
        if TARGETS_DUE in job:
            await self._record_targets(job)
        raise JobFinal(job_id, job["status"])

    @store_operation
    async def target_in_progress(self, datastore: str, name: str) -> bool:
        held = {"datastoreRdn": datastore, "parameters.target": name, "status": NOT_FINAL}
        return await self._inprogress.find_one(held) is not None

    @store_operation
    async def save_target(self, target: Target) -> None:
        await self._targets.replace_one(
            {"datastoreRdn": target["datastoreRdn"], "name": target["name"]}, target, upsert=True
        )

    @store_operation
    async def get_target(self, datastore: str, name: str) -> Target | None:
        return await self._targets.find_one({"datastoreRdn": datastore, "name": name}, NO_ID)

    @store_operation
    async def list_targets(self, datastore: str) -> list[Target]:
        return await self._targets.find({"datastoreRdn": datastore}, NO_ID).sort("name", ASCENDING).to_list()

    @store_operation
    async def add_datastore(self, datastore: Datastore) -> None:
        try:
            await self._datastores.insert_one(dict(datastore))  # insert_one adds _id to what it is given
        except DuplicateKeyError:
            raise DatastoreTaken(datastore["rdn"]) from None

    @store_operation
    async def get_datastore(self, rdn: str) -> Datastore | None:
        return await self._datastores.find_one({"rdn": rdn}, NO_ID)

    @store_operation
    async def list_datastores(self) -> list[Datastore]:
        return await self._datastores.find({}, NO_ID).sort("rdn", ASCENDING).to_list()

    @store_operation
    async def delete_datastore(self, rdn: str) -> None:
        # A job posted between the check and the mark is tolerated: the datastore
        # keeps its jobs and files when deleted, so that job still runs to its end
        # on a directory that exists, and shows in the job lists like any other.
        if await self._inprogress.find_one({"datastoreRdn": rdn, "status": NOT_FINAL}) is not None:
            raise DatastoreBusy(rdn)
        await self._datastores.update_one({"rdn": rdn}, {"$set": {"deleted": True}})

    @store_operation
    async def remove_datastore(self, rdn: str) -> None:
        await self._datastores.delete_one({"rdn": rdn})

    @store_operation
    async def add_maintenance(self, status: MaintenanceStatus) -> None:
        await self._maintenance.insert_one(dict(status))

    @store_operation
    async def latest_maintenance(self) -> MaintenanceStatus | None:
        return await self._maintenance.find_one({}, NO_ID, sort=HISTORY_SORT)

    @store_operation
    async def maintenance_history(self) -> list[MaintenanceStatus]:
        return await self._maintenance.find({}, NO_ID).sort(HISTORY_SORT).to_list()

    @store_operation
    async def stats(self) -> StoreStats:
        by_status: list[dict[str, Any]] = [
            {"$match": {"status": NOT_FINAL}},
            {"$group": {"_id": {"datastore": "$datastoreRdn", "status": "$status"}, "count": {"$sum": 1}}},
        ]
        rows = await (await self._inprogress.aggregate(by_status)).to_list()
        in_progress = {(row["_id"]["datastore"], row["_id"]["status"]): row["count"] for row in rows}
        latest = await self._maintenance.find_one({}, NO_ID, sort=HISTORY_SORT)
        completed = await self._completed.estimated_document_count()
        return StoreStats(in_progress, completed, bool(latest and latest["paused"]))

    @store_operation
    async def dump_collection(self, name: str) -> list[dict[str, Any]]:
        order = {
            "datastores": [("rdn", ASCENDING)],
            "targets": [("datastoreRdn", ASCENDING), ("name", ASCENDING)],
            "maintenance": [(key, ASCENDING) for key, _ in HISTORY_SORT],
        }
        return await self._collections[name].find({}, JOB_FIELDS).sort(order.get(name, JOB_SORT)).to_list()

    @store_operation
    async def load_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        # insert_many adds an _id to each document it is given: give it copies.
        if name in IN_DATASTORES:
            documents = [{"datastoreRdn": self._default, **document} for document in documents]
        else:
            documents = [dict(document) for document in documents]
        if name == "inprogress":
            await self._check_one_per_target(cast(list[Job], documents))
        if name == "datastores":
            await self._check_rdns_free(documents)
        if documents:
            await self._collections[name].insert_many(documents)

    async def _check_one_per_target(self, jobs: list[Job]) -> None:
        """Refuse an import that would break the rule before writing any of it
        (the unique index would refuse it too, but only halfway through)."""
        held = Counter((job["datastoreRdn"], job["parameters"]["target"]) for job in jobs)
        twice = [target for (_, target), count in held.items() if count > 1]
        if twice:
            raise TargetBusy(twice[0])
        candidates = {
            "datastoreRdn": {"$in": sorted({datastore for datastore, _ in held})},
            "parameters.target": {"$in": sorted({target for _, target in held})},
        }
        async for job in self._inprogress.find(candidates, NO_ID):
            if (job["datastoreRdn"], job["parameters"]["target"]) in held:
                raise TargetBusy(job["parameters"]["target"])

    async def _check_rdns_free(self, datastores: list[dict[str, Any]]) -> None:
        """Refuse an import of an rdn twice, or of one registered already, before writing any."""
        rdns = Counter(datastore["rdn"] for datastore in datastores)
        twice = [rdn for rdn, count in rdns.items() if count > 1]
        if twice:
            raise DatastoreTaken(twice[0])
        registered = await self._datastores.find_one({"rdn": {"$in": list(rdns)}}, NO_ID)
        if registered is not None:
            raise DatastoreTaken(registered["rdn"])

    @store_operation
    async def is_empty(self) -> bool:
        for collection in self._collections.values():
            if await collection.find_one({}) is not None:
                return False
        return True

    @store_operation
    async def clear(self) -> None:
        for collection in self._collections.values():
            await collection.delete_many({})
