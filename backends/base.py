"""The storage protocol: everything the HTTP handlers may ask of a backend.

Documents cross this seam as plain JSON-shaped dicts (camelCase keys, exactly as
the API shows them, typed below), so a backend is free to store them as it likes
and the handlers never learn how. A document handed to a store is copied before
the store keeps any of it, and a document a store hands out is the caller's own:
neither side can change the other's by accident. Errors cross the seam as the
exceptions below; the service's error middleware turns each into its HTTP status.

Adding a backend: a module beside `tinydb.py` and `mongo.py` with a class that has every
method of `Store` (an `open` classmethod, as theirs), chosen by `open_store` in
`backends/__init__.py` from an options dataclass of its own (a `[storage.<name>]` section).
Build it on what this module gives: the vocabulary, the shape checks (`PROBLEMS`), what a
change does to a job (`apply_change`) and to its targets (`targets_to_record`, `may_replace`:
targets follow job order), the default datastore of documents from before datastores
(`in_datastore`), queries (`JobQuery.matches`), listings as pages (`pages_of`, `paged`).
The rules every backend must keep itself, one in-progress job per target per datastore
first, are tested over every backend by tests/test_store_rules.py: add the backend to the
`backend` fixture's parameters in tests/conftest.py and that suite runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, Protocol, TypedDict, TypeVar, cast

import orjson


class User(TypedDict):
    userId: str
    firstName: str
    lastName: str


class LogEntry(TypedDict):
    at: str
    message: str


class Job(TypedDict):
    jobId: str
    #: The datastore the job works in. A document written before datastores
    #: existed has none: it belongs to the store's default datastore.
    datastoreRdn: str
    status: str
    #: `operation`, `target` and whichever optional values the job was given.
    parameters: dict[str, Any]
    log: list[LogEntry]
    createdAt: str
    createdBy: User
    #: Bumped by the store on every change, so that anything derived from a job
    #: (its encoded form, say) can tell its versions apart. Absent means 0.
    revision: NotRequired[int]
    #: Who cancelled the job, when an administrator did (it is failed then).
    cancelledBy: NotRequired[User]
    #: The failed job this one was posted again for (`POST /jobs/{jobId}/retry`).
    retryOf: NotRequired[str]
    #: The job posted again for this failed one: never stored, derived on every read
    #: from that job's `retryOf` (see `retried`), so the link has one home.
    retriedBy: NotRequired[str]


class Target(TypedDict):
    datastoreRdn: str
    name: str
    lastUpdatedAt: str
    status: str
    lastUpdatedBy: User
    action: list[str]
    #: Bumped by the store on every write of the target, as a job's is. Absent means 0.
    revision: NotRequired[int]


class Datastore(TypedDict):
    """A datastore of the registry; a deleted one keeps its rdn, jobs and files."""

    rdn: str
    name: str
    description: str
    #: Absolute; its input directory (archives waiting) is `<directory>_input`.
    directory: str
    bumpEnabled: bool
    deleted: bool


class MaintenanceStatus(TypedDict):
    msg: str
    paused: bool
    timestamp: str
    #: The person who set it; absent on one the executor's key set, or set before it was kept.
    setBy: NotRequired[User]


class AuditEntry(TypedDict):
    """One human action as the audit trail keeps it: who did what, when, and how it went."""

    #: Unique, and in time order as text: the trail is ordered by it (see `audit_id`).
    id: str
    at: str
    #: What was done, as its route declares it (`jobs.posted`, `maintenance.changed`, ...).
    action: str
    #: The datastore acted on; None for an action on the whole service.
    datastoreRdn: str | None
    actor: User
    #: How the actor was known: `token` (verified tokens), `apiKey` (the executor's key),
    #: `local` (auth off: the configured local user).
    credential: str
    #: The HTTP status the action was answered with, and its outcome in words.
    status: int
    outcome: str
    requestId: str
    #: What the handler adds about the action (bounded by the service).
    details: dict[str, Any]


class Notification(TypedDict):
    """One delivery of an event to one webhook, kept in the store's outbox until it is
    sent or given up, then among the recent ones `GET /notifications` shows."""

    #: The delivery's own id; `eventId` is the event's, the same for every webhook it goes to.
    id: str
    eventId: str
    event: str
    #: None for an event of the whole service (maintenance).
    datastoreRdn: str | None
    url: str
    #: `json` or `slack`: the body sent, made from `document` when it is sent.
    format: str
    #: The event as the `json` format sends it; its `text` is what `slack` sends.
    document: dict[str, Any]
    createdAt: str
    #: `pending` until `sent`, or `failed` once its attempts are spent.
    state: str
    attempts: int
    nextAttemptAt: str
    lastError: str | None
    finishedAt: str | None


#: A notification's states; the last two are final.
NOTIFICATION_STATES = ("pending", "sent", "failed")


D = TypeVar("D")
M = TypeVar("M", bound=Mapping[str, Any])
#: Documents a listing's page holds (and a database cursor brings per round trip), so that a
#: listing of years of history never holds every job at once, and a poll is one page.
PAGE_SIZE = 500


def copy_document(document: D) -> D:
    """A deep copy of JSON-shaped documents: what crosses the seam in either direction."""
    copied: D = orjson.loads(orjson.dumps(document))
    return copied


async def pages_of(documents: Sequence[Any], read: Callable[[Any], D | None], size: int) -> AsyncIterator[list[D]]:
    """A listing of `documents` as readers get them (`read`; None leaves one out),
    `size` at a time. The loop gets a turn between pages, never after the last: a
    long listing does not hold up other requests, a short one costs one step."""
    for start in range(0, len(documents), size):
        if start:
            await asyncio.sleep(0)
        yield [document for document in map(read, documents[start : start + size]) if document is not None]


async def paged(documents: AsyncGenerator[D, None], size: int) -> AsyncGenerator[list[D], None]:
    """A listing that comes a document at a time (a database cursor) as pages of `size`."""
    page: list[D] = []
    async with contextlib.aclosing(documents):
        async for document in documents:
            page.append(document)
            if len(page) == size:
                yield page
                page = []
    if page:
        yield page


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes) -> Any:
    """JSON as the standard has it: Python's parser also takes NaN and Infinity,
    which no client should send and no other reader takes back."""
    return json.loads(text, parse_constant=reject_constant)


def revision_of(document: Job | Target) -> int:
    """The store's revision of a job or a target: it changes with every change the store makes."""
    return document.get("revision", 0)


