"""The production backend: MongoDB through PyMongo's native async client.

Several service processes may share one database, so nothing here relies on
in-process locking: the unique index on the in-progress (datastore, target) is
what keeps one job in progress per target in each datastore, and finishing a job
is a sequence of single-document writes ordered so that a crash between any two
of them loses nothing. No step needs a multi-document transaction, which a
standalone mongod has none of.

A change of a job and the targets it shows are written the same way: the job is
written first, marked `targetsDueAt` (the time of the change), then its targets
(each only over one that shows no newer job: targets follow job order), then the
mark is removed. A job still marked is a change whose targets a crash may have cut
short: the next start, or the next touch of the job or its target, reads its targets
and writes those that do not show the change yet. A new job keeps its mark (its
insert would cost twice as much without), as may a repaired job in progress: the
job's next change replaces the mark, and a repair of a recorded change writes
nothing. A final job's mark is removed. Readers never see the mark.

A job goes only into a live datastore, checked in the same step as the insert against
a `delete_datastore` of any process, without a transaction: each of the two writes
first and reads the other's document second, so at least one of them sees the other.
A job of a datastore other than the default is inserted marked `unchecked` (no reader
sees it, and its targets wait), then its datastore is read. Whoever finds an unchecked
job settles it with a conditional write: the inserter, a start, a later insert on its
target remove the mark if the datastore is live and delete the job if not; a delete,
which has marked the datastore deleted before it looks, deletes it. A delete that
then finds a settled job in progress puts the datastore back and refuses; a start
puts back a deleted datastore holding one (a delete that a crash cut short).

The database is shared with the world (restores, hand edits, other releases), so
nothing is trusted to have the shape the API promises. Before its first operation
the store checks what its rules rest on, the in-progress jobs and its unique
indexes, and refuses, as a StoreCorrupt of one line naming the documents, what it
cannot work with; it checks again at the next operation, so fixing the data is
enough. Any other document without the API's shape is left out of every listing
(logged once, counted through `on_malformed`), and reading it alone is a
MalformedDocument. Listings read a batch at a time, never a collection whole.

A database written before datastores existed is upgraded as it is prepared, by
steps that are each idempotent, so an upgrade cut short is finished by the next
start: its jobs and targets are put in the default datastore, the new unique
indexes are built, then the old ones (on the target or name alone) are dropped.
Processes of the old release must be stopped first: they would write documents
without a datastore, and their rule would be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from .base import (
    COLLECTIONS,
    FINAL_STATUSES,
    IN_DATASTORES,
    MAX_LOG_CHARACTERS,
    PAGE_SIZE,
    PROBLEMS,
    SHOWN_JOB,
    AuditEntry,
    AuditQuery,
    Datastore,
    DatastoreBusy,
    DatastoreGone,
    DatastoreTaken,
    Job,
    JobChange,
    JobFinal,
    JobLogFull,
    JobMoved,
    JobNotFound,
    JobQuery,
    MaintenanceStatus,
    MalformedDocument,
    Notification,
    StoreCorrupt,
    StoreError,
    StoreStats,
    StoreUnavailable,
    Target,
    TargetBusy,
    change_time,
    is_text,
    job_order,
    job_problem,
    log_room_needed,
    paged,
    refuse_repeats,
    retried,
    targets_to_record,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
NOT_FINAL = {"$nin": sorted(FINAL_STATUSES)}
FINAL = {"$in": sorted(FINAL_STATUSES)}
NO_ID = {"_id": False}
#: On a job whose targets may not be recorded yet: the time of its change.
TARGETS_DUE = "targetsDueAt"
#: On a new job of a datastore other than the default until its datastore is found live
#: (`_settle`): no reader sees it, and it is deleted if the datastore is not live.
UNCHECKED = "unchecked"
#: In-progress jobs as readers see them: settled (read by a key, where the filter is cheap).
SETTLED = {UNCHECKED: {"$exists": False}}
#: What job reads fetch: all but the store's mark. `_id` comes along to name a
#: malformed document, and is dropped from a sound one.
JOB_FIELDS = {TARGETS_DUE: False}
TARGET_FIELDS = {SHOWN_JOB: False}
#: What a repair reads of a target: the change it shows.
SHOWN_FIELDS = {"_id": False, "name": True, SHOWN_JOB: True}
#: What an export holds of a document: what the API shows (the `_id` names a
#: malformed one, which an export leaves out as a listing does; a sound one loses it).
DUMPED_FIELDS = {TARGETS_DUE: False, SHOWN_JOB: False}
#: MongoDB's error code for a duplicate key.
DUPLICATE_KEY = 11000
JOB_SORT = [("createdAt", ASCENDING), ("jobId", ASCENDING)]
#: The keys of the rule, one job in progress per target and datastore: its index's order.
RULE_KEYS = [("datastoreRdn", ASCENDING), ("parameters.target", ASCENDING)]
MANIFESTO_NAME = "parameters.bumpManifesto.dataStructureUpdates.name"
#: Newest first; `_id` breaks ties in insertion order within one process.
HISTORY_SORT = [("timestamp", DESCENDING), ("_id", DESCENDING)]
INITIAL_MAINTENANCE_ID = "initial-status"
#: In `meta`: what the service processes tell each other (see `share_part`).
SHARED_ID = "shared"
#: In `meta`: the default datastore the database was first opened with.
DEFAULT_ID = "defaultDatastore"
#: The offending documents a StoreCorrupt names; its count says how many there are.
NAMED = 5
#: Malformed documents remembered, so that each is logged once: at most this many.
REMEMBERED_MALFORMED = 10_000

#: The completed jobs': a job by id, and what the job queries filter and sort on
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
    # In-progress jobs are few (one per target being worked on), and every start reads
    # them all: a query of them reads them all too, cheaply. An index is kept only for
    # the rule, for a job by id and for job order; each costs every insert and every
    # change of a job (on SecantusDB, about a third of a second per 1,000 inserts).
    "inprogress": [
        # The rule itself: one document per target and datastore in this collection, across processes.
        (RULE_KEYS, {"unique": True, "name": "one_job_per_target_per_datastore"}),
        ([("jobId", ASCENDING)], {"unique": True}),
        (JOB_SORT, {}),
    ],
    # A retried job's retry, found by its `retryOf` (in progress, a scan of the few).
    "completed": [
        *JOB_QUERY_INDEXES,
        ([("parameters.target", ASCENDING)], {}),
        ([("retryOf", ASCENDING)], {"sparse": True}),
    ],
    "targets": [([("datastoreRdn", ASCENDING), ("name", ASCENDING)], {"unique": True})],
    "datastores": [([("rdn", ASCENDING)], {"unique": True})],
    "maintenance": [(HISTORY_SORT, {})],
    "audit": [([("id", DESCENDING)], {"unique": True})],
}
#: The outbox's: the deliveries due, the final ones by age (to forget the oldest), the newest shown.
OUTBOX_INDEXES = [
    [("state", ASCENDING), ("nextAttemptAt", ASCENDING)],
    [("state", ASCENDING), ("finishedAt", ASCENDING)],
    [("createdAt", DESCENDING)],
]
#: A delivery as readers get it: without its lease.
OUTBOX_FIELDS = {"_id": False, "leasedBy": False, "leaseUntil": False}
#: The rules from before datastores (one job per target, one target per name, across
#: all datastores), which the new ones replace.
OLD_INDEXES = {"inprogress": ["one_job_per_target"], "targets": ["name_1"]}
#: The query indexes earlier releases built on the in-progress jobs, which cost more than they save.
UNNEEDED_INDEXES = {
    "inprogress": [
        "status_1",
        "datastoreRdn_1_createdAt_1_jobId_1",
        "parameters.operation_1",
        f"{MANIFESTO_NAME}_1",
        f"{TARGETS_DUE}_1",
    ]
}
#: MongoDB's error code for dropping an index that is not there.
INDEX_NOT_FOUND = 27
#: What a StoreCorrupt tells the operator to do once the data is fixed.
CHECKED_AGAIN = "the service checks again at its next start or request"


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


def after_job(job: Job) -> dict[str, Any]:
    """Jobs after `job` in job order."""
    created = job["createdAt"]
    return {"$or": [{"createdAt": {"$gt": created}}, {"createdAt": created, "jobId": {"$gt": job["jobId"]}}]}


def up_to_job(job: Job) -> dict[str, Any]:
    """Jobs up to `job` in job order, itself included."""
    created = job["createdAt"]
    return {"$or": [{"createdAt": {"$lt": created}}, {"createdAt": created, "jobId": {"$lte": job["jobId"]}}]}


def all_of(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def has_position(document: dict[str, Any]) -> bool:
    """Whether a document has a place in job order (a malformed one may not)."""
    return is_text(document.get("createdAt")) and is_text(document.get("jobId"))


def job_updates(change: JobChange, at: str) -> dict[str, Any]:
    """The update of `change`, which marks the job's targets due as of `at`."""
    fields: dict[str, Any] = {TARGETS_DUE: at}
    if change.status is not None:
        fields["status"] = change.status
    if change.description is not None:
        fields["parameters.description"] = change.description
    if change.cancelled_by is not None:
        fields["cancelledBy"] = dict(change.cancelled_by)
    return {"$push": {"log": {"$each": change.log}}, "$inc": {"revision": 1}, "$set": fields}