def retried(job: Job, retry_id: str) -> Job:
    """A failed job as readers get it once job `retry_id` retries it. The link is stored
    once, as the retry's `retryOf`, which is written with the retry itself: no crash can
    leave one side of it without the other. The revision moves with it, so that what is
    kept under a job's revision (its encoded form, its ETag) tells the two apart."""
    return {**job, "retriedBy": retry_id, "revision": revision_of(job) + 1}


K = TypeVar("K", bound=Hashable)


def refuse_repeats(keys: Iterable[K], taken: Iterable[K], refusal: Callable[[K], StoreAnswer]) -> None:
    """Raise `refusal` of the first key already `taken` or repeated: an import keeps
    the rules that inserting one document at a time keeps (every backend's
    `load_collection` checks its in-progress targets and its rdns with it)."""
    seen = set(taken)
    for key in keys:
        if key in seen:
            raise refusal(key)
        seen.add(key)


#: The collections every backend keeps, by these names: what export writes and import reads.
COLLECTIONS = ("datastores", "inprogress", "completed", "targets", "maintenance", "audit")
#: The collections whose documents belong to a datastore.
IN_DATASTORES = ("inprogress", "completed", "targets")

# --- vocabulary: the words of jobs, in the store, the API and the executor alike ---------

STATUSES = (
    "queued",
    "initiated",
    "validating",
    "decrypting",
    "transforming",
    "pseudonymizing",
    "enriching",
    "converting",
    "partitioning",
    "built",
    "importing",
    "completed",
    "failed",
)
#: A job in one of these is done: it leaves the in-progress set for the
#: completed set, which is how the storage layout follows the status.
FINAL_STATUSES = frozenset({"completed", "failed"})
#: The operations every executor generation parses.
OPERATIONS = (
    "BUMP",
    "ADD",
    "CHANGE",
    "PATCH_METADATA",
    "SET_STATUS",
    "DELETE_DRAFT",
    "REMOVE",
    "ROLLBACK_REMOVE",
    "DELETE_ARCHIVE",
)
#: The names executor generations give the job that makes a datastore's keys: today's
#: (microdata-job-executor d447dd8) parses only the first, a coming one only the second.
#: A service posts one of them, the one its configuration names.
KEYS_OPERATIONS = ("GENERATE_RSA_KEYS", "GENERATE_KEYS")
RELEASE_STATUSES = ("DRAFT", "PENDING_RELEASE", "PENDING_DELETE")
#: The target of the operations on a datastore as a whole.
DATASTORE = "DATASTORE"
#: The operations on a datastore as a whole: their target is DATASTORE, and only theirs is.
DATASTORE_OPERATIONS = ("BUMP", *KEYS_OPERATIONS)
#: Fields a new job must have for its operation, beyond operation and target.
REQUIRED_BY_OPERATION = {
    "SET_STATUS": ("releaseStatus",),
    "REMOVE": ("description",),
    "BUMP": ("description", "bumpManifesto", "bumpFromVersion", "bumpToVersion"),
}


# --- the shape of stored documents: what every reader relies on -------------------------


def is_text(value: Any) -> bool:
    return type(value) is str


def job_problem(document: Any) -> str | None:
    """What keeps `document` from being a job as the API shows it; None if nothing.

    A few key and type checks, quick for a sound job (a listing checks each one it
    hands out, a start may check years of them); only a faulty one gets the slow look
    that says what is wrong. A job without `datastoreRdn` is the default datastore's.
    """
    try:
        parameters = document["parameters"]
        user = document["createdBy"]
        if (
            type(document["jobId"]) is str
            and type(document["status"]) is str
            and type(document["createdAt"]) is str
            and type(parameters["operation"]) is str
            and type(parameters["target"]) is str
            and type(document["log"]) is list
            and type(user["userId"]) is str
            and type(user["firstName"]) is str
            and type(user["lastName"]) is str
            and type(document.get("datastoreRdn", "")) is str
        ):
            return None
    except (KeyError, TypeError):
        pass
    return job_problem_described(document)


def job_problem_described(document: Any) -> str:
    if not isinstance(document, dict):
        return "is not a JSON object"
    for name in ("jobId", "status", "createdAt"):
        if not is_text(document.get(name)):
            return f"has no text {name}"
    parameters = document.get("parameters")
    if not isinstance(parameters, dict) or not (
        is_text(parameters.get("operation")) and is_text(parameters.get("target"))
    ):
        return "has no parameters with a text operation and target"
    if not isinstance(document.get("log"), list):
        return "has no log list"
    if user_problem(document.get("createdBy")):
        return "has no createdBy with a text userId, firstName and lastName"
    return "has a datastoreRdn that is not text"


def user_problem(user: Any) -> bool:
    return not (isinstance(user, dict) and all(is_text(user.get(name)) for name in ("userId", "firstName", "lastName")))


def target_problem(document: Any) -> str | None:
    """As `job_problem`, for a target."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    for name in ("name", "status", "lastUpdatedAt"):
        if not is_text(document.get(name)):
            return f"has no text {name}"
    if "datastoreRdn" in document and not is_text(document["datastoreRdn"]):
        return "has a datastoreRdn that is not text"
    if user_problem(document.get("lastUpdatedBy")):
        return "has no lastUpdatedBy with a text userId, firstName and lastName"
    action = document.get("action")
    if not (isinstance(action, list) and all(map(is_text, action))):
        return "has no action list of texts"
    return None


def datastore_problem(document: Any) -> str | None:
    """As `job_problem`, for a datastore of the registry."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    for name in ("rdn", "name", "description", "directory"):
        if not is_text(document.get(name)):
            return f"has no text {name}"
    for name in ("bumpEnabled", "deleted"):
        if not isinstance(document.get(name), bool):
            return f"has no {name} that is true or false"
    return None