def log_with_room_for(characters: int) -> dict[str, Any]:
    """The filter of a job whose log has room for `characters` more (`base.log_has_room`)."""
    if characters == 0:
        return {}
    used = {"$sum": {"$map": {"input": "$log", "in": {"$strLenCP": "$$this.message"}}}}
    return {"$expr": {"$lte": [used, MAX_LOG_CHARACTERS - characters]}}


def as_read(job: dict[str, Any]) -> Job:
    """A job as readers see it: without the store's mark."""
    job.pop(TARGETS_DUE, None)
    return cast(Job, job)


def targets_of_marked(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What marked jobs' targets show, as of each job's mark."""
    return [target for job in jobs for target in targets_to_record(cast(Job, job), job[TARGETS_DUE])]


def replaceable_by(target: dict[str, Any]) -> dict[str, Any]:
    """The stored target of the same datastore and name, if `target` may replace it:
    `base.may_replace` as a query, for the update's filter."""
    shown = target[SHOWN_JOB]
    created, job_id = f"{SHOWN_JOB}.createdAt", f"{SHOWN_JOB}.jobId"
    return {
        "datastoreRdn": target["datastoreRdn"],
        "name": target["name"],
        "$or": [
            {created: {"$lt": shown["createdAt"]}},
            {created: shown["createdAt"], job_id: {"$lt": shown["jobId"]}},
            {created: shown["createdAt"], job_id: shown["jobId"], f"{SHOWN_JOB}.revision": {"$lte": shown["revision"]}},
            {
                SHOWN_JOB: {"$exists": False},
                "$or": [{"lastUpdatedAt": {"$lte": target["lastUpdatedAt"]}}, {"lastUpdatedAt": {"$exists": False}}],
            },
        ],
    }


def shown_id(value: Any) -> str:
    """A document's `_id` as an operator types it back in a shell."""
    return str(value) if isinstance(value, ObjectId) else repr(value)


def and_more(count: int, named: int) -> str:
    return f" (and {count - named} more)" if count > named else ""


async def drop_index_if_present(collection: AsyncCollection, name: str) -> None:
    """Drop an index; another process preparing the same database may have dropped it first."""
    try:
        await collection.drop_index(name)
    except OperationFailure as exc:
        if exc.code != INDEX_NOT_FOUND:
            raise


def retrieve_outcome(task: asyncio.Future[None]) -> None:
    """Mark a shared attempt's failure as seen even when no request waits for it any more."""
    if not task.cancelled():
        task.exception()


class MongoStore:
    """The Store protocol on one MongoDB database."""

    def __init__(
        self,
        client: AsyncMongoClient,
        database: str,
        default_datastore: str,
        initial_maintenance: MaintenanceStatus | None,
        on_malformed: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._database = database
        self._default = default_datastore
        self._initial_maintenance = initial_maintenance
        self._on_malformed = on_malformed
        self.prepared = False
        #: The preparation under way, which every operation that arrives meanwhile awaits.
        self._preparing: asyncio.Future[None] | None = None
        #: The last StoreCorrupt logged, so that a diagnosis repeated at every request is logged once.
        self._diagnosis: str | None = None
        #: Malformed documents already logged, by (collection, id); the oldest forgotten first.
        self._malformed_logged: OrderedDict[tuple[str, str], None] = OrderedDict()
        db = client[database]
        self._collections: dict[str, AsyncCollection] = {name: db[name] for name in COLLECTIONS}
        self._datastores = db["datastores"]
        self._inprogress = db["inprogress"]
        self._completed = db["completed"]
        self._targets = db["targets"]
        self._maintenance = db["maintenance"]
        #: The store's own facts about the database, which no export carries.
        self._meta = db["meta"]
        #: The outbox of notifications, which no export carries either; its indexes are made at its first use.
        self._notifications = db["notifications"]
        self._notifications_indexed = False
        #: Audit entries begun, by id, until their requests append them: never exported either.
        self._begun = db["auditBegun"]

    @classmethod
    async def open(
        cls,
        url: str,
        database: str,
        timeout_seconds: float,
        username: str | None = None,
        password: str | None = None,
        *,
        write_concern: str | int = "majority",
        read_concern: str = "majority",
        default_datastore: str,
        initial_maintenance: MaintenanceStatus | None = None,
        on_malformed: Callable[[str], None] | None = None,
    ) -> MongoStore:
        """Connect and prepare the database, whose jobs and targets from before
        datastores belong to `default_datastore`; raise StoreCorrupt if it holds
        what the store cannot work with.

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
            # Explicit, never the server's default (w:1 on a primary-secondary-arbiter set,
            # where an acknowledged job can be rolled back by a failover); every read from
            # the primary, so the executor acts on what was written, not on a lagging copy.
            w=write_concern,
            readConcernLevel=read_concern,
            readPreference="primary",
            **(credentials if username else {}),
        )
        log.info(
            "MongoDB database %s: write concern %s, read concern %s, reads from the primary",
            database,
            client.write_concern.document,
            client.read_concern.level,
        )
        store = cls(client, database, default_datastore, initial_maintenance, on_malformed)
        try:
            await store.ping()
        except StoreUnavailable:
            pass
        except BaseException:
            await store.close()
            raise
        return store

    # --- preparing the database -----------------------------------------------------

    async def ensure_prepared(self) -> None:
        """Prepare the database before the first operation. Operations that arrive
        while it is under way wait for that one attempt; one that failed (the server
        unreachable, documents the store cannot work with) is made again by the next
        operation, so the service recovers by itself once the cause is gone."""
        if self.prepared:
            return
        if self._preparing is None:
            self._preparing = asyncio.ensure_future(self._prepare_once())
            self._preparing.add_done_callback(retrieve_outcome)
        await asyncio.shield(self._preparing)

    async def _prepare_once(self) -> None:
        try:
            async with translate_errors():
                await self.prepare()
        except StoreCorrupt as exc:
            if str(exc) != self._diagnosis:
                log.error("%s", exc)
                self._diagnosis = str(exc)
            raise
        finally:
            self._preparing = None

    async def prepare(self) -> None:
        """Idempotent start-up work, before any other operation: the in-progress jobs
        checked before anything is changed, documents from before datastores put in
        the default one, the indexes the rules and queries rely on (the new rules
        built before the old ones go, so that one always holds), any job move or
        change a crash cut short finished, and the initial maintenance status of a
        service's first start."""
        await self._check_in_progress()
        await self._check_default()
        for name in IN_DATASTORES:
            await self._collections[name].update_many(
                {"datastoreRdn": {"$exists": False}}, {"$set": {"datastoreRdn": self._default}}
            )
        for name, indexes in INDEXES.items():
            for keys, options in indexes:
                await self._create_index(name, keys, options)
        for dropped in (OLD_INDEXES, UNNEEDED_INDEXES):
            for name, names in dropped.items():
                for index in names:
                    await drop_index_if_present(self._collections[name], index)
        async for job in self._inprogress.find({"status": FINAL}, NO_ID):
            await self._finish(job)
        unchecked = await self._inprogress.find({UNCHECKED: True}, {"jobId": True, "datastoreRdn": True}).to_list()
        for rdn in {job["datastoreRdn"] for job in unchecked}:
            await self._settle(rdn, [job["jobId"] for job in unchecked if job["datastoreRdn"] == rdn])
        await self._put_back_busy_datastores()
        for name in ("inprogress", "completed"):
            marked = self._collections[name].find({TARGETS_DUE: {"$exists": True}, **SETTLED})
            # Those in progress (every job still queued since its insert) in the rule's order.
            in_order = name == "inprogress"
            async for jobs in paged(self._stream(name, marked.sort(RULE_KEYS) if in_order else marked), PAGE_SIZE):
                await self._record_due(jobs, in_order)
        if self._initial_maintenance is not None:
            await self._insert_initial_maintenance(self._initial_maintenance)
        self.prepared = True

    async def _put_back_busy_datastores(self) -> None:
        """Put back each deleted datastore that holds a job in progress: a delete that
        a crash stopped between its mark and its refusal."""
        async for datastore in self._datastores.find({"deleted": True, "rdn": {"$type": "string"}}, {"rdn": True}):
            rdn = datastore["rdn"]
            if await self._inprogress.find_one({"datastoreRdn": rdn, "status": NOT_FINAL, **SETTLED}) is not None:
                await self._datastores.update_one({"rdn": rdn, "deleted": True}, {"$set": {"deleted": False}})
                log.warning("MongoDB: datastore %s was deleted with a job in progress; it is live again", rdn)

    async def _check_default(self) -> None:
        """Refuse another default datastore than the first one the database was opened with:
        its documents from before datastores, and the default's own, would change datastore.
        The first open remembers it (a database from before this check, the current one)."""
        with contextlib.suppress(DuplicateKeyError):  # another process's upsert won the race
            await self._meta.update_one({"_id": DEFAULT_ID}, {"$setOnInsert": {"rdn": self._default}}, upsert=True)
        remembered = (await self._meta.find_one({"_id": DEFAULT_ID}) or {}).get("rdn")
        if remembered != self._default:
            raise StoreCorrupt(
                f"MongoDB database {self._database} belongs to default datastore {remembered!r}, not"
                f" {self._default!r}: set [datastores] default to {remembered!r} again, or use another database"
            )

    async def _check_in_progress(self) -> None:
        """Refuse in-progress documents that are not jobs: the store reads every one of
        them for its rules and its repairs. They are few, so all are checked each time."""
        named: list[str] = []
        count = 0
        async for document in self._inprogress.find({}, JOB_FIELDS).batch_size(PAGE_SIZE):
            problem = job_problem(document)
            if problem is not None:
                count += 1
                if len(named) < NAMED:
                    named.append(f"document {shown_id(document.get('_id'))} {problem}")
        if count:
            raise StoreCorrupt(
                f"MongoDB collection inprogress of database {self._database} holds {count} document(s)"
                f" that are not jobs: {'; '.join(named)}{and_more(count, len(named))};"
                f" fix or remove them, and {CHECKED_AGAIN}"
            )

    async def _create_index(self, name: str, keys: list[tuple[str, int]], options: dict[str, Any]) -> None:
        """Create an index if it is not there; a unique one that documents break is a StoreCorrupt naming them."""
        try:
            await self._collections[name].create_index(keys, **options)
        except OperationFailure as exc:
            if exc.code != DUPLICATE_KEY:
                raise
            raise await self._duplicates(name, [field for field, _ in keys]) from None

    async def _duplicates(self, name: str, fields: list[str]) -> StoreCorrupt:
        """What breaks a unique index on `fields`: the first groups of documents that share them."""
        collection = self._collections[name]
        key = {f"k{index}": f"${field}" for index, field in enumerate(fields)}
        pipeline: list[dict[str, Any]] = [
            {"$group": {"_id": key, "count": {"$sum": 1}}},
            {"$match": {"count": {"$gt": 1}}},
            {"$sort": {"_id": 1}},
            {"$limit": NAMED + 1},
        ]
        groups = await (await collection.aggregate(pipeline)).to_list()
        described = []
        for group in groups[:NAMED]:
            shared = {field: group["_id"].get(f"k{index}") for index, field in enumerate(fields)}
            cursor = collection.find(shared, {"_id": True, "jobId": True}).sort("_id", ASCENDING).limit(NAMED)
            documents = [
                shown_id(document["_id"]) + (f" (jobId {document['jobId']!r})" if "jobId" in document else "")
                async for document in cursor
            ]
            values = ", ".join(f"{field} {value!r}" for field, value in shared.items())
            count = group["count"]
            described.append(f"{values}: {count} documents, {', '.join(documents)}{and_more(count, len(documents))}")
        more = " (and more)" if len(groups) > NAMED else ""
        return StoreCorrupt(
            f"MongoDB collection {name} of database {self._database} holds documents that share"
            f" {' and '.join(fields)}, which must be unique: {'; '.join(described)}{more};"
            f" keep one document of each and change or remove the others, and {CHECKED_AGAIN}"
        )

    async def _insert_initial_maintenance(self, status: MaintenanceStatus) -> None:
        """Store `status` unless some status is stored already. Processes starting
        together all upsert the one document with a fixed `_id`, so it exists once."""
        if await self._maintenance.find_one({}) is not None:
            return
        with contextlib.suppress(DuplicateKeyError):  # another process's upsert won the race
            await self._maintenance.update_one({"_id": INITIAL_MAINTENANCE_ID}, {"$setOnInsert": status}, upsert=True)

    # --- documents without the API's shape --------------------------------------------

    def _problem(self, collection: str, document: dict[str, Any]) -> str | None:
        """What is wrong with a document just read, if anything; a malformed one is
        logged (once per process) and counted. A sound one loses its `_id`."""
        problem = PROBLEMS[collection](document)
        if problem is None:
            document.pop("_id", None)
            return None
        logged = (collection, shown_id(document.get("_id")))
        if logged not in self._malformed_logged:
            log.warning(
                "MongoDB collection %s: document %s %s; it is left out of every listing until it is fixed or removed",
                *logged,
                problem,
            )
            self._malformed_logged[logged] = None
            if len(self._malformed_logged) > REMEMBERED_MALFORMED:
                self._malformed_logged.popitem(last=False)
        if self._on_malformed is not None:
            self._on_malformed(collection)
        return problem

    def _sound(self, collection: str, document: dict[str, Any]) -> bool:
        return self._problem(collection, document) is None

    def _checked(self, collection: str, document: dict[str, Any]) -> Any:
        """A document read by its key: as readers get it, or MalformedDocument."""
        problem = self._problem(collection, document)
        if problem is not None:
            raise MalformedDocument(collection, shown_id(document.get("_id")), problem)
        return document

    async def _stream(self, collection: str, cursor: AsyncCursor) -> AsyncGenerator[Any, None]:
        """The sound documents of `cursor`, a batch at a time; the cursor is closed however the reading ends."""
        try:
            async with translate_errors():
                async for document in cursor.batch_size(PAGE_SIZE):
                    if UNCHECKED not in document and self._sound(collection, document):
                        yield document
        finally:
            await cursor.close()

    async def _listing(self, collection: str, cursor: AsyncCursor) -> AsyncGenerator[Any, None]:
        async with translate_errors():
            await self.ensure_prepared()
        async for document in self._stream(collection, cursor):
            yield document

    @store_operation
    async def ping(self) -> None:
        """Ready means a change can be stored: a writable primary answers."""
        if not (await self._client.admin.command("hello")).get("isWritablePrimary"):
            raise StoreUnavailable("The database has no writable primary")

    async def close(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()
        await self._client.close()

    # --- jobs ---------------------------------------------------------------------------

    async def _finish(self, job: dict[str, Any]) -> None:
        """Move a final job to the completed set (with its mark, if it has one).

        Each step is idempotent and readers look in `inprogress` before
        `completed`, so whatever step a crash stops at, the job is found, and
        found once: upsert into completed first, delete from in-progress second.
        """
        await self._completed.replace_one({"jobId": job["jobId"]}, job, upsert=True)
        await self._inprogress.delete_one({"jobId": job["jobId"]})

    async def _record_targets(self, jobs: list[dict[str, Any]]) -> None:
        """The last steps of a change: what the marked jobs' targets show written, then each
        mark removed (unless a later change has marked the job again)."""
        await self._write_targets(targets_of_marked(jobs))
        await self._unmark(jobs)

    async def _record_due(self, jobs: list[dict[str, Any]], in_order: bool = False) -> None:
        """The repair of marked jobs, whose changes a crash may have cut short (or which are
        new, see `_insert`): a read of their targets, then a write of only those that do not
        show their job's change yet, so that the repair of a change recorded in full writes
        nothing. A final job's mark is removed; an in-progress job keeps its mark until its
        next change replaces it, which saves a write per job and costs the next start a read.

        The targets are looked up by name; those of jobs `in_order`, a page of the jobs in
        progress in the rule's order (each has one target), are read as one range of names
        per datastore instead: one walk of the index rather than a lookup per name (on
        SecantusDB, ten times cheaper), and over the pages of a start each target at most once."""
        targets = targets_of_marked(jobs)
        shown: dict[tuple[str, str], Any] = {}
        for rdn in {target["datastoreRdn"] for target in targets}:
            names = {target["name"] for target in targets if target["datastoreRdn"] == rdn}
            chosen = {"$gte": min(names), "$lte": max(names)} if in_order else {"$in": sorted(names)}
            async for stored in self._targets.find({"datastoreRdn": rdn, "name": chosen}, SHOWN_FIELDS):
                if stored.get("name") in names:
                    shown[(rdn, stored["name"])] = stored.get(SHOWN_JOB)
        await self._write_targets(
            [target for target in targets if shown.get((target["datastoreRdn"], target["name"])) != target[SHOWN_JOB]]
        )
        await self._unmark([job for job in jobs if job["status"] in FINAL_STATUSES])

    async def _write_targets(self, targets: list[dict[str, Any]], new: bool = False) -> None:
        """Write targets (of `targets_of_marked`), each over one that shows no newer job: a round
        trip or two however many there are. Each write of a target bumps its revision.

        The targets of `new` jobs are mostly new too: they are inserted first, in one
        unordered write whose only checks are the unique index's, and only those the
        index refuses are written over the target there."""
        if new:
            targets = [targets[index] for index in await self._insert_targets(targets)]
        requests = [
            UpdateOne(replaceable_by(target), {"$set": target, "$inc": {"revision": 1}}, upsert=True)
            for target in targets
        ]
        for _ in range(2):
            if not requests:
                break
            try:
                await self._targets.bulk_write(requests, ordered=False)
                break
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error["code"] != DUPLICATE_KEY for error in errors):
                    raise
                # A duplicate key: a target showing a newer job is there, or another process
                # inserted one first; once more, for the second case.
                requests = [requests[error["index"]] for error in errors]

    async def _unmark(self, jobs: list[dict[str, Any]]) -> None:
        """Remove the marks of jobs whose targets are recorded, each unless a later change has
        marked the job again: a round trip for each set the jobs are in."""
        for final in (False, True):
            marks = [
                UpdateOne({"jobId": job["jobId"], TARGETS_DUE: job[TARGETS_DUE]}, {"$unset": {TARGETS_DUE: ""}})
                for job in jobs
                if (job["status"] in FINAL_STATUSES) == final
            ]
            if marks:
                await (self._completed if final else self._inprogress).bulk_write(marks, ordered=False)

    @store_operation
    async def insert_job(self, job: Job) -> None:
        [answer] = await self._insert([job])
        if answer is not None:
            raise answer

    @store_operation
    async def insert_jobs(self, jobs: list[Job]) -> list[StoreError | None]:
        return await self._insert(jobs) if jobs else []

    async def _insert(self, jobs: list[Job]) -> list[StoreError | None]:
        """Store new jobs in a few round trips, whatever their number: the jobs, marked,
        in one unordered insert (the unique index refuses those whose target is held),
        those of a datastore other than the default settled (`_settle`), then all their
        targets in one bulk write. Each job is a change of its own, repaired as any marked
        job is if a crash cuts it short (`_record_due`).

        The marks stay: removing them would write each job twice, the costliest step of
        the insert. A mark on an in-progress job only says that its targets may not show
        its last change yet, and the job's next change replaces it; recording them again
        writes only those that do not show it."""
        rdn = jobs[0]["datastoreRdn"]
        checked = {} if rdn == self._default else {UNCHECKED: True}
        answers: list[StoreError | None] = [None] * len(jobs)
        first: set[str] = set()
        for index, job in enumerate(jobs):
            target = job["parameters"]["target"]
            if target in first:
                answers[index] = TargetBusy(target)  # held by an earlier job of the list
            first.add(target)
        pending = [index for index, answer in enumerate(answers) if answer is None]
        stored: list[int] = []
        # Twice: a target held by a finished job whose move a crash cut short is freed
        # by the first attempt, and taken by the second.
        for attempt in range(2):
            marked = [{**jobs[index], TARGETS_DUE: jobs[index]["createdAt"], **checked} for index in pending]
            try:
                refused = await self._insert_marked(marked)
            except StoreUnavailable as exc:
                unknown = [index for index in pending if index not in stored]
                stored += await self._stored_after_failure(jobs, unknown)
                if not stored:
                    raise  # nothing stored: the request failed as a whole
                for index in unknown:
                    if index not in stored:
                        answers[index] = exc
                break
            stored += [index for position, index in enumerate(pending) if position not in refused]
            held = [pending[position] for position in sorted(refused)]
            pending = await self._free_targets([jobs[index] for index in held], held) if attempt == 0 else []
            for index in held:
                if index not in pending:
                    answers[index] = TargetBusy(jobs[index]["parameters"]["target"])
            if not pending:
                break
        if checked and stored:
            standing = await self._settle(rdn, [jobs[index]["jobId"] for index in stored])
            if not standing:
                raise DatastoreGone(rdn)
            for index in stored:
                if jobs[index]["jobId"] not in standing:
                    answers[index] = DatastoreGone(rdn)  # deleted by a delete_datastore meanwhile
            stored = [index for index in stored if answers[index] is None]
        await self._record_targets_or_leave_them_due([jobs[index] for index in sorted(stored)])
        return answers

    async def _settle(self, rdn: str, job_ids: list[str]) -> set[str]:
        """Settle unchecked jobs of datastore `rdn`, each with a conditional write: the mark
        removed if the datastore is live, the job deleted if not. Whoever settles a job first
        decides (another process may have): the ids of those that stand, settled."""
        unchecked = {"jobId": {"$in": job_ids}, UNCHECKED: True}
        if await self._datastores.find_one({"rdn": rdn, "deleted": False}) is None:
            await self._inprogress.delete_many(unchecked)
        elif (await self._inprogress.update_many(unchecked, {"$unset": {UNCHECKED: ""}})).modified_count == len(
            job_ids
        ):
            return set(job_ids)
        return set(await self._inprogress.distinct("jobId", {"jobId": {"$in": job_ids}, **SETTLED}))

    async def _insert_targets(self, targets: list[dict[str, Any]]) -> list[int]:
        """Insert targets at their first revision: the positions of those already there."""
        try:
            await self._targets.insert_many([{**target, "revision": 1} for target in targets], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error["code"] != DUPLICATE_KEY for error in errors):
                raise
            return sorted(error["index"] for error in errors)
        return []

    async def _insert_marked(self, marked: list[dict[str, Any]]) -> set[int]:
        """Insert marked jobs in one unordered write: the positions the unique index refused."""
        try:
            async with translate_errors():
                await self._inprogress.insert_many(marked, ordered=False)  # adds _id to what it is given
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error["code"] != DUPLICATE_KEY for error in errors):
                raise
            return {error["index"] for error in errors}
        return set()

    async def _stored_after_failure(self, jobs: list[Job], indexes: list[int]) -> list[int]:
        """Which of the jobs at `indexes` a failed insert stored, if the database still
        answers; none that it knows of if not (those it stored hold their targets, and
        their marks are found by the next start)."""
        try:
            async with translate_errors():
                found = set(
                    await self._inprogress.distinct("jobId", {"jobId": {"$in": [jobs[i]["jobId"] for i in indexes]}})
                )
        except StoreUnavailable:
            return []
        return [index for index in indexes if jobs[index]["jobId"] in found]

    async def _free_targets(self, jobs: list[Job], indexes: list[int]) -> list[int]:
        """Of new jobs refused for a held target, the indexes of those whose holder
        turned out finished, or half-changed by a crash: this touch finishes it, and
        frees the target of a finished one, which the job may then take."""
        if not jobs:
            return []
        rdn = jobs[0]["datastoreRdn"]
        held = {"datastoreRdn": rdn, "parameters.target": {"$in": [job["parameters"]["target"] for job in jobs]}}
        # A malformed holder (None) stays: an operator must see to it.
        holders = {
            holder["parameters"]["target"]: holder if self._sound("inprogress", holder) else None
            async for holder in self._inprogress.find(held)
        }
        # An unchecked holder is settled first: it holds the target only if it stands.
        unchecked = [holder["jobId"] for holder in holders.values() if holder is not None and UNCHECKED in holder]
        standing = await self._settle(rdn, unchecked) if unchecked else set()
        for target, holder in list(holders.items()):
            if holder is not None and holder.pop(UNCHECKED, None) and holder["jobId"] not in standing:
                del holders[target]
        for holder in holders.values():
            if holder is not None and holder["status"] in FINAL_STATUSES:
                await self._finish(holder)
        # A change of a holder a crash cut short, or a new holder's: one read for them all.
        await self._record_due([holder for holder in holders.values() if holder is not None and TARGETS_DUE in holder])
        free = []
        for job, index in zip(jobs, indexes, strict=True):
            target = job["parameters"]["target"]
            holder = holders.get(target)
            # Finished and moved since, or finished by this touch (a malformed holder stays).
            if target not in holders or (holder is not None and holder["status"] in FINAL_STATUSES):
                free.append(index)
        return free

    async def _record_targets_or_leave_them_due(self, jobs: list[Job]) -> None:
        """Once a job is stored it exists, and the client must hear so: targets the
        database did not take stay due on the job, recorded at the next start or touch."""
        if not jobs:
            return
        marked = [{**job, TARGETS_DUE: job["createdAt"]} for job in jobs]
        try:
            async with translate_errors():
                await self._write_targets(targets_of_marked(marked), new=True)
        except StoreUnavailable:
            log.warning("%d job(s) stored; their targets are recorded when the database is back", len(jobs))

    #: Other processes, restores and hand edits change the database too.
    sole_writer = False

    @property
    def in_progress_version(self) -> None:
        """Others may write to the database: no answer is kept."""
        return None

    @store_operation
    async def get_job(self, job_id: str) -> Job | None:
        for name in ("inprogress", "completed"):
            job = await self._collections[name].find_one({"jobId": job_id, **SETTLED}, JOB_FIELDS)
            if job is not None:
                [read] = await self._with_retries([cast(Job, self._checked(name, job))])
                return read
        return None

    async def _with_retries(self, jobs: list[Job]) -> list[Job]:
        """`jobs` as readers get them: each failed one that a retry names says by which
        job (`retried`), at most a query of each set for the page."""
        failed = [job["jobId"] for job in jobs if job["status"] == "failed"]
        if not failed:
            return jobs
        retried_by: dict[str, str] = {}
        for collection in (self._inprogress, self._completed):
            async for retry in collection.find(
                {"retryOf": {"$in": failed}, **SETTLED}, {"jobId": True, "retryOf": True}
            ):
                retried_by[retry["retryOf"]] = retry["jobId"]
        return [retried(job, retried_by[job["jobId"]]) if job["jobId"] in retried_by else job for job in jobs]

    async def _pages_with_retries(self, pages: AsyncGenerator[list[Job], None]) -> AsyncIterator[list[Job]]:
        async with contextlib.aclosing(pages):
            async for page in pages:
                async with translate_errors():
                    read = await self._with_retries(page)
                yield read

    async def _find_both(self, conditions: dict[str, Any]) -> AsyncGenerator[Job, None]:
        """Jobs from both sets, in job order, each once, a window at a time.

        A window is a page of in-progress jobs, read whole, then the completed jobs up
        to the last of them in job order, streamed. A job that moves meanwhile is in
        one answer or both, never in neither: if it left in-progress before its page
        was read, it was in completed before the completed jobs of its window were
        read. Both copies then sort next to each other, the completed one first, and
        only that one is kept. In-progress jobs are few: one window nearly always
        holds them all, and then the completed jobs stream in one cursor.
        """
        async with translate_errors():
            await self.ensure_prepared()
        after: Job | None = None
        previous = None
        while True:
            bounds = [conditions] if after is None else [conditions, after_job(after)]
            async with translate_errors():
                cursor = self._inprogress.find(all_of(bounds), JOB_FIELDS).sort(JOB_SORT).limit(PAGE_SIZE)
                page = await cursor.batch_size(PAGE_SIZE).to_list()
            # A full page ends the window at its last job that has a place in job order (a
            # page of nothing but malformed documents, which no start lets by, ends the listing).
            edge = next(filter(has_position, reversed(page)), None) if len(page) == PAGE_SIZE else None
            in_progress = [job for job in page if UNCHECKED not in job and self._sound("inprogress", job)]
            window = all_of(bounds if edge is None else [*bounds, up_to_job(edge)])
            completed = self._stream("completed", self._completed.find(window, JOB_FIELDS).sort(JOB_SORT))
            async for job in merge_in_order(completed, in_progress):
                if job["jobId"] != previous:
                    yield job
                previous = job["jobId"]
            if edge is None:
                return
            after = edge

    def find_jobs(self, query: JobQuery) -> AsyncIterator[list[Job]]:
        return self._pages_with_retries(paged(self._jobs_matching(query), PAGE_SIZE))

    async def _jobs_matching(self, query: JobQuery) -> AsyncGenerator[Job, None]:
        conditions = job_filter(query)
        if not query.ignore_completed:
            async for job in self._find_both(conditions):
                yield job
            return
        conditions["status"] = {"$eq": query.status, **NOT_FINAL} if query.status else NOT_FINAL
        async for job in self._listing("inprogress", self._inprogress.find(conditions, JOB_FIELDS).sort(JOB_SORT)):
            yield job

    def jobs_for_target(self, datastore: str, name: str) -> AsyncIterator[list[Job]]:
        # The datastore in each branch, so that each can use its own index.
        either = [
            {"datastoreRdn": datastore, "parameters.target": name},
            {"datastoreRdn": datastore, "parameters.operation": "BUMP", MANIFESTO_NAME: name},
        ]
        return self._pages_with_retries(paged(self._find_both({"$or": either}), PAGE_SIZE))

    @store_operation
    async def update_job(self, job_id: str, change: JobChange) -> Job:
        # The job changed and marked, moved if final, its targets recorded, the mark
        # removed: a crash after any step leaves what the next start or touch finishes.
        status = NOT_FINAL if change.expected_status is None else change.expected_status
        job = await self._inprogress.find_one_and_update(
            {"jobId": job_id, "status": status, **SETTLED, **log_with_room_for(log_room_needed(change))},
            job_updates(change, change_time(change)),
            return_document=ReturnDocument.AFTER,
        )
        if job is None:
            return await self._refuse_update(job_id, change.expected_status)
        self._checked("inprogress", job)  # a malformed job is neither moved nor shown on targets
        if job["status"] in FINAL_STATUSES:
            await self._finish(job)
        await self._record_targets([job])
        return as_read(job)

    async def _refuse_update(self, job_id: str, expected_status: str | None) -> Job:
        """Why an update found no job to change: it moved on from the status the change
        expected, its log is full, it is final, or it does not exist. This touch finishes
        what a crash left of the job's last change."""
        job = await self._inprogress.find_one({"jobId": job_id, **SETTLED})
        if job is not None:
            status = self._checked("inprogress", job)["status"]
            if status not in FINAL_STATUSES:
                if expected_status not in (None, status):
                    raise JobMoved(job_id, expected_status, status)
                raise JobLogFull(job_id)
            await self._finish(job)  # final but not yet moved: this touch moves it
        else:
            job = await self._completed.find_one({"jobId": job_id})
            if job is None:
                raise JobNotFound(job_id)
            self._checked("completed", job)
        if TARGETS_DUE in job:
            await self._record_due([job])
        raise JobFinal(job_id, job["status"])

    @store_operation
    async def target_in_progress(self, datastore: str, name: str) -> bool:
        held = {"datastoreRdn": datastore, "parameters.target": name, "status": NOT_FINAL, **SETTLED}
        return await self._inprogress.find_one(held) is not None

    # --- targets ------------------------------------------------------------------------

    @store_operation
    async def get_target(self, datastore: str, name: str) -> Target | None:
        target = await self._targets.find_one({"datastoreRdn": datastore, "name": name}, TARGET_FIELDS)
        return None if target is None else cast(Target, self._checked("targets", target))

    def list_targets(self, datastore: str) -> AsyncIterator[list[Target]]:
        cursor = self._targets.find({"datastoreRdn": datastore}, TARGET_FIELDS).sort("name", ASCENDING)
        return paged(self._listing("targets", cursor), PAGE_SIZE)

    # --- datastores ----------------------------------------------------------------------

    @store_operation
    async def add_datastore(self, datastore: Datastore) -> None:
        try:
            await self._datastores.insert_one(dict(datastore))  # insert_one adds _id to what it is given
        except DuplicateKeyError:
            raise DatastoreTaken(datastore["rdn"]) from None

    @store_operation
    async def get_datastore(self, rdn: str) -> Datastore | None:
        datastore = await self._datastores.find_one({"rdn": rdn})
        return None if datastore is None else cast(Datastore, self._checked("datastores", datastore))

    async def list_datastores(self) -> list[Datastore]:
        # The registry: a few datastores, which every caller wants whole.
        return [datastore async for datastore in self._listing("datastores", self._datastores.find().sort("rdn"))]

    @store_operation
    async def delete_datastore(self, rdn: str) -> None:
        # Marked first, looked at second (see the module's docstring): an insert that read
        # the datastore live before the mark has its job there, unchecked or settled.
        marked = await self._datastores.update_one({"rdn": rdn, "deleted": False}, {"$set": {"deleted": True}})
        if marked.modified_count == 0:
            return  # unknown, or deleted already
        await self._inprogress.delete_many({"datastoreRdn": rdn, UNCHECKED: True})
        if await self._inprogress.find_one({"datastoreRdn": rdn, "status": NOT_FINAL, **SETTLED}) is not None:
            await self._datastores.update_one({"rdn": rdn, "deleted": True}, {"$set": {"deleted": False}})
            raise DatastoreBusy(rdn)

    @store_operation
    async def remove_datastore(self, rdn: str) -> None:
        await self._datastores.delete_one({"rdn": rdn})

    # --- maintenance ----------------------------------------------------------------------

    @store_operation
    async def add_maintenance(self, status: MaintenanceStatus) -> None:
        await self._maintenance.insert_one(dict(status))

    @store_operation
    async def latest_maintenance(self) -> MaintenanceStatus | None:
        return await self._latest_maintenance()

    async def _latest_maintenance(self) -> MaintenanceStatus | None:
        # The newest, even malformed: an older status in its place could let the executor start work.
        latest = await self._maintenance.find_one({}, sort=HISTORY_SORT)
        return None if latest is None else cast(MaintenanceStatus, self._checked("maintenance", latest))

    def maintenance_history(self) -> AsyncIterator[list[MaintenanceStatus]]:
        return paged(self._listing("maintenance", self._maintenance.find().sort(HISTORY_SORT)), PAGE_SIZE)

    @store_operation
    async def stats(self) -> StoreStats:
        by_status: list[dict[str, Any]] = [
            {"$match": {"status": {"$type": "string", **NOT_FINAL}, "datastoreRdn": {"$type": "string"}, **SETTLED}},
            {"$group": {"_id": {"datastore": "$datastoreRdn", "status": "$status"}, "count": {"$sum": 1}}},
        ]
        rows = await (await self._inprogress.aggregate(by_status)).to_list()
        in_progress = {(row["_id"]["datastore"], row["_id"]["status"]): row["count"] for row in rows}
        latest = await self._latest_maintenance()
        completed = await self._completed.estimated_document_count() + await self._unmoved()
        return StoreStats(in_progress, completed, bool(latest and latest["paused"]))

    async def _unmoved(self) -> int:
        """Final jobs a crash left in `inprogress` with no copy in `completed` yet: completed,
        as every read shows them. Each still holds its target's place in the unique index,
        so they are at most one per target, and nearly always none."""
        job_ids = await self._inprogress.distinct("jobId", {"status": FINAL})
        if not job_ids:
            return 0
        return len(job_ids) - await self._completed.count_documents({"jobId": {"$in": job_ids}})

    # --- export and import ------------------------------------------------------------------

    def dump_collection(self, name: str) -> AsyncIterator[list[dict[str, Any]]]:
        order = {
            "datastores": [("rdn", ASCENDING)],
            "targets": [("datastoreRdn", ASCENDING), ("name", ASCENDING)],
            "maintenance": [(key, ASCENDING) for key, _ in HISTORY_SORT],
            "audit": [("id", ASCENDING)],
        }
        cursor = self._collections[name].find({}, DUMPED_FIELDS).sort(order.get(name, JOB_SORT))
        return paged(self._listing(name, cursor), PAGE_SIZE)

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
        held = [(job["datastoreRdn"], job["parameters"]["target"]) for job in jobs]
        candidates = {
            "datastoreRdn": {"$in": sorted({datastore for datastore, _ in held})},
            "parameters.target": {"$in": sorted({target for _, target in held})},
        }
        taken = [
            (job["datastoreRdn"], job["parameters"]["target"]) async for job in self._inprogress.find(candidates, NO_ID)
        ]
        refuse_repeats(held, taken, lambda key: TargetBusy(key[1]))

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

    @property
    def targets_version(self) -> None:
        """Others may write to the database: no answer is kept."""
        return None

    @store_operation
    async def share_part(self, process: str, part: dict[str, Any], forget_before: float) -> list[dict[str, Any]]:
        """One document in `meta`, each process's part under its own key: one write of this
        process's part, then one read of them all; parts gone quiet are removed by the next
        process to share."""
        document = await self._meta.find_one_and_update(
            {"_id": SHARED_ID},
            {"$set": {f"parts.{process}": part}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        parts: dict[str, Any] = (document or {}).get("parts", {})
        quiet = [
            name
            for name, kept in parts.items()
            if not isinstance(kept, dict) or kept.get("sharedAt", 0) < forget_before
        ]
        if quiet:
            await self._meta.update_one({"_id": SHARED_ID}, {"$unset": {f"parts.{name}": "" for name in quiet}})
        return [kept for name, kept in parts.items() if name not in quiet]

    # --- the outbox: one document per delivery, claimed with a lease across processes -----

    async def _outbox(self) -> AsyncCollection:
        if not self._notifications_indexed:
            for keys in OUTBOX_INDEXES:
                await self._notifications.create_index(keys)
            self._notifications_indexed = True
        return self._notifications

    @store_operation
    async def add_notifications(self, notifications: list[Notification], limit: int) -> int:
        outbox = await self._outbox()
        # Counted, then inserted: processes adding at the same instant may pass the bound by
        # what they add, which keeps it a bound all the same.
        room = max(0, limit - await outbox.count_documents({"state": "pending"}))
        if notifications[:room]:
            await outbox.insert_many([{"_id": entry["id"], **entry} for entry in notifications[:room]])
        return len(notifications[room:])

    @store_operation
    async def claim_notification(self, owner: str, now: str, lease_until: str) -> Notification | None:
        outbox = await self._outbox()
        claimed = await outbox.find_one_and_update(
            {"state": "pending", "nextAttemptAt": {"$lte": now}, "leaseUntil": {"$not": {"$gt": now}}},
            {"$set": {"leasedBy": owner, "leaseUntil": lease_until}},
            projection=OUTBOX_FIELDS,
            sort=[("nextAttemptAt", ASCENDING), ("createdAt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return cast(Notification | None, claimed)

    @store_operation
    async def settle_notification(self, owner: str, notification: Notification, keep: int) -> None:
        outbox = await self._outbox()
        replaced = await outbox.replace_one({"_id": notification["id"], "leasedBy": owner}, dict(notification))
        if replaced.matched_count and notification["state"] != "pending":
            final = {"state": {"$ne": "pending"}}
            oldest_kept = await outbox.find_one(final, sort=[("finishedAt", DESCENDING)], skip=keep)
            if oldest_kept is not None:
                await outbox.delete_many({**final, "finishedAt": {"$lte": oldest_kept["finishedAt"]}})

    @store_operation
    async def recent_notifications(self, limit: int) -> list[Notification]:
        outbox = await self._outbox()
        cursor = outbox.find({}, OUTBOX_FIELDS).sort("createdAt", DESCENDING).limit(limit)
        return cast(list[Notification], await cursor.to_list())

    # --- the audit trail ---------------------------------------------------------------------

    @store_operation
    async def begin_audit(self, entry: AuditEntry) -> None:
        await self._begun.insert_one({"_id": entry["id"], **entry})

    @store_operation
    async def add_audit(self, entry: AuditEntry) -> None:
        # Appended, then forgotten as begun: a crash between the two leaves a begun entry
        # whose id is in the trail, which `finish_begun_audit` forgets.
        await self._collections["audit"].insert_one(dict(entry))
        await self._begun.delete_one({"_id": entry["id"]})

    @store_operation
    async def finish_begun_audit(self, before: str) -> int:
        appended = 0
        async for begun in self._begun.find({"at": {"$lt": before}}, NO_ID):
            with contextlib.suppress(DuplicateKeyError):  # its request, or another process, appended it
                await self._collections["audit"].insert_one(begun)
                appended += 1
            await self._begun.delete_one({"_id": begun["id"]})
        return appended

    def audit_entries(self, query: AuditQuery) -> AsyncIterator[list[AuditEntry]]:
        cursor = self._collections["audit"].find(audit_filter(query)).sort("id", DESCENDING)
        return paged(self._listing("audit", cursor), PAGE_SIZE)


def audit_filter(query: AuditQuery) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    for name, value in (("datastoreRdn", query.datastore), ("actor.userId", query.actor), ("action", query.action)):
        if value is not None:
            conditions[name] = value
    at = {operator: value for operator, value in (("$gte", query.since), ("$lt", query.until)) if value is not None}
    if at:
        conditions["at"] = at
    if query.before is not None:
        conditions["id"] = {"$lt": query.before}
    return conditions


async def empty_database(
    url: str, database: str, timeout_seconds: float, username: str | None = None, password: str | None = None
) -> str:
    """Remove every document of every collection without preparing the database (`import
    --replace` on one the store refuses to work with); what it removed. The indexes stay:
    the next open checks and builds them as at every start."""
    credentials: dict[str, Any] = {"username": username, "password": password, "authSource": "admin"}
    client: AsyncMongoClient = AsyncMongoClient(
        url,
        timeoutMS=int(timeout_seconds * 1000),
        serverSelectionTimeoutMS=int(timeout_seconds * 1000),
        **(credentials if username else {}),
    )
    try:
        async with translate_errors():
            removed = {name: (await client[database][name].delete_many({})).deleted_count for name in COLLECTIONS}
    finally:
        await client.close()
    counts = ", ".join(f"{count:,} {name}" for name, count in removed.items())
    return f"emptied the MongoDB database {database}: removed {counts} documents"