def maintenance_problem(document: Any) -> str | None:
    """As `job_problem`, for a maintenance status."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    if not is_text(document.get("msg")) or not is_text(document.get("timestamp")):
        return "has no text msg and timestamp"
    if not isinstance(document.get("paused"), bool):
        return "has no paused that is true or false"
    if "setBy" in document and user_problem(document["setBy"]):
        return "has a setBy without a text userId, firstName and lastName"
    return None


AUDIT_ID = re.compile(r"[0-9a-f]{24}")


def audit_id(at: datetime) -> str:
    """An audit entry's id: its time in microseconds since the epoch (14 hex digits, enough
    until the year 2540) and 10 random ones. Ids sort as their times do, and entries made in
    one microsecond, by several processes even, still differ."""
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return f"{micros:014x}{os.urandom(5).hex()}"


def audit_problem(document: Any) -> str | None:
    """As `job_problem`, for an audit entry."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    if not (is_text(document.get("id")) and AUDIT_ID.fullmatch(document["id"])):
        return "has no id of 24 hex digits"
    for name in ("at", "action", "credential", "outcome", "requestId"):
        if not is_text(document.get(name)):
            return f"has no text {name}"
    if document.get("datastoreRdn", "") is not None and not is_text(document.get("datastoreRdn")):
        return "has a datastoreRdn that is neither text nor null"
    if type(document.get("status")) is not int:
        return "has no status that is a whole number"
    if user_problem(document.get("actor")):
        return "has no actor with a text userId, firstName and lastName"
    if not isinstance(document.get("details"), dict):
        return "has no details object"
    return None


#: The shape check of each of COLLECTIONS' documents.
PROBLEMS: dict[str, Callable[[Any], str | None]] = {
    "datastores": datastore_problem,
    "inprogress": job_problem,
    "completed": job_problem,
    "targets": target_problem,
    "maintenance": maintenance_problem,
    "audit": audit_problem,
}


class StoreError(Exception):
    """Base of every error a backend reports on purpose."""


class StoreAnswer(StoreError):
    """An outcome the client is told of, not a failure of the backend: nothing
    was written. What each means in HTTP is the service's (`STORE_ERROR_STATUS`)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached right now; the request may be retried."""


class StoreFull(StoreUnavailable):
    """The disk the store writes to is full: nothing of the change was stored, and
    the same write succeeds once there is room again."""


class StoreLocked(StoreError):
    """Another process owns the store, and sharing it would corrupt it."""


class StoreCorrupt(StoreError):
    """The store holds what it cannot work with: a damaged file, a document that is not
    the store's, documents that break a rule. The store refuses to work on it (TinyDB
    changing nothing at all), and the text, one line, names where and what is wrong,
    so that an operator can fix it."""


class MalformedDocument(StoreCorrupt):
    """One document lacks the shape the API promises (a hand edit, a restore, a document
    the service did not write). A listing leaves it out; reading it alone is this error."""

    def __init__(self, collection: str, document_id: str, problem: str) -> None:
        super().__init__(
            f"A stored document is malformed: {collection} document {document_id} {problem};"
            " an operator must fix or remove it"
        )


class TargetBusy(StoreAnswer):
    """A job for this target is already in progress."""

    def __init__(self, target: str) -> None:
        super().__init__(f"Job with target {target} already in progress")
        self.target = target


class JobNotFound(StoreAnswer):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job found for jobId: {job_id}")


class DatastoreTaken(StoreAnswer):
    """The rdn is registered already, live or deleted: an rdn is never reused."""

    def __init__(self, rdn: str) -> None:
        super().__init__(f"Datastore rdn {rdn} already exists")


class DatastoreBusy(StoreAnswer):
    """A datastore with a job in progress cannot be deleted."""

    def __init__(self, rdn: str) -> None:
        super().__init__(f"Datastore {rdn} has a job in progress")


class DatastoreGone(StoreAnswer):
    """A job for a datastore that is neither the default nor registered and live."""

    def __init__(self, rdn: str) -> None:
        super().__init__(f"No datastore found for datastore_rdn: {rdn}")


class JobMoved(StoreAnswer):
    """A change meant for a job in one status found it in another (the executor moved it on)."""

    def __init__(self, job_id: str, expected: str, status: str) -> None:
        super().__init__(f"Job {job_id} is {status} now, no longer {expected}")


class JobFinal(StoreAnswer):
    """The job is completed or failed, and a final job never changes again."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"Job {job_id} is already {status}")


#: What a job's log messages may hold in all, in characters. A job is kept, written
#: and sent whole, so its log is bounded like any input; the change that finishes
#: the job is never refused for it, so a full log never keeps a job from ending.
MAX_LOG_CHARACTERS = 1 << 20


class JobLogFull(StoreAnswer):
    """The change would take the job's log past MAX_LOG_CHARACTERS."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"The log of job {job_id} is full: its lines may hold {MAX_LOG_CHARACTERS:,} characters in all;"
            " only a change to a final status is still taken"
        )


def log_characters(log: list[LogEntry]) -> int:
    return sum(len(entry["message"]) for entry in log)


def log_room_needed(change: JobChange) -> int:
    """How many characters of log `change` must find room for: none for the change
    that finishes a job (see MAX_LOG_CHARACTERS)."""
    return 0 if change.status in FINAL_STATUSES else log_characters(change.log)


def log_has_room(log: list[LogEntry], change: JobChange) -> bool:
    needed = log_room_needed(change)
    return needed == 0 or log_characters(log) + needed <= MAX_LOG_CHARACTERS


@dataclass(frozen=True)
class JobQuery:
    """Filters of `GET /jobs`; `None` means "any"."""

    datastore: str | None = None
    status: str | None = None
    operations: frozenset[str] | None = None
    ignore_completed: bool = False

    def matches(self, datastore: str, status: str, operation: str) -> bool:
        """Whether a job of `datastore` with `status` and `operation` is one the query asks for."""
        if self.datastore is not None and datastore != self.datastore:
            return False
        if self.status is not None and status != self.status:
            return False
        return self.operations is None or operation in self.operations

    @property
    def in_progress_only(self) -> bool:
        """Whether no completed job can match, without looking: the executors' polls."""
        return self.ignore_completed or (self.status is not None and self.status not in FINAL_STATUSES)


@dataclass(frozen=True)
class AuditQuery:
    """Filters of `GET /audit`; `None` means "any". Entries come newest first."""

    datastore: str | None = None
    #: The actor's userId.
    actor: str | None = None
    action: str | None = None
    #: Entries at or after `since`, before `until` (times as every time is written).
    since: str | None = None
    until: str | None = None
    #: Entries older than the one with this id: where the last page ended.
    before: str | None = None


@dataclass(frozen=True)
class JobChange:
    """What `PUT /jobs/{jobId}` does to a job, already turned into log entries."""

    status: str | None = None
    description: str | None = None
    log: list[LogEntry] = field(default_factory=list)
    #: When the change happened: what the job's targets show as `lastUpdatedAt`.
    #: None means the time of its last log entry, or now if it adds none.
    at: str | None = None
    #: The status the job must still be in for the change to be made (JobMoved if not),
    #: checked and changed in one step; None changes a job in any status not final.
    expected_status: str | None = None
    #: Who cancels the job: its top-level `cancelledBy`.
    cancelled_by: User | None = None


def now_iso() -> str:
    """Now, as every time is written: UTC with microseconds, so that the strings sort as the instants do."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def apply_change(job: Job, change: JobChange) -> Job:
    """The job as `change` leaves it, one revision on: a new dict, sharing nothing it changes with `job`."""
    job = Job(**job)
    job["log"] = [*job["log"], *copy_document(change.log)]
    job["revision"] = revision_of(job) + 1
    if change.status is not None:
        job["status"] = change.status
    if change.description is not None:
        job["parameters"] = {**job["parameters"], "description": change.description}
    if change.cancelled_by is not None:
        job["cancelledBy"] = copy_document(change.cancelled_by)
    return job


def in_datastore(document: M, default: str) -> M:
    """`document` as read today: a job or target written before datastores existed
    belongs to the default datastore. A new dict when it lacks one; never changed in place."""
    return document if "datastoreRdn" in document else cast(M, {**document, "datastoreRdn": default})


def held_target(job: Job) -> tuple[str, str]:
    """What an in-progress job holds: its target, in its datastore."""
    return job["datastoreRdn"], job["parameters"]["target"]


def change_time(change: JobChange) -> str:
    """The time a change happened at (see `JobChange.at`)."""
    if change.at is not None:
        return change.at
    return change.log[-1]["at"] if change.log else now_iso()


@dataclass(frozen=True)
class StoreStats:
    """What /metrics reports of the store; cheap to get at any history size."""

    #: In-progress jobs by (datastore rdn, status).
    in_progress: dict[tuple[str, str], int]
    completed: int
    paused: bool


def job_order(job: Job) -> tuple[str, str]:
    """Oldest first, so the executor works through queued jobs in order.

    `createdAt` is always written with microseconds and a +00:00 offset, so the
    strings sort as the instants do.
    """
    return job["createdAt"], job["jobId"]


def manifesto_datasets(job: Job) -> list[str]:
    """Names of the datasets a BUMP job's manifesto releases or removes."""
    parameters = job["parameters"]
    if parameters["operation"] != "BUMP" or "bumpManifesto" not in parameters:
        return []
    return [update["name"] for update in parameters["bumpManifesto"]["dataStructureUpdates"]]


# --- targets: what a job leaves its targets showing ---------------------------------


def job_action(parameters: Mapping[str, Any]) -> list[str]:
    operation = parameters["operation"]
    if operation == "SET_STATUS":
        return [operation, parameters["releaseStatus"]]
    if operation == "BUMP":
        return [operation, parameters["bumpFromVersion"], parameters["bumpToVersion"]]
    return [operation]


def target_of(job: Job, at: str) -> Target:
    """The target as the last job that touched it leaves it."""
    return Target(
        datastoreRdn=job["datastoreRdn"],
        name=job["parameters"]["target"],
        lastUpdatedAt=at,
        status=job["status"],
        lastUpdatedBy=job["createdBy"],
        action=job_action(job["parameters"]),
    )


def targets_released_by(bump: Job, at: str) -> Iterator[Target]:
    """The datasets a completed BUMP released or removed; its drafts stay untouched."""
    parameters = bump["parameters"]
    for update in parameters["bumpManifesto"]["dataStructureUpdates"]:
        if update["releaseStatus"] == "DRAFT":
            continue
        outcome = "RELEASED" if update["releaseStatus"] == "PENDING_RELEASE" else "REMOVED"
        yield Target(
            datastoreRdn=bump["datastoreRdn"],
            name=update["name"],
            lastUpdatedAt=at,
            status="completed",
            lastUpdatedBy=bump["createdBy"],
            action=[outcome, parameters["bumpToVersion"]],
        )


def targets_of(job: Job, at: str) -> list[Target]:
    """Every target a job shows as it is now, its change made at `at`: its own, and
    once it is a completed BUMP with a manifesto, every dataset it released or removed.
    What a store records with each insert and update of the job, in the same change."""
    targets = [target_of(job, at)]
    parameters = job["parameters"]
    if parameters["operation"] == "BUMP" and job["status"] == "completed" and "bumpManifesto" in parameters:
        targets.extend(targets_released_by(job, at))
    return targets


#: On a stored target, the store's own bookkeeping, never handed out: the change of the
#: job it shows (`createdAt`, `jobId`, `revision`). Targets follow job order: only a job
#: at least as new (created later, or the same job at a later revision) replaces one, so
#: a late write of an older job never hides a newer one.
SHOWN_JOB = "shownJob"


def change_position(job: Job) -> dict[str, Any]:
    return {"createdAt": job["createdAt"], "jobId": job["jobId"], "revision": revision_of(job)}


def targets_to_record(job: Job, at: str) -> list[dict[str, Any]]:
    """`targets_of(job, at)` as a store keeps them: each with the change it shows."""
    position = change_position(job)
    return [{**target, SHOWN_JOB: position} for target in targets_of(job, at)]


def position_order(position: Mapping[str, Any]) -> tuple[str, str, int]:
    return position["createdAt"], position["jobId"], position["revision"]


def may_replace(new: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Whether the target `new` (of `targets_to_record`) may replace `stored`: it shows a
    change at least as new. A stored target that names no change (imported, adopted,
    written before targets followed job order) gives way to any change made since it."""
    if stored is None:
        return True
    shown = stored.get(SHOWN_JOB)
    if shown is None:
        return bool(stored.get("lastUpdatedAt", "") <= new["lastUpdatedAt"])
    return position_order(shown) <= position_order(new[SHOWN_JOB])


def shown_target(stored: Mapping[str, Any]) -> Target:
    """A stored target as readers get it: a copy, without the store's bookkeeping."""
    return copy_document(cast(Target, {key: value for key, value in stored.items() if key != SHOWN_JOB}))


class Store(Protocol):
    """The async interface every backend implements, and all the handlers use.

    Every job and target belongs to one datastore (`datastoreRdn`); the rule
    "one job in progress per target" holds per datastore. A store is opened
    with the rdn of the default datastore: a document written before
    datastores existed (no `datastoreRdn`) belongs to it, on every read and
    every import, without the store rewriting anything it need not.

    Listings are async iterators of pages: lists of documents, in the listing's
    order, at most a few hundred each (a page may be empty). No listing ever holds
    a collection whole, and the short ones the executor polls, one page, cost one
    step instead of one per document.

    A document without the shape the API promises (see
    PROBLEMS) is left out of every listing, and reading it alone raises
    MalformedDocument; a backend that checks every document at open (TinyDB)
    refuses to open instead.

    A store remembers the default datastore it was first opened with: opened with
    another, it raises StoreCorrupt naming both, since its documents from before
    datastores (and the default's own) would silently change datastore.

    Opening, or the first operation of a store opened while its server was down,
    raises StoreCorrupt for documents the store cannot work with at all, naming them.
    """

    async def ping(self) -> None:
        """Return when the backend answers and can store a change; raise
        StoreUnavailable (StoreFull for a full disk) otherwise."""

    async def close(self) -> None: ...

    @property
    def sole_writer(self) -> bool:
        """Whether every change of the store goes through this object (TinyDB, which locks
        its directory). Only then may the service keep what it derives from documents
        (their encoded forms) under their revisions: a database that others write to,
        restore or edit by hand (MongoDB) changes documents without changing those."""

    async def insert_job(self, job: Job) -> None:
        """Store a new in-progress job and its target (`targets_of(job, job["createdAt"])`)
        as one change; raise TargetBusy if its target has one in its datastore, and
        DatastoreGone unless its datastore is the default or registered and not deleted.
        That check and the insert are one step: a `delete_datastore` at the same time,
        from any process, either sees the job (DatastoreBusy) or makes this insert fail."""

    async def insert_jobs(self, jobs: list[Job]) -> list[StoreError | None]:
        """Insert each job as `insert_job` does (all of them in one datastore: DatastoreGone
        is raised for the whole list, before any is stored), in order, each judged on its own: a job
        whose target is held (in progress, or by an earlier job of the list) is refused
        alone, its place in the answer holding the TargetBusy, a stored one's None. A
        backend may store them all as one change (TinyDB: one write for all); one that
        stores them one by one and fails after storing some answers the failure in the
        place of each job it did not store, so that the client learns which exist (a
        failure before any is stored is raised)."""

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, in any datastore; every read of a job, here and in the
        listings, gives a failed job that a retry names as `retried` gives it."""

    @property
    def in_progress_version(self) -> Hashable | None:
        """A value that stays the same exactly as long as no in-progress job changes, so
        that an answer made of in-progress jobs alone (`JobQuery.in_progress_only`) may
        be kept while it does; never the same again once one has. None from a store that
        cannot tell (a database that others write to as well)."""

    def find_jobs(self, query: JobQuery) -> AsyncIterator[list[Job]]:
        """Jobs matching `query`, in `job_order`, each once; pages, so that years
        of history are never in memory whole."""

    def jobs_for_target(self, datastore: str, name: str) -> AsyncIterator[list[Job]]:
        """Jobs of the datastore whose target is `name` or whose BUMP manifesto lists it, as `find_jobs`."""

    async def update_job(self, job_id: str, change: JobChange) -> Job:
        """Apply `change` and return the job; move it to the completed set when
        its new status is final; record every target the job now shows
        (`targets_of(job, change_time(change))`) over a target that shows no newer
        job (`may_replace`): all of it as one change. Raise JobNotFound, JobFinal, or
        JobLogFull when the job's log has no room for the change's lines, and JobMoved when
        `change.expected_status` is given and the job is in another status."""

    async def target_in_progress(self, datastore: str, name: str) -> bool: ...

    async def get_target(self, datastore: str, name: str) -> Target | None: ...

    def list_targets(self, datastore: str) -> AsyncIterator[list[Target]]:
        """The datastore's targets, ordered by name."""

    async def add_datastore(self, datastore: Datastore) -> None:
        """Register a datastore; raise DatastoreTaken if its rdn is registered, live or deleted."""

    async def get_datastore(self, rdn: str) -> Datastore | None:
        """The registered datastore, deleted or not."""

    async def list_datastores(self) -> list[Datastore]:
        """Every registered datastore, deleted ones included, ordered by rdn."""

    async def delete_datastore(self, rdn: str) -> None:
        """Mark a registered datastore deleted, keeping its jobs and targets;
        raise DatastoreBusy while it has a job in progress."""

    async def remove_datastore(self, rdn: str) -> None:
        """Forget a datastore entirely (undoing a provisioning that failed); nothing if unknown."""

    async def add_maintenance(self, status: MaintenanceStatus) -> None: ...

    async def latest_maintenance(self) -> MaintenanceStatus | None:
        """The newest status; None only while none was ever stored."""

    def maintenance_history(self) -> AsyncIterator[list[MaintenanceStatus]]:
        """Every status, newest first (by insertion, so equal timestamps keep order)."""

    async def stats(self) -> StoreStats:
        """In-progress jobs by datastore and status, the completed count and the
        maintenance flag, without reading the completed history. A final job whose
        move a crash left unfinished counts as completed, as readers show it."""

    def dump_collection(self, name: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Every document of one of COLLECTIONS, in a stable order that `load_collection`
        keeps: jobs in job order, targets by datastore and name, datastores by rdn,
        maintenance oldest first."""

    async def load_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        """Add exported documents to one of COLLECTIONS as they are (jobs and targets
        without `datastoreRdn` into the default datastore)."""

    async def is_empty(self) -> bool: ...

    async def clear(self) -> None:
        """Remove every document of every collection."""

    @property
    def targets_version(self) -> Hashable | None:
        """As `in_progress_version`, for the targets: the same exactly as long as no target
        of any datastore changes; None from a store that cannot tell."""

    async def share_part(self, process: str, part: dict[str, Any], forget_before: float) -> list[dict[str, Any]]:
        """What several service processes on one store tell each other (what each saw of
        the executor): store `process`'s `part` (JSON-like, with a float `sharedAt`), forget
        the parts of processes whose last `sharedAt` is older than `forget_before`, and answer
        every part kept, this one's included. A store only one process opens answers `[part]`."""

    # --- the outbox of notifications: deliveries to webhooks, at least once ---------------

    async def add_notifications(self, notifications: list[Notification], limit: int) -> int:
        """Store new pending deliveries as one write, as many as leave at most `limit`
        pending; answer how many were left out (the last of the list)."""

    async def claim_notification(self, owner: str, now: str, lease_until: str) -> Notification | None:
        """The pending delivery due longest (`nextAttemptAt` at or before `now`) that no
        live lease holds, leased to `owner` until `lease_until`, or None. One step: of
        processes sharing the store, one alone gets it until its lease runs out."""

    async def settle_notification(self, owner: str, notification: Notification, keep: int) -> None:
        """Replace the delivery `owner` holds with its outcome (pending with its next attempt,
        or sent, or failed) and release its lease; nothing if the lease went to another
        meanwhile. The final deliveries beyond the newest `keep` are forgotten."""

    async def recent_notifications(self, limit: int) -> list[Notification]:
        """The newest `limit` deliveries, by `createdAt` newest first."""

    async def begin_audit(self, entry: AuditEntry) -> None:
        """Keep `entry`, an audited request's as far as it is known before the request is
        acted on, until `add_audit` appends the request's own of the same id; if the process
        stops between the two, `finish_begun_audit` appends it as it was begun."""

    async def add_audit(self, entry: AuditEntry) -> None:
        """Append an entry to the audit trail, which nothing changes or removes, and forget
        the begun entry of its id."""

    async def finish_begun_audit(self, before: str) -> int:
        """Append each entry begun before `before` (an `at`) that its request never appended
        (a process stopped meanwhile), as it was begun, unless its id is in the trail by
        now, and forget them: how many were appended."""

    def audit_entries(self, query: AuditQuery) -> AsyncIterator[list[AuditEntry]]:
        """The entries `query` matches, newest first (by id), as pages."""
