"""The embedded default: TinyDB files, and a write-ahead journal that makes every change one write.

TinyDB is the file format. The data directory holds one TinyDB file per collection
(`inprogress.json`, `targets.json`, `maintenance.json`, `datastores.json`) and the
completed set as segments of at most SEGMENT_SIZE jobs (`completed/00000001.json`,
...): plain TinyDB JSON, one `_default` table each, that any TinyDB reads (with
`AtomicJSONStorage` to write them safely while the service is stopped). Around it the
service builds what TinyDB does not do: a journal, a worker thread and snapshots.

The journal. A change is never written to the files directly: it is one record of
the journal (`journal/<16 digits>.jsonl`), appended and fsynced before it is
acknowledged, holding everything the change does (a job and its target; a job's move
to the completed set with every target a BUMP releases). A record whose append a
crash cut short fails its checksum and is ignored, so after a crash at any instant a
change is in the store entirely or not at all, and a write costs the same at any size
of the store. Records are numbered in sequence; a fold (in the background once the
journal has grown or the store is idle, at start, and at close) writes the files that
changed, each to a temporary file fsynced and renamed over the old one, then
`store.json` with the number of the last record they hold, then deletes the journal
files they cover. Replaying a journal over files that already hold some of it gives
the same documents (a record sets documents, never adds to them), so a crash in the
middle of a fold loses nothing either; the numbers let opening notice an acknowledged
record gone missing (see `read_journals`).

The worker. Every change runs on one dedicated thread, which serialises them ("check
the target is free, then insert" is atomic) and keeps file I/O off the event loop. It
alone holds the documents as the files do (TableFile, CompletedJobs) and changes them.

The snapshots. What the event loop reads without waiting for the worker (a job by id,
the in-progress jobs, the targets, the datastores, the latest maintenance status) is
one immutable Snapshot, which the worker replaces whole after each change. Its large
parts (the targets, the completed jobs' JSON) share their bulk with the last snapshot
and copy only what was written since (Layered), so a change costs what it changes.

Opening validates every file first, and refuses a damaged or unexpected one with a
StoreCorrupt naming it, before changing anything. A data directory written before
datastores existed holds jobs and targets without `datastoreRdn`: each is given the
default datastore as it is read into memory, so opening such a directory rewrites
nothing, and a document gains the field on disk only when it is next written; the
store remembers the default it was first opened with in `store.json`.

Changing this module safely:
- A new kind of change is a new journal operation: an Operation in JOURNAL_OPERATIONS
  (made by calling it, checked when read back, gathered into a Change) and its effect
  in `_change`. It sets documents whole, so that replaying it twice changes nothing.
- Change documents only on the worker (`_run`), and only through `_commit`: the
  record is appended first, then applied, so memory never runs ahead of the journal.
- On the loop, read `self._snapshot` once per call and never change anything in it;
  on the worker, make the next one instead (`_change`). A memory kept on a snapshot
  (PublishedJobs.matching) is filled by the loop alone.
- Read a store file only through `read_regular` (a FIFO must not hang the start), and
  check everything before the first write: a refused start changes nothing.
- Test on real files: copy the directory as a crash leaves it, cut the journal at
  every byte (tests/test_tinydb_store.py), and run bench/kill9.py.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import errno
import fcntl
import functools
import itertools
import logging
import os
import re
import stat
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, TypeVar, cast

import orjson
from tinydb.storages import Storage

from .base import (
    FINAL_STATUSES,
    IN_DATASTORES,
    NOTIFICATION_STATES,
    PAGE_SIZE,
    PROBLEMS,
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
    Notification,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreStats,
    StoreUnavailable,
    Target,
    TargetBusy,
    apply_change,
    audit_problem,
    change_time,
    copy_document,
    datastore_problem,
    held_target,
    in_datastore,
    is_text,
    job_order,
    job_problem,
    log_has_room,
    maintenance_problem,
    manifesto_datasets,
    may_replace,
    pages_of,
    refuse_repeats,
    retried,
    revision_of,
    shown_target,
    target_problem,
    targets_to_record,
)
from .durable import fsync_directory, write_atomically

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Mapping[str, Any])
LOCK_FILE = "job-service.lock"
#: What the store knows of itself beside its documents (see `read_store_file`).
STORE_FILE = "store.json"
TMP_SUFFIX = ".tmp"
#: The TinyDB files of the data directory, by collection.
TABLE_FILES = {
    "datastores": "datastores.json",
    "inprogress": "inprogress.json",
    "targets": "targets.json",
    "maintenance": "maintenance.json",
    "outbox": "outbox.json",
    "begun": "audit-begun.json",
}
COMPLETED_DIRECTORY = "completed"
#: The audit trail, in segments as the completed set: it only grows.
AUDIT_DIRECTORY = "audit"
JOURNAL_DIRECTORY = "journal"
SEGMENT_NAME = re.compile(r"[0-9]{8}\.json")
#: A journal file is named by the sequence number of its first record; the previous
#: release's were numbered by 8 digits, and their records carry no sequence numbers.
JOURNAL_NAME = re.compile(r"[0-9]{16}\.jsonl|[0-9]{8}\.jsonl")
PREVIOUS_JOURNAL_NAME = re.compile(r"[0-9]{8}\.jsonl")
#: Jobs per completed segment: a fold rewrites at most the newest (and one it just filled).
SEGMENT_SIZE = 500
#: A journal this large is folded into the files at once, in the background.
FOLD_BYTES = 4 << 20
#: A journal with anything in it is folded after this long without a change.
IDLE_FOLD_SECONDS = 2.0
#: Less free space than this on the data directory's disk, and the store is not ready.
MIN_FREE_BYTES = 64 << 10


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file behind, for a person
    (or a tool) using TinyDB on the store's files: each write goes to a temporary
    file that is fsynced and renamed over the old one. The last state is kept in
    memory, since TinyDB reads the storage before every single operation."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._data: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        if self._data is None:
            try:
                self._data = orjson.loads(self._path.read_bytes())
            except FileNotFoundError:
                return None
        return self._data

    def write(self, data: dict[str, Any]) -> None:
        try:
            write_atomically(self._path, orjson.dumps(data), tmp=self._path.with_name(self._path.name + TMP_SUFFIX))
            fsync_directory(self._path.parent)
        except BaseException:
            # TinyDB has already changed `data` in place; forget it so the next
            # read comes from disk and memory never runs ahead of the file.
            self._data = None
            log.error("Writing %s failed; nothing was changed and it will be read again from disk", self._path)
            raise
        self._data = data


class DirectoryLock:
    """An exclusive flock on a file in the data directory.

    The kernel drops it when the process dies, even by kill -9, so a crashed
    service never leaves a stale lock that blocks the next start.
    """

    def __init__(self, path: Path) -> None:
        try:  # never blocking, whatever is in the lock's place (a FIFO would wait for a writer)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except IsADirectoryError:
            raise corrupt(path, "is a directory, where the store keeps its lock file") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise corrupt(path, f"is {file_kind(mode)}, where the store keeps its lock file")
        self._file = open(fd, "a+")  # noqa: SIM115 - held open: the lock lives as long as the file
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or "unknown"
            self._file.close()
            raise StoreLocked(
                f"The data directory {path.parent} is in use by another job-service "
                f"process (pid {owner}); stop it or choose another storage.tinydb.path"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def write_error(exc: OSError, directory: Path) -> Exception:
    """What a failed write of the store means to a client: StoreFull for a full disk,
    StoreUnavailable for a read-only one; any other failure is unexpected, itself."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(
            f"The disk of the data directory {directory} is full: the change was not stored;"
            " send it again once there is room"
        )
    if exc.errno == errno.EROFS:
        return StoreUnavailable(
            f"The data directory {directory} is on a read-only file system: the change was not stored"
        )
    return exc


# --- what the files may hold ------------------------------------------------------


def corrupt(path: Path, problem: str) -> StoreCorrupt:
    return StoreCorrupt(f"{path}: {problem}; nothing was changed, so fix or move the file and start again")


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def read_regular(path: Path) -> bytes | None:
    """The content of one of the store's files; None if there is none. Anything but a
    regular file is refused before it is read: a FIFO would keep the start waiting forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise corrupt(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise corrupt(path, f"is {file_kind(mode)}, not a regular file")
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    except OSError as exc:
        raise corrupt(path, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


class StoreFile(NamedTuple):
    """`store.json`: the default datastore the store was first opened with (its documents
    from before datastores belong to it for good), and the sequence number of the last
    journal record the TinyDB files hold, written by every fold after the files and
    before the journal files it covers are deleted."""

    default_datastore: str
    folded: int

    def encoded(self) -> bytes:
        return orjson.dumps({"defaultDatastore": self.default_datastore, "folded": self.folded})


def read_store_file(path: Path) -> StoreFile | None:
    """The store file; None in a data directory written before there was one."""
    content = read_regular(path)
    if content is None:
        return None
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise corrupt(path, f"is not valid JSON ({exc})") from None
    if not (
        isinstance(data, dict)
        and set(data) == {"defaultDatastore", "folded"}
        and is_text(data["defaultDatastore"])
        and type(data["folded"]) is int
        and data["folded"] >= 0
    ):
        raise corrupt(path, 'is not the store\'s own file: {"defaultDatastore": <rdn>, "folded": <record number>}')
    return StoreFile(data["defaultDatastore"], data["folded"])


def stored_job_problem(document: Any, final: bool | None = None) -> str | None:
    """As `job_problem`; with `final`, the job must also be final (True) or in progress (False)."""
    problem = job_problem(document)
    if problem is not None or final is None or (document["status"] in FINAL_STATUSES) == final:
        return problem
    return f"is {'not ' if final else ''}final, with status {document['status']!r}"


#: What each file may hold: documents of the API's shape, and only finished jobs in a segment.
def notification_problem(document: Any) -> str | None:
    """What keeps `document` from being a delivery of the outbox (see `Notification`)."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    for name in ("id", "eventId", "event", "url", "format", "createdAt", "nextAttemptAt"):
        if not is_text(document.get(name)):
            return f"has no text {name}"
    if document.get("state") not in NOTIFICATION_STATES or type(document.get("attempts")) is not int:
        return "has no known state and attempts"
    if not isinstance(document.get("document"), dict):
        return "has no document"
    return None


FILE_PROBLEMS: dict[str, Callable[[Any], str | None]] = {
    **PROBLEMS,
    "completed": functools.partial(stored_job_problem, final=True),
    "outbox": notification_problem,
    "begun": audit_problem,
}


def read_tinydb_file(path: Path, problem_of: Callable[[Any], str | None]) -> dict[str, Any]:
    """The documents of a TinyDB file by document id, each checked; {} if there is no file."""
    content = read_regular(path)
    if content is None:
        return {}
    if not content.strip():
        raise corrupt(path, "is empty, where a TinyDB file holds at least {}")
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise corrupt(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise corrupt(path, "is not a TinyDB file: its top level is not an object")
    for name in data:
        if name != "_default":
            raise corrupt(path, f"holds a table {name!r}, where the store keeps only _default")
    table = data.get("_default", {})
    if not isinstance(table, dict):
        raise corrupt(path, "is not a TinyDB file: its _default table is not an object")
    for doc_id, document in table.items():
        if not (doc_id.isascii() and doc_id.isdigit() and int(doc_id) > 0):
            raise corrupt(path, f"holds a document id {doc_id!r} that is not a positive number")
        problem = problem_of(document)
        if problem is not None:
            raise corrupt(path, f"document {doc_id} {problem}")
    return table


class Change:
    """What one journal record does, gathered by kind as its operations are read, so
    that the documents and the snapshot are changed once for all of them."""

    def __init__(self) -> None:
        #: In-progress jobs, inserted or replaced.
        self.jobs: list[Job] = []
        #: Finished jobs: into the completed set (once), out of the in-progress set.
        self.done: list[Job] = []
        self.targets: list[Target] = []
        #: Datastores registered or changed by rdn; None for one forgotten.
        self.datastores: dict[str, Datastore | None] = {}
        #: Maintenance statuses with their TinyDB document ids.
        self.maintenance: list[tuple[int, MaintenanceStatus]] = []
        #: Deliveries of the outbox stored or replaced by id; None for one forgotten.
        self.notifications: dict[str, Notification | None] = {}
        #: Audit entries appended (once: a replayed one is there already), each forgotten as begun.
        self.audit: list[AuditEntry] = []
        #: Audit entries begun, kept until appended.
        self.begun: list[AuditEntry] = []


class Operation(NamedTuple):
    """A kind of journal operation, a JSON list `[name, ...arguments]`: calling it makes
    one, `check` says what one read back lacks (None if nothing), `gather` adds what it
    does to a record's Change."""

    name: str
    check: Callable[[list[Any]], str | None]
    gather: Callable[[Change, list[Any]], None]

    def __call__(self, *arguments: Any) -> list[Any]:
        return [self.name, *arguments]


def one_document(problem: Callable[[Any], str | None], missing: str) -> Callable[[list[Any]], str | None]:
    return lambda op: problem(op[1]) if len(op) == 2 else missing


def gather_datastore(change: Change, op: list[Any]) -> None:
    change.datastores[op[1]["rdn"]] = op[1]


def gather_forget(change: Change, op: list[Any]) -> None:
    change.datastores[op[1]] = None


JOB = Operation(
    "job",
    one_document(functools.partial(stored_job_problem, final=False), "has no job"),
    lambda change, op: change.jobs.append(op[1]),
)
DONE = Operation(
    "done",
    one_document(functools.partial(stored_job_problem, final=True), "has no job"),
    lambda change, op: change.done.append(op[1]),
)
TARGET = Operation(
    "target", one_document(target_problem, "has no target"), lambda change, op: change.targets.append(op[1])
)
DATASTORE = Operation("datastore", one_document(datastore_problem, "has no datastore"), gather_datastore)
#: A datastore forgotten, by rdn.
FORGET = Operation("forget", lambda op: None if len(op) == 2 and is_text(op[1]) else "has no rdn", gather_forget)
#: A maintenance status with its TinyDB document id: replayed, it is set, never added twice.
MAINTENANCE = Operation(
    "maintenance",
    lambda op: (
        maintenance_problem(op[2]) if len(op) == 3 and isinstance(op[1], int) else "has no document id and status"
    ),
    lambda change, op: change.maintenance.append((op[1], op[2])),
)
#: A delivery of the outbox, stored or replaced whole.
NOTIFICATION = Operation(
    "notification",
    one_document(notification_problem, "has no notification"),
    lambda change, op: change.notifications.__setitem__(op[1]["id"], op[1]),
)
#: A final delivery forgotten, by id.
NOTIFICATION_GONE = Operation(
    "notification-gone",
    lambda op: None if len(op) == 2 and is_text(op[1]) else "has no id",
    lambda change, op: change.notifications.__setitem__(op[1], None),
)
AUDIT = Operation(
    "audit", one_document(audit_problem, "has no audit entry"), lambda change, op: change.audit.append(op[1])
)
AUDIT_BEGUN = Operation(
    "audit-begun", one_document(audit_problem, "has no audit entry"), lambda change, op: change.begun.append(op[1])
)
#: Every kind of operation a journal record may hold, by name.
JOURNAL_OPERATIONS = {
    operation.name: operation
    for operation in (
        JOB,
        DONE,
        TARGET,
        DATASTORE,
        FORGET,
        MAINTENANCE,
        NOTIFICATION,
        NOTIFICATION_GONE,
        AUDIT,
        AUDIT_BEGUN,
    )
}


def encode_record(operations: list[list[Any]]) -> bytes:
    body = orjson.dumps(operations)
    return b"%08x %b\n" % (zlib.crc32(body), body)


def decode_record(line: bytes) -> list[list[Any]] | None:
    """The operations of one journal line; None if its checksum fails (a torn write)."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        checksum = int(line[:8], 16)
    except ValueError:
        return None
    body = line[9:]
    if zlib.crc32(body) != checksum:
        return None
    operations = orjson.loads(body)
    if not isinstance(operations, list):
        raise ValueError("is not a list of operations")
    for op in operations:
        if not isinstance(op, list) or not op or op[0] not in JOURNAL_OPERATIONS:
            raise ValueError(f"holds an operation this release does not know: {str(op)[:60]}")
        problem = JOURNAL_OPERATIONS[op[0]].check(op)
        if problem is not None:
            raise ValueError(f"holds a {op[0]} operation that {problem}")
    return operations


def read_journal(path: Path) -> list[list[list[Any]]]:
    """The records of one journal file, in order. A record whose append a crash cut
    short can only be the last: after it the file holds no whole record."""
    lines = (read_regular(path) or b"").split(b"\n")
    records = []
    for index, line in enumerate(lines):
        try:
            operations = decode_record(line)
            if operations is None and any(decode_record(later) is not None for later in lines[index + 1 :]):
                raise ValueError("fails its checksum, yet whole records follow it")
        except ValueError as exc:
            raise corrupt(path, f"record {index + 1} {exc}") from None
        if operations is None:
            break  # torn by a crash before it was acknowledged
        records.append(operations)
    return records


def read_journals(paths: list[Path], folded: int) -> tuple[list[list[list[Any]]], int]:
    """The records of the journal files in order, and the sequence number of the last one.

    A record that is missing and was acknowledged is refused: one missing between two
    files (a file cut back, or gone), one the files' checkpoint (`folded`) says came
    before the journal's first, a file of this release with no whole record (each is
    written with its first record, so one cut back to nothing is told from a crash),
    or a journal that ends before the checkpoint (replayed, it would undo changes the
    files hold). What none of this can tell from a crash before the append is the
    newest records of the newest file cut back at a record boundary: nothing after them
    says they were there. The previous release's files carry no numbers to check.
    """
    records: list[list[list[Any]]] = []
    next_record: int | None = None
    for path in paths:
        in_file = read_journal(path)
        records += in_file
        if PREVIOUS_JOURNAL_NAME.fullmatch(path.name):
            continue
        first = int(path.stem)
        if not in_file:
            raise corrupt(
                path,
                f"holds no whole record, where each journal file is written with its first: "
                f"record {first} and any after it are lost",
            )
        if next_record is None and first > folded + 1:
            raise corrupt(
                path,
                f"starts at record {first}, but the files hold the records up to {folded} only: "
                f"records {folded + 1} to {first - 1} are missing",
            )
        if next_record is not None and first != next_record:
            raise corrupt(
                path,
                f"starts at record {first}, but the journal file before it ends at record "
                f"{next_record - 1}: "
                + (f"records {next_record} to {first - 1} are missing" if first > next_record else "the two overlap"),
            )
        next_record = first + len(in_file)
    if next_record is not None and next_record - 1 < folded:
        raise corrupt(
            paths[-1],
            f"ends at record {next_record - 1}, but the files hold the records up to {folded}: it was cut back",
        )
    return records, max(folded, 0 if next_record is None else next_record - 1)


def numbered(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    """The files of `directory`, which must all be named by `pattern` (or be leftover temporary files)."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for entry in sorted(entries, key=lambda entry: (len(entry.name), entry.name)):  # in the order of their numbers
        name = entry.name
        if pattern.fullmatch(name) and entry.is_file():
            found.append(entry)
        elif not (name.endswith(TMP_SUFFIX) and pattern.fullmatch(name.removesuffix(TMP_SUFFIX))):
            raise corrupt(entry, f"is not a file of the store's {directory.name} directory")
    return found


def check_directory(path: Path) -> None:
    """Refuse anything in the data directory that the store does not know."""
    written = {*TABLE_FILES.values(), STORE_FILE}
    known = {*written, LOCK_FILE, COMPLETED_DIRECTORY, AUDIT_DIRECTORY, JOURNAL_DIRECTORY, "lost+found"}
    for entry in path.iterdir():
        name = entry.name
        if name in known or (name.endswith(TMP_SUFFIX) and name.removesuffix(TMP_SUFFIX) in written):
            continue
        raise corrupt(entry, "is not a file of job-service's store; move it out of the data directory")
    for name in (COMPLETED_DIRECTORY, AUDIT_DIRECTORY, JOURNAL_DIRECTORY):
        if (path / name).exists() and not (path / name).is_dir():
            raise corrupt(path / name, "is not a directory")


# --- documents ---------------------------------------------------------------------


def target_key(target: Mapping[str, Any]) -> tuple[str, str]:
    return target["datastoreRdn"], target["name"]


def target_name(target: Mapping[str, Any]) -> str:
    return cast(str, target["name"])


def document_id(document: Mapping[str, Any]) -> str:
    """The key of a document that names itself: a delivery, an audit entry."""
    return cast(str, document["id"])


class TableFile:
    """One TinyDB file's documents in memory, exactly as the file holds them (by
    TinyDB document id, which only grows, as TinyDB gives them), indexed by each
    document's key; `dirty` until the next fold writes them."""

    def __init__(self, path: Path, documents: dict[str, Any], key: Callable[[Any], Hashable] | None = None) -> None:
        self.path = path
        self.documents = documents
        self._key = key
        self.ids: dict[Hashable, str] = {} if key is None else {key(doc): doc_id for doc_id, doc in documents.items()}
        self.next_id = max(map(int, documents), default=0) + 1
        self.dirty = False

    def __len__(self) -> int:
        return len(self.documents)

    def put(self, document: Any) -> None:
        """Insert or replace the document with the same key."""
        assert self._key is not None
        key = self._key(document)
        doc_id = self.ids.get(key)
        if doc_id is None:
            doc_id = self.ids[key] = str(self.next_id)
            self.next_id += 1
        self.documents[doc_id] = document
        self.dirty = True

    def put_at(self, doc_id: int, document: Any) -> None:
        self.documents[str(doc_id)] = document
        self.next_id = max(self.next_id, doc_id + 1)
        self.dirty = True

    def remove(self, key: Hashable) -> None:
        doc_id = self.ids.pop(key, None)
        if doc_id is not None:
            del self.documents[doc_id]
            self.dirty = True

    def clear(self) -> None:
        self.documents, self.ids = {}, {}
        self.dirty = True

    def in_order(self) -> list[Any]:
        """The documents in the order they were first stored."""
        return [self.documents[doc_id] for doc_id in sorted(self.documents, key=int)]

    def encoded(self) -> bytes:
        return orjson.dumps({"_default": self.documents})


#: What queries filter and sort completed jobs on, kept beside their JSON: (createdAt,
#: jobId, datastore, status, operation, target). A plain tuple of strings, which the
#: garbage collector stops tracking, where a NamedTuple stays tracked: the history then
#: costs its full collections nothing (100,000 NamedTuples cost a start 0.45 s of them).
JobFacts = tuple[str, str, str, str, str, str]


def facts_of(job: Job) -> JobFacts:
    parameters = job["parameters"]
    # Datastores, statuses, operations and targets repeat across history: one string object each.
    datastore, status, operation, target = (
        sys.intern(value)
        for value in (job["datastoreRdn"], job["status"], parameters["operation"], parameters["target"])
    )
    return job["createdAt"], job["jobId"], datastore, status, operation, target


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:08d}.json"


class PublishedJobs:
    """The in-progress jobs as the loop reads them: replaced whole by the worker at
    every change and never changed, so no reader needs a lock. Each job is kept with
    its JSON, so a reader's own copy is one decode. The jobs a query matches are
    remembered for as long as this snapshot is the published one: the executors
    poll the same few queries every few seconds, and jobs change far less often.
    """

    #: Queries whose matches one snapshot remembers; more start the memory afresh.
    MATCHES_KEPT = 64
    #: Each snapshot's own number: never the same twice in a process, an import's included.
    _versions = itertools.count()

    def __init__(self, jobs: dict[str, Job], encoded: dict[str, bytes]) -> None:
        self.version = next(self._versions)
        self.jobs: Mapping[str, Job] = MappingProxyType(jobs)
        self._encoded = encoded
        self._matches: dict[JobQuery, list[str]] = {}

    @classmethod
    def of(cls, jobs: Iterable[Job]) -> PublishedJobs:
        return PublishedJobs({}, {}).changed(jobs, ())

    def changed(self, jobs: Iterable[Job], finished: Iterable[str]) -> PublishedJobs:
        """The snapshot with `jobs` put in progress (inserted or replaced) and the `finished` ones out."""
        current, encoded = dict(self.jobs), dict(self._encoded)
        for job in jobs:
            current[job["jobId"]] = job
            # A copy of exactly its length: orjson's own bytes keep their whole working buffer.
            encoded[job["jobId"]] = bytes(memoryview(orjson.dumps(job)))
        for job_id in finished:
            current.pop(job_id, None)
            encoded.pop(job_id, None)
        return PublishedJobs(current, encoded)

    def copy(self, job_id: str) -> Job | None:
        encoded = self._encoded.get(job_id)
        return None if encoded is None else cast(Job, orjson.loads(encoded))

    def matching(self, query: JobQuery) -> list[str]:
        """The ids of the jobs `query` matches, in job order, remembered: on the loop only,
        so that the memory is never changed by two threads."""
        job_ids = self._matches.get(query)
        if job_ids is None:
            job_ids = self.match(query)
            if len(self._matches) >= self.MATCHES_KEPT:
                self._matches.clear()
            self._matches[query] = job_ids
        return job_ids

    def match(self, query: JobQuery) -> list[str]:
        """As `matching`, not remembered."""
        matched = [
            job
            for job in self.jobs.values()
            if query.matches(job["datastoreRdn"], job["status"], job["parameters"]["operation"])
        ]
        return [job["jobId"] for job in sorted(matched, key=job_order)]


V = TypeVar("V")


class Layered(Generic[K, V]):
    """A mapping never changed once made, for many items of which a change sets a few:
    `with_items` makes the next one, sharing the bulk and copying only the items set
    since the bulk was last rebuilt (at most RECENT_LIMIT), so a change costs its own
    items, not the whole map's."""

    RECENT_LIMIT = 1024

    def __init__(self, bulk: dict[K, V], recent: dict[K, V] | None = None) -> None:
        self._bulk = bulk
        #: Set since the bulk was rebuilt; they win over the bulk's.
        self.recent: Mapping[K, V] = recent or {}

    def get(self, key: K) -> V | None:
        value = self.recent.get(key)
        return self._bulk.get(key) if value is None else value

    def with_items(self, items: Mapping[K, V]) -> Layered[K, V]:
        recent = {**self.recent, **items}
        if len(recent) <= self.RECENT_LIMIT:
            return Layered(self._bulk, recent)
        return Layered({**self._bulk, **recent})


class Targets:
    """The targets as the loop reads them, never changed once made: by key, and each
    datastore's ordered by name, as of the last rebuild of the bulk and the few written
    since (see Layered)."""

    #: Each one's own number, as PublishedJobs'.
    _versions = itertools.count()

    def __init__(self, by_key: Layered[tuple[str, str], Target], by_datastore: Mapping[str, list[Target]]) -> None:
        self.version = next(self._versions)
        self._by_key = by_key
        #: As of the bulk of `by_key`.
        self._by_datastore = by_datastore

    @classmethod
    def of(cls, targets: Iterable[Target]) -> Targets:
        by_key = {target_key(target): target for target in targets}
        by_datastore: dict[str, list[Target]] = {}
        for datastore, name in sorted(by_key):
            by_datastore.setdefault(datastore, []).append(by_key[datastore, name])
        return cls(Layered(by_key), by_datastore)

    def get(self, key: tuple[str, str]) -> Target | None:
        return self._by_key.get(key)

    def listed(self, datastore: str) -> Sequence[Target]:
        """The datastore's targets by name: the bulk's list itself when none was written since."""
        return self._merged(datastore, self._by_key.recent)

    def _merged(self, datastore: str, recent: Mapping[tuple[str, str], Target]) -> list[Target]:
        listed = self._by_datastore.get(datastore, [])
        written = {name: target for (rdn, name), target in recent.items() if rdn == datastore}
        if not written:
            return listed
        # Two runs in order: the sort merges them in one pass.
        return sorted(
            [*(target for target in listed if target["name"] not in written), *written.values()], key=target_name
        )

    def with_targets(self, targets: Iterable[Target]) -> Targets:
        written = {target_key(target): target for target in targets}
        by_key = self._by_key.with_items(written)
        if by_key.recent:
            return Targets(by_key, self._by_datastore)
        # The bulk was rebuilt: so are the lists of the datastores written since the last time.
        recent = {**self._by_key.recent, **written}
        changed = {rdn for rdn, _ in recent}
        return Targets(by_key, {**self._by_datastore, **{rdn: self._merged(rdn, recent) for rdn in changed}})

    def in_order(self) -> list[Target]:
        """Every target, by datastore then name."""
        datastores = sorted({*self._by_datastore, *(rdn for rdn, _ in self._by_key.recent)})
        return [target for rdn in datastores for target in self.listed(rdn)]


class Snapshot(NamedTuple):
    """Everything the event loop reads without the worker, as of one change. The worker
    makes a new one at every change and replaces the store's whole, in one assignment;
    nothing in one is ever changed, so a reader that takes it once reads one state."""

    #: The jobs in progress.
    jobs: PublishedJobs
    targets: Targets
    #: The registry, ordered by rdn.
    datastores: Mapping[str, Datastore]
    latest_maintenance: MaintenanceStatus | None
    #: Each completed job's JSON by id.
    completed: Layered[str, bytes]
    #: The id of the job that retries each retried one.
    retried_by: Mapping[str, str]

    def completed_job(self, job_id: str) -> Job | None:
        """A completed job as readers get it: a retried one says by which job."""
        job = self.stored_completed_job(job_id)
        retry = self.retried_by.get(job_id)
        return job if job is None or retry is None else retried(job, retry)

    def stored_completed_job(self, job_id: str) -> Job | None:
        """A completed job as its file holds it (what an export copies)."""
        encoded = self.completed.get(job_id)
        return None if encoded is None else cast(Job, orjson.loads(encoded))


def registry(datastores: Mapping[str, Datastore | None]) -> Mapping[str, Datastore]:
    """The datastores as a snapshot holds them: ordered by rdn, those forgotten (None) left out."""
    return MappingProxyType(
        {rdn: datastore for rdn in sorted(datastores) if (datastore := datastores[rdn]) is not None}
    )


class CompletedJobs:
    """The completed set: append-only segments of at most SEGMENT_SIZE jobs, each a
    TinyDB file, and in memory each job's JSON and the facts queries need.

    A finished job never changes, so only the newest segment is ever written and
    a fold costs the same at any history size; memory holds each job as its JSON
    bytes, about a third of its size as Python objects, and only the newest
    segment's documents. It lives on the store's worker thread; the loop reads the
    jobs' JSON from the snapshot (`published`). A job from before datastores is
    remembered in `default_datastore`, its file left as it is.

    Which job retries each retried one is kept here too (`retries`): the completed jobs'
    links are found as they are read, and the store tells of each retry it holds in
    progress (`link`), for a retry names a completed job but may not be one yet.
    """

    def __init__(
        self, directory: Path, default_datastore: str, segments: Iterable[tuple[Path, dict[str, Any]]]
    ) -> None:
        self._directory = directory
        self._default = default_datastore
        #: Each job's JSON added since the last `published`.
        self._added: dict[str, bytes] = {}
        self._facts: dict[str, JobFacts] = {}
        #: Job ids by (datastore, dataset): the target and any dataset a BUMP manifesto lists.
        self._by_dataset: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        #: The retrying job's id by the retried one's, and the same as of the last `retries`.
        self._retried_by: dict[str, str] = {}
        self._published_retries: Mapping[str, str] | None = None
        documents: dict[str, Any] = {}
        path = segment_path(directory, 1)
        for path, documents in segments:
            for doc_id, job in documents.items():
                if job["jobId"] in self._facts:
                    raise corrupt(path, f"document {doc_id} is job {job['jobId']}, which an earlier segment holds")
                self._remember(job)
        #: Each job's JSON, as of the last `published`.
        self._published: Layered[str, bytes] = Layered(self._added)
        self._added = {}
        self._active = TableFile(path, documents)
        #: Segments filled since the last fold, which it must still write.
        self._filled: list[TableFile] = []

    def _remember(self, stored: Job) -> None:
        job = in_datastore(stored, self._default)
        job_id = job["jobId"]
        # A copy of exactly its length: orjson's own bytes keep their whole
        # working buffer, four times the size, for as long as they live.
        self._added[job_id] = bytes(memoryview(orjson.dumps(job)))
        _, _, datastore, _, _, target = self._facts[job_id] = facts_of(job)
        for name in {target, *manifesto_datasets(job)}:
            self._by_dataset[datastore, name].append(job_id)
        self.link(job)

    def link(self, job: Job) -> None:
        """Remember the job `job` retries, if it retries one."""
        retry_of = job.get("retryOf")
        if retry_of is not None and self._retried_by.get(retry_of) != job["jobId"]:
            self._retried_by[retry_of] = job["jobId"]
            self._published_retries = None

    def retries(self) -> Mapping[str, str]:
        """The links, for a snapshot: a new map when one was made since the last (retries are few)."""
        if self._published_retries is None:
            self._published_retries = MappingProxyType(dict(self._retried_by))
        return self._published_retries

    def add(self, job: Job) -> None:
        """Add `job` unless it is there already (a journal replayed over a fold holds it twice)."""
        if job["jobId"] in self._facts:
            return
        if len(self._active) >= SEGMENT_SIZE:
            self._filled.append(self._active)
            self._active = TableFile(segment_path(self._directory, int(self._active.path.stem) + 1), {})
        self._active.put_at(self._active.next_id, job)
        self._remember(job)

    def has_unwritten(self) -> bool:
        return bool(self._filled) or self._active.dirty

    def unwritten(self) -> list[TableFile]:
        """The segment files a fold must write; the filled ones are forgotten as they are handed out."""
        filled, self._filled = self._filled, []
        return [*filled, self._active] if self._active.dirty else filled

    def published(self) -> Layered[str, bytes]:
        """Every job's JSON by id, for a snapshot: a new map when jobs were added since the last."""
        if self._added:
            self._published, self._added = self._published.with_items(self._added), {}
        return self._published

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._facts

    def __len__(self) -> int:
        return len(self._facts)

    def facts(self, query: JobQuery) -> list[JobFacts]:
        if query.in_progress_only:
            return []
        return [
            facts
            for facts in self._facts.values()
            if query.matches(facts[2], facts[3], facts[4])  # datastore, status, operation
        ]

    def facts_for_dataset(self, datastore: str, name: str) -> list[JobFacts]:
        return [self._facts[job_id] for job_id in self._by_dataset.get((datastore, name), ())]


#: What audit queries filter on, kept beside each entry's JSON: (id, at, datastore, action, actor's userId).
AuditFacts = tuple[str, str, str | None, str, str]


class AuditTrail:
    """The audit trail: append-only segments of at most SEGMENT_SIZE entries, each a
    TinyDB file (`audit/00000001.json`, ...), as the completed set's; in memory each
    entry's JSON and the facts queries filter on, ordered by id. It lives on the
    store's worker thread, which alone reads and changes it."""

    def __init__(self, directory: Path, segments: Iterable[tuple[Path, dict[str, Any]]]) -> None:
        self._directory = directory
        self._encoded: dict[str, bytes] = {}
        #: By id, oldest first: entries come nearly in id order, each put in its place.
        self._facts: list[AuditFacts] = []
        documents: dict[str, Any] = {}
        path = segment_path(directory, 1)
        for path, documents in segments:
            for doc_id, entry in documents.items():
                if entry["id"] in self._encoded:
                    raise corrupt(path, f"document {doc_id} is audit entry {entry['id']}, which an earlier one is")
                self._remember(entry)
        self._active = TableFile(path, documents)
        self._filled: list[TableFile] = []

    def _remember(self, entry: AuditEntry) -> None:
        self._encoded[entry["id"]] = bytes(memoryview(orjson.dumps(entry)))
        facts = (entry["id"], entry["at"], entry["datastoreRdn"], entry["action"], entry["actor"]["userId"])
        if self._facts and self._facts[-1] > facts:
            bisect.insort(self._facts, facts)
        else:
            self._facts.append(facts)

    def add(self, entry: AuditEntry) -> None:
        """Add `entry` unless it is there already (a journal replayed over a fold holds it twice)."""
        if entry["id"] in self._encoded:
            return
        if len(self._active) >= SEGMENT_SIZE:
            self._filled.append(self._active)
            self._active = TableFile(segment_path(self._directory, int(self._active.path.stem) + 1), {})
        self._active.put_at(self._active.next_id, entry)
        self._remember(entry)

    def has_unwritten(self) -> bool:
        return bool(self._filled) or self._active.dirty

    def unwritten(self) -> list[TableFile]:
        """The segment files a fold must write; the filled ones are forgotten as they are handed out."""
        filled, self._filled = self._filled, []
        return [*filled, self._active] if self._active.dirty else filled

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._encoded

    def __len__(self) -> int:
        return len(self._facts)

    def matching(self, query: AuditQuery) -> list[bytes]:
        """The JSON of the entries `query` matches, newest first."""
        end = len(self._facts) if query.before is None else bisect.bisect_left(self._facts, (query.before,))
        found = []
        for entry_id, at, datastore, action, actor in reversed(self._facts[:end]):
            if (
                (query.datastore is None or datastore == query.datastore)
                and (query.action is None or action == query.action)
                and (query.actor is None or actor == query.actor)
                and (query.since is None or at >= query.since)
                and (query.until is None or at < query.until)
            ):
                found.append(self._encoded[entry_id])
        return found

    def in_order(self) -> list[bytes]:
        return [self._encoded[facts[0]] for facts in self._facts]


class Journal:
    """The write-ahead journal: files in its directory, one record a line, `<crc32 of the
    JSON, 8 hex digits> <JSON list of operations>`. Records are numbered in sequence
    across files, and each file is named by the number of its first record (16 digits).

    Each record is appended and fsynced before the change it holds is acknowledged.
    An append that fails is cut off again, so that no half record is ever followed
    by another. A file is created with its first record (a temporary file fsynced and
    renamed into place), so that none is ever empty; it is never reopened (each start
    appends to a new one), and rotated by a fold, which deletes the files it has
    written out.
    """

    def __init__(self, directory: Path, next_record: int) -> None:
        self.directory = directory
        #: The sequence number the next record appended gets.
        self.next_record = next_record
        self._first = next_record
        self._fd: int | None = None
        #: Bytes in the open file.
        self.size = 0
        #: Why the last append failed, until one succeeds.
        self.failure: OSError | None = None
        self._cut_short = False

    @property
    def path(self) -> Path:
        return self.directory / f"{self._first:016d}.jsonl"

    @property
    def last_record(self) -> int:
        return self.next_record - 1

    def append(self, operations: list[list[Any]]) -> None:
        line = encode_record(operations)
        try:
            if self._fd is None:
                self._create(line)
            else:
                if self._cut_short:
                    self._cut_back()
                write_all(self._fd, line)
                os.fdatasync(self._fd)  # the data and the size it needs, as fsync but the times
        except OSError as exc:
            log.error("Appending to %s failed: %s", self.path, exc)
            self._cut_short = self._fd is not None
            if self._fd is not None:
                try:
                    self._cut_back()
                except OSError as cut:
                    log.error("Cannot cut %s back to its last whole record yet: %s", self.path, cut)
            self.failure = exc
            error = write_error(exc, self.directory.parent)
            if error is exc:
                raise
            raise error from exc
        self.size += len(line)
        self.next_record += 1
        self.failure = None

    def _create(self, line: bytes) -> None:
        """Start the next file with its first record: it is in the directory with it, or not at all."""
        self.directory.mkdir(exist_ok=True)
        self._first = self.next_record
        tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, line)
            os.fdatasync(fd)
            os.rename(tmp, self.path)
            fsync_directory(self.directory)
            fsync_directory(self.directory.parent)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd, self.size, self._cut_short = fd, 0, False

    def _cut_back(self) -> None:
        """Remove whatever a failed append left after the last whole record."""
        assert self._fd is not None
        os.ftruncate(self._fd, self.size)
        os.fsync(self._fd)
        self._cut_short = False

    def rotate(self) -> Path | None:
        """Close the file being appended to, if any, and return it: the next append starts the next file."""
        if self._fd is None:
            return None
        closed = self.path
        self.close()
        self.size = 0
        return closed

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


class Fold(NamedTuple):
    """What a fold writes: each changed file's new content (the store file's with the last
    record the others hold), and the journal files it covers, deleted once they are written."""

    files: dict[Path, bytes]
    journals: list[Path]


class TinyDBStore:
    """The Store protocol on TinyDB files and a write-ahead journal in one data directory."""

    def __init__(self, path: Path, default_datastore: str, initial_maintenance: MaintenanceStatus | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = DirectoryLock(path / LOCK_FILE)
        try:
            self._load(path, default_datastore)
        except BaseException:
            self._lock.release()
            raise
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinydb")
        self._closed = False
        self._fold_wanted = threading.Event()
        self._stopping = False
        if initial_maintenance is not None and self._snapshot.latest_maintenance is None:
            self._add_maintenance(MaintenanceStatus(**initial_maintenance))
        self._folder = threading.Thread(target=self._fold_in_background, name="tinydb-fold", daemon=True)
        self._folder.start()

    def _load(self, path: Path, default_datastore: str) -> None:
        """Read and check every file, then (only then) replay the journal and fold it in."""
        check_directory(path)
        store_file = read_store_file(path / STORE_FILE)
        if store_file is not None and store_file.default_datastore != default_datastore:
            raise StoreCorrupt(
                f"{path / STORE_FILE}: the store was first opened with the default datastore"
                f" {store_file.default_datastore!r}, and its documents from before datastores belong to it;"
                f" it cannot be opened with {default_datastore!r}: set [datastores] default ="
                f" {store_file.default_datastore!r} again (nothing was changed)"
            )
        self._default = default_datastore
        tables = {name: read_tinydb_file(path / file, FILE_PROBLEMS[name]) for name, file in TABLE_FILES.items()}
        completed_directory = path / COMPLETED_DIRECTORY
        # One segment at a time: all of them as objects at once would take the memory of years of jobs.
        segments = (
            (segment, read_tinydb_file(segment, FILE_PROBLEMS["completed"]))
            for segment in numbered(completed_directory, SEGMENT_NAME)
        )
        journal_directory = path / JOURNAL_DIRECTORY
        journals = numbered(journal_directory, JOURNAL_NAME)
        records, last_record = read_journals(journals, 0 if store_file is None else store_file.folded)
        self._completed = CompletedJobs(completed_directory, default_datastore, segments)
        audit_directory = path / AUDIT_DIRECTORY
        self._audit = AuditTrail(
            audit_directory,
            (
                (segment, read_tinydb_file(segment, audit_problem))
                for segment in numbered(audit_directory, SEGMENT_NAME)
            ),
        )

        def job_key(job: Job) -> str:
            return job["jobId"]

        def stored_target_key(target: Target) -> tuple[str, str]:
            return target_key(in_datastore(target, default_datastore))

        def rdn(datastore: Datastore) -> str:
            return datastore["rdn"]

        self._registry = TableFile(path / TABLE_FILES["datastores"], tables["datastores"], rdn)
        self._inprogress = TableFile(path / TABLE_FILES["inprogress"], tables["inprogress"], job_key)
        self._targets = TableFile(path / TABLE_FILES["targets"], tables["targets"], stored_target_key)
        self._maintenance = TableFile(path / TABLE_FILES["maintenance"], tables["maintenance"])
        self._outbox = TableFile(path / TABLE_FILES["outbox"], tables["outbox"], document_id)
        self._begun = TableFile(path / TABLE_FILES["begun"], tables["begun"], document_id)
        #: Leases of deliveries being sent, by id: (owner, until). In memory alone: one process
        #: owns the directory, and a restart must send again what was being sent.
        self._leases: dict[str, tuple[str, str]] = {}
        for table in (self._registry, self._inprogress, self._targets, self._outbox, self._begun):
            if len(table.ids) != len(table):
                raise corrupt(table.path, "holds two documents with the same key")
        self._tables = {
            "datastores": self._registry,
            "inprogress": self._inprogress,
            "targets": self._targets,
            "maintenance": self._maintenance,
            "outbox": self._outbox,
            "begun": self._begun,
        }
        # Everything is checked: from here on the store may change files.
        for directory in (path, completed_directory, audit_directory, journal_directory):
            for leftover in directory.glob("*" + TMP_SUFFIX):
                leftover.unlink()
        completed_directory.mkdir(exist_ok=True)
        audit_directory.mkdir(exist_ok=True)
        self._publish()
        for record in records:
            self._apply(record)
        # A crash of the release before the journal, between "add to completed" and
        # "remove from in-progress", left a finished job in both: the completed copy is the truth.
        cleanup = Change()
        cleanup.done = [job for job_id, job in self._snapshot.jobs.jobs.items() if job_id in self._completed]
        self._change(cleanup)
        self._journal = Journal(journal_directory, last_record + 1)
        self._fold_guard = threading.Lock()  # the pending fold below, shared with the fold thread
        self._fold_writing = threading.Lock()  # one fold writes files at a time
        self._pending = Fold({}, [])
        self._pending.journals.extend(journals)
        #: The store file as the disk holds it (None before it is first written).
        self._store_file = None if store_file is None else store_file.encoded()
        self._last_change = time.monotonic()
        # A directory from before the store file takes this default, remembered from now on.
        if journals or self._dirty() or store_file is None:
            self._fold()

    @classmethod
    async def open(
        cls, path: str | Path, default_datastore: str, initial_maintenance: MaintenanceStatus | None = None
    ) -> TinyDBStore:
        """Open (creating) the data directory, whose jobs and targets from before
        datastores belong to `default_datastore`; a service also stores
        `initial_maintenance` there when no maintenance status was ever set.
        Raise StoreCorrupt, changing nothing, if a file is damaged or not the store's."""
        return await asyncio.to_thread(cls, Path(path), default_datastore, initial_maintenance)

    # --- snapshots ---------------------------------------------------------------

    def _read(self, document: M) -> M:
        """A stored job or target as the snapshots hold it: in its datastore."""
        return in_datastore(document, self._default)

    def _publish(self) -> None:
        """The snapshot anew from the documents (at start, and after an import)."""
        history = self._maintenance.documents
        latest = dict(history[max(history, key=int)]) if history else None
        jobs: list[Job] = [self._read(job) for job in self._inprogress.documents.values()]
        self._held = {held_target(job): job["jobId"] for job in jobs}
        for job in jobs:
            self._completed.link(job)
        self._snapshot = Snapshot(
            jobs=PublishedJobs.of(jobs),
            targets=Targets.of(map(self._read, self._targets.documents.values())),
            datastores=registry({doc["rdn"]: doc for doc in self._registry.documents.values()}),
            latest_maintenance=cast(MaintenanceStatus | None, latest),
            completed=self._completed.published(),
            retried_by=self._completed.retries(),
        )

    # --- changes: applied to the documents and the snapshot, once journaled -------------

    def _apply(self, operations: list[list[Any]]) -> None:
        change = Change()
        for op in operations:
            JOURNAL_OPERATIONS[op[0]].gather(change, op)
        self._change(change)

    def _change(self, change: Change) -> None:
        """Apply `change` to the documents (which the next fold writes) and publish the
        next snapshot: the parts it leaves alone are the last one's, never copied."""
        last = self._snapshot
        for entry in change.begun:
            self._begun.put(entry)
        for entry in change.audit:
            self._audit.add(entry)
            self._begun.remove(entry["id"])
        for job in change.done:
            self._completed.add(job)
        put = [self._read(stored) for stored in change.jobs]
        for job in put:
            self._inprogress.put(job)
            self._held[held_target(job)] = job["jobId"]
            self._completed.link(job)
        gone = [last.jobs.jobs[job["jobId"]] for job in change.done if job["jobId"] in last.jobs.jobs]
        for job in gone:
            self._inprogress.remove(job["jobId"])
            if self._held.get(held_target(job)) == job["jobId"]:
                del self._held[held_target(job)]
        for target in change.targets:
            self._targets.put(target)
        for rdn, datastore in change.datastores.items():
            if datastore is None:
                self._registry.remove(rdn)
            else:
                self._registry.put(datastore)
        latest = last.latest_maintenance
        for notification_key, notification in change.notifications.items():
            if notification is None:
                self._outbox.remove(notification_key)
            else:
                self._outbox.put(notification)
        for doc_id, status in change.maintenance:
            self._maintenance.put_at(doc_id, status)
            if doc_id == self._maintenance.next_id - 1:  # the newest (a replay may set an older one again)
                latest = cast(MaintenanceStatus, dict(status))
        self._snapshot = Snapshot(
            jobs=last.jobs.changed(put, [job["jobId"] for job in gone]) if put or gone else last.jobs,
            targets=last.targets.with_targets(map(self._read, change.targets)) if change.targets else last.targets,
            datastores=registry({**last.datastores, **change.datastores}) if change.datastores else last.datastores,
            latest_maintenance=latest,
            completed=self._completed.published(),
            retried_by=self._completed.retries(),
        )

    def _commit(self, operations: list[list[Any]]) -> None:
        """One change: its journal record appended and fsynced, then applied. If the
        append fails nothing is applied, and the error says why (StoreFull, StoreUnavailable)."""
        self._journal.append(operations)
        self._apply(operations)
        self._last_change = time.monotonic()
        if self._journal.size >= FOLD_BYTES:
            self._fold_wanted.set()

    # --- folding the journal into the files ---------------------------------------

    def _dirty(self) -> bool:
        return (
            any(table.dirty for table in self._tables.values())
            or self._completed.has_unwritten()
            or self._audit.has_unwritten()
        )

    def _prepare_fold(self) -> Fold | None:
        """On the worker: start the next journal file, and take the content of every
        file that changed; what a fold must write is then pending until written."""
        closed = self._journal.rotate()
        files = {}
        for table in [*self._tables.values(), *self._completed.unwritten(), *self._audit.unwritten()]:
            if table.dirty:
                files[table.path] = table.encoded()
                table.dirty = False
        store_file = StoreFile(self._default, self._journal.last_record).encoded()
        with self._fold_guard:
            if store_file != self._store_file:
                # Read back beside the journal: the records the files were written up to.
                files[self._path / STORE_FILE] = store_file
            self._pending.files.update(files)
            if closed is not None:
                self._pending.journals.append(closed)
            if not self._pending.files and not self._pending.journals:
                return None
            return Fold(dict(self._pending.files), list(self._pending.journals))

    def _write_fold(self) -> bool:
        """Write what is pending, then delete the journal files it covers; True if done.
        On a failure nothing is lost: the journal stays, and the next fold tries again."""
        with self._fold_writing:
            with self._fold_guard:
                fold = Fold(dict(self._pending.files), list(self._pending.journals))
            try:
                for path, content in fold.files.items():
                    write_atomically(path, content, tmp=path.with_name(path.name + TMP_SUFFIX))
                for directory in {path.parent for path in fold.files}:
                    fsync_directory(directory)
                for journal in fold.journals:
                    journal.unlink(missing_ok=True)
                if fold.journals:
                    fsync_directory(fold.journals[0].parent)
            except OSError as exc:
                log.warning("Folding the journal into the files failed (%s); it stays in the journal", exc)
                return False
            with self._fold_guard:
                self._store_file = fold.files.get(self._path / STORE_FILE, self._store_file)
                for path, content in fold.files.items():
                    if self._pending.files.get(path) is content:
                        del self._pending.files[path]
                self._pending.journals[:] = [path for path in self._pending.journals if path not in fold.journals]
            return True

    def _fold(self) -> bool:
        """A whole fold, on the worker (at start, close, import)."""
        return self._prepare_fold() is None or self._write_fold()

    def _fold_in_background(self) -> None:
        """The fold thread: folds when the journal has grown, or has anything after a quiet while."""
        while True:
            woken = self._fold_wanted.wait(IDLE_FOLD_SECONDS)
            self._fold_wanted.clear()
            if self._stopping:
                return
            idle = time.monotonic() - self._last_change >= IDLE_FOLD_SECONDS
            if not (woken or (idle and (self._journal.size or self._pending.files or self._pending.journals))):
                continue
            try:
                if self._executor.submit(self._prepare_fold).result() is not None:
                    self._write_fold()
            except RuntimeError:
                return  # the worker has shut down
            except Exception:
                log.exception("Folding the journal failed; it stays in the journal")

    async def fold(self) -> bool:
        """Fold the journal into the files now; False if writing them failed."""
        return await self._run(self._fold)

    # --- the worker ------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # In the caller's context, so that the worker's log lines carry the request's id.
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def ping(self) -> None:
        """Ready means a change can be stored: the disk is writable, has room, and
        the last append, if it failed, succeeds again (tried with an empty record)."""

        def check() -> None:
            if self._closed:
                raise StoreUnavailable("The store is closed")
            status = os.statvfs(self._path)
            if status.f_flag & os.ST_RDONLY:
                raise StoreUnavailable(f"The data directory {self._path} is on a read-only file system")
            if status.f_bavail * status.f_frsize < MIN_FREE_BYTES:
                raise StoreUnavailable(f"The disk of the data directory {self._path} is full")
            if self._journal.failure is not None:
                try:
                    self._journal.append([])  # an empty record: replayed, it does nothing
                except StoreFull:
                    raise StoreUnavailable(f"The disk of the data directory {self._path} is full") from None
                except (StoreUnavailable, OSError) as exc:
                    raise StoreUnavailable(f"The data directory {self._path} cannot be written: {exc}") from None

        await self._run(check)

    async def close(self) -> None:
        """Fold the journal in, release the files and the directory; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._fold_wanted.set()
        await asyncio.to_thread(self._folder.join)

        def close_files() -> None:
            self._fold()
            self._journal.close()
            self._lock.release()

        await self._run(close_files)
        self._executor.shutdown()

    # --- jobs ------------------------------------------------------------------------

    async def insert_job(self, job: Job) -> None:
        job = copy_document(job)

        def insert() -> None:
            self._refuse_gone(job["datastoreRdn"])
            held = held_target(job)
            if held in self._held:
                raise TargetBusy(held[1])
            self._commit([JOB(job), *self._target_records(job, job["createdAt"])])

        await self._run(insert)

    async def insert_jobs(self, jobs: list[Job]) -> list[StoreError | None]:
        jobs = copy_document(jobs)

        def insert() -> list[StoreError | None]:
            for rdn in {job["datastoreRdn"] for job in jobs}:
                self._refuse_gone(rdn)
            answers: list[StoreError | None] = []
            operations: list[list[Any]] = []
            held = set()
            for job in jobs:
                holds = held_target(job)
                if holds in self._held or holds in held:
                    answers.append(TargetBusy(holds[1]))
                    continue
                held.add(holds)
                answers.append(None)
                operations += [JOB(job), *self._target_records(job, job["createdAt"])]
            if operations:
                self._commit(operations)  # every job stored, and every target, in one write
            return answers

        return await self._run(insert)

    def _refuse_gone(self, rdn: str) -> None:
        """On the worker, in the same step as the insert it guards: the worker runs
        `delete_datastore` too, so no delete falls between this check and the insert."""
        if rdn == self._default:
            return
        registered = self._snapshot.datastores.get(rdn)
        if registered is None or registered["deleted"]:
            raise DatastoreGone(rdn)

    #: The store locks its directory: every change goes through this object.
    sole_writer = True

    @property
    def in_progress_version(self) -> Hashable:
        return self._snapshot.jobs.version

    async def get_job(self, job_id: str) -> Job | None:
        # In-progress first: a job that moves meanwhile is in the completed set by then.
        snapshot = self._snapshot  # one state for both look-ups
        job = snapshot.jobs.copy(job_id)
        return job if job is not None else snapshot.completed_job(job_id)

    def _read_entry(self, entry: JobFacts | Job) -> Job | None:
        """A job of a snapshot as readers get it: in-progress ones copied (the snapshot holds
        the published jobs themselves, which are replaced, never changed), completed ones
        decoded; None when an import --replace emptied the store meanwhile."""
        return self._snapshot.completed_job(entry[1]) if isinstance(entry, tuple) else copy_document(entry)

    async def _snapshot_pages(
        self, snapshot: Callable[[], Sequence[JobFacts | Job]], read: Callable[[Any], Job | None] | None = None
    ) -> AsyncIterator[list[Job]]:
        """Jobs in order, a page at a time, of a snapshot taken on the worker, each as
        `read` gives it (as readers get it, by default)."""
        async for page in pages_of(await self._run(snapshot), read or self._read_entry, PAGE_SIZE):
            yield page

    def find_jobs(self, query: JobQuery) -> AsyncIterator[list[Job]]:
        if query.in_progress_only:  # the executors' polls: read on the loop, without the worker
            jobs = self._snapshot.jobs
            return pages_of(jobs.matching(query), jobs.copy, PAGE_SIZE)

        def snapshot() -> list[JobFacts | Job]:
            jobs = self._snapshot.jobs
            current: list[JobFacts | Job] = [jobs.jobs[job_id] for job_id in jobs.match(query)]
            return sorted([*current, *self._completed.facts(query)], key=entry_order)

        return self._snapshot_pages(snapshot)

    def jobs_for_target(self, datastore: str, name: str) -> AsyncIterator[list[Job]]:
        def snapshot() -> list[JobFacts | Job]:
            current: list[JobFacts | Job] = [
                job
                for job in self._snapshot.jobs.jobs.values()
                if job["datastoreRdn"] == datastore
                and (job["parameters"]["target"] == name or name in manifesto_datasets(job))
            ]
            return sorted([*current, *self._completed.facts_for_dataset(datastore, name)], key=entry_order)

        return self._snapshot_pages(snapshot)

    async def update_job(self, job_id: str, change: JobChange) -> Job:
        at = change_time(change)

        def update() -> Job:
            current = self._snapshot.jobs.jobs.get(job_id)
            if current is None:
                finished = self._snapshot.completed_job(job_id)
                if finished is not None:
                    raise JobFinal(job_id, finished["status"])
                raise JobNotFound(job_id)
            if change.expected_status not in (None, current["status"]):
                raise JobMoved(job_id, change.expected_status, current["status"])
            if not log_has_room(current["log"], change):
                raise JobLogFull(job_id)
            job = apply_change(current, change)
            # The move to the completed set, the job's target and every target a BUMP
            # releases: one record, so a crash leaves all of it or none.
            move = DONE if job["status"] in FINAL_STATUSES else JOB
            self._commit([move(job), *self._target_records(job, at)])
            return copy_document(job)

        return await self._run(update)

    def _target_records(self, job: Job, at: str) -> list[list[Any]]:
        """On the worker: the journal operations that record the targets `job` shows as of
        `at`, each unless its stored target shows a newer job (targets follow job order)."""
        records = []
        for target in targets_to_record(job, at):
            stored = self._snapshot.targets.get(target_key(target))
            if may_replace(target, stored):
                records.append(TARGET(self._next_revision(target, stored)))
        return records

    @staticmethod
    def _next_revision(target: dict[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """`target` as it replaces `stored`: one revision on, kept in the journal and the files."""
        return {**target, "revision": (0 if stored is None else revision_of(cast(Target, stored))) + 1}

    async def target_in_progress(self, datastore: str, name: str) -> bool:
        return any(held_target(job) == (datastore, name) for job in self._snapshot.jobs.jobs.values())

    # --- targets ---------------------------------------------------------------------

    async def get_target(self, datastore: str, name: str) -> Target | None:
        target = self._snapshot.targets.get((datastore, name))
        return None if target is None else shown_target(target)

    def list_targets(self, datastore: str) -> AsyncIterator[list[Target]]:
        # Shown a page at a time, from one snapshot: a copy of every target never exists at once.
        return pages_of(self._snapshot.targets.listed(datastore), shown_target, PAGE_SIZE)

    # --- datastores --------------------------------------------------------------------

    async def add_datastore(self, datastore: Datastore) -> None:
        datastore = copy_document(datastore)

        def add() -> None:
            if datastore["rdn"] in self._snapshot.datastores:
                raise DatastoreTaken(datastore["rdn"])
            self._commit([DATASTORE(datastore)])

        await self._run(add)

    async def get_datastore(self, rdn: str) -> Datastore | None:
        datastore = self._snapshot.datastores.get(rdn)
        return None if datastore is None else copy_document(datastore)

    async def list_datastores(self) -> list[Datastore]:
        return copy_document(list(self._snapshot.datastores.values()))

    async def delete_datastore(self, rdn: str) -> None:
        def delete() -> None:
            # On the worker, like every insert: no job can start between this check and the mark.
            if any(job["datastoreRdn"] == rdn for job in self._snapshot.jobs.jobs.values()):
                raise DatastoreBusy(rdn)
            registered = self._snapshot.datastores.get(rdn)
            if registered is not None:
                self._commit([DATASTORE({**registered, "deleted": True})])

        await self._run(delete)

    async def remove_datastore(self, rdn: str) -> None:
        def remove() -> None:
            if rdn in self._snapshot.datastores:
                self._commit([FORGET(rdn)])

        await self._run(remove)

    # --- maintenance -------------------------------------------------------------------

    def _add_maintenance(self, status: MaintenanceStatus) -> None:
        self._commit([MAINTENANCE(self._maintenance.next_id, dict(status))])

    async def add_maintenance(self, status: MaintenanceStatus) -> None:
        await self._run(self._add_maintenance, MaintenanceStatus(**status))

    async def latest_maintenance(self) -> MaintenanceStatus | None:
        # Kept in memory: the executor reads it before every start of work, and the
        # history only grows.
        latest = self._snapshot.latest_maintenance
        return None if latest is None else cast(MaintenanceStatus, dict(latest))

    async def maintenance_history(self) -> AsyncIterator[list[MaintenanceStatus]]:
        # Taken on the worker, which adds to the history; document ids only grow, so they
        # give the order of insertion even between statuses set in the same microsecond.
        history = await self._run(self._maintenance.in_order)
        async for page in pages_of(history[::-1], dict, PAGE_SIZE):
            yield cast(list[MaintenanceStatus], page)

    async def stats(self) -> StoreStats:
        def count() -> StoreStats:
            snapshot = self._snapshot
            in_progress = Counter((job["datastoreRdn"], job["status"]) for job in snapshot.jobs.jobs.values())
            latest = snapshot.latest_maintenance
            return StoreStats(dict(in_progress), len(self._completed), bool(latest and latest["paused"]))

        return await self._run(count)

    # --- export and import: not journaled, each written out (folded) at once ------------

    def dump_collection(self, name: str) -> AsyncIterator[list[dict[str, Any]]]:
        if name == "completed":  # years of history: decoded a page at a time, as listings are
            return cast(
                AsyncIterator[list[dict[str, Any]]],
                self._snapshot_pages(
                    lambda: sorted(self._completed.facts(JobQuery())),
                    lambda facts: self._snapshot.stored_completed_job(facts[1]),
                ),
            )
        return self._dump_small_collection(name)

    async def _dump_small_collection(self, name: str) -> AsyncIterator[list[dict[str, Any]]]:
        def dump() -> list[Any]:
            if name == "inprogress":
                return sorted(self._snapshot.jobs.jobs.values(), key=job_order)
            if name == "targets":
                return self._snapshot.targets.in_order()
            if name == "datastores":
                return list(self._snapshot.datastores.values())
            if name == "audit":
                return self._audit.in_order()
            return self._maintenance.in_order()

        readers: dict[str, Callable[[Any], Any]] = {"targets": shown_target, "audit": decode_entry}
        read = cast(Callable[[Any], dict[str, Any]], readers.get(name, copy_document))
        async for page in pages_of(await self._run(dump), read, PAGE_SIZE):
            yield page

    async def load_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        documents = copy_document(documents)
        if name in IN_DATASTORES:
            documents = [in_datastore(document, self._default) for document in documents]

        def load() -> None:
            if name == "inprogress":
                jobs = cast(list[Job], documents)
                refuse_repeats(map(held_target, jobs), self._held, lambda key: TargetBusy(key[1]))
                self._apply([JOB(job) for job in jobs])
            elif name == "datastores":
                refuse_repeats((datastore["rdn"] for datastore in documents), self._snapshot.datastores, DatastoreTaken)
                self._apply([DATASTORE(datastore) for datastore in documents])
            elif name == "completed":
                for job in cast(list[Job], documents):
                    self._completed.add(job)
                self._snapshot = self._snapshot._replace(
                    completed=self._completed.published(), retried_by=self._completed.retries()
                )
            elif name == "targets":
                self._apply([TARGET(target) for target in documents])
            elif name == "audit":
                self._apply([AUDIT(entry) for entry in documents])
            else:
                for status in documents:
                    self._maintenance.put_at(self._maintenance.next_id, status)
                self._publish()
            if not self._fold():
                raise StoreUnavailable(f"The data directory {self._path} cannot be written")

        await self._run(load)

    async def is_empty(self) -> bool:
        def empty() -> bool:
            return not (len(self._completed) or len(self._audit) or any(len(table) for table in self._tables.values()))

        return await self._run(empty)

    async def clear(self) -> None:
        def truncate_all() -> None:
            if not self._fold():
                raise StoreUnavailable(f"The data directory {self._path} cannot be written")
            for table in self._tables.values():
                table.clear()
            self._completed = CompletedJobs(self._path / COMPLETED_DIRECTORY, self._default, [])
            self._audit = AuditTrail(self._path / AUDIT_DIRECTORY, [])
            for directory in (self._path / COMPLETED_DIRECTORY, self._path / AUDIT_DIRECTORY):
                for path in directory.glob("*.json"):
                    path.unlink()
                fsync_directory(directory)
            self._publish()
            self._fold()

        await self._run(truncate_all)

    @property
    def targets_version(self) -> Hashable:
        return self._snapshot.targets.version

    async def share_part(self, process: str, part: dict[str, Any], forget_before: float) -> list[dict[str, Any]]:
        """The directory lock keeps every other process out: there is nobody to tell."""
        return [part]

    # --- the outbox: kept in outbox.json, every change journaled like any other -----------

    async def add_notifications(self, notifications: list[Notification], limit: int) -> int:
        notifications = copy_document(notifications)

        def add() -> int:
            pending = sum(entry["state"] == "pending" for entry in self._outbox.documents.values())
            room = max(0, limit - pending)
            if notifications[:room]:
                self._commit([NOTIFICATION(entry) for entry in notifications[:room]])
            return len(notifications[room:])

        return await self._run(add)

    async def claim_notification(self, owner: str, now: str, lease_until: str) -> Notification | None:
        def claim() -> Notification | None:
            due = [
                entry
                for entry in self._outbox.documents.values()
                if entry["state"] == "pending"
                and entry["nextAttemptAt"] <= now
                and self._leases.get(entry["id"], ("", ""))[1] <= now
            ]
            if not due:
                return None
            entry = min(due, key=lambda entry: (entry["nextAttemptAt"], entry["createdAt"]))
            self._leases[entry["id"]] = (owner, lease_until)
            return cast(Notification, copy_document(entry))

        return await self._run(claim)

    async def settle_notification(self, owner: str, notification: Notification, keep: int) -> None:
        notification = copy_document(notification)

        def settle() -> None:
            if self._leases.get(notification["id"], ("",))[0] != owner:
                return
            del self._leases[notification["id"]]
            operations = [NOTIFICATION(notification)]
            if notification["state"] != "pending":
                final = sorted(
                    (entry for entry in self._outbox.documents.values() if entry["state"] != "pending"),
                    key=lambda entry: entry["finishedAt"] or "",
                )
                if notification["id"] not in {entry["id"] for entry in final}:
                    final.append(notification)
                operations += [NOTIFICATION_GONE(entry["id"]) for entry in final[: max(0, len(final) - keep)]]
            self._commit(operations)

        await self._run(settle)

    async def recent_notifications(self, limit: int) -> list[Notification]:
        def recent() -> list[Notification]:
            shown = sorted(self._outbox.documents.values(), key=lambda entry: entry["createdAt"], reverse=True)
            return cast(list[Notification], copy_document(shown[:limit]))

        return await self._run(recent)

    # --- the audit trail ---------------------------------------------------------------

    async def begin_audit(self, entry: AuditEntry) -> None:
        entry = copy_document(entry)
        await self._run(self._commit, [AUDIT_BEGUN(entry)])

    async def add_audit(self, entry: AuditEntry) -> None:
        entry = copy_document(entry)
        await self._run(self._commit, [AUDIT(entry)])

    async def finish_begun_audit(self, before: str) -> int:
        def finish() -> int:
            begun = [entry for entry in self._begun.documents.values() if entry["at"] < before]
            appended = sum(entry["id"] not in self._audit for entry in begun)
            if begun:
                self._commit([AUDIT(entry) for entry in begun])  # one already in the trail is not added twice
            return appended

        return await self._run(finish)

    async def audit_entries(self, query: AuditQuery) -> AsyncIterator[list[AuditEntry]]:
        # Matched on the worker, which alone holds the trail; decoded a page at a time.
        matched = await self._run(self._audit.matching, query)
        async for page in pages_of(matched, decode_entry, PAGE_SIZE):
            yield page


def decode_entry(encoded: bytes) -> AuditEntry:
    return cast(AuditEntry, orjson.loads(encoded))


def entry_order(entry: JobFacts | Job) -> tuple[str, str]:
    return (entry[0], entry[1]) if isinstance(entry, tuple) else job_order(entry)


def empty_directory(path: Path) -> str:
    """Remove the store's files from the data directory without reading any, under its
    lock (`import --replace` on a store that does not open); what it removed. Only the
    files the store writes go: anything else in the directory is the operator's."""
    if not path.exists():
        return f"the data directory {path} does not exist yet: nothing to remove"
    if not path.is_dir():
        raise StoreCorrupt(f"{path} is not a directory, where the data directory must be")
    lock = DirectoryLock(path / LOCK_FILE)
    removed: list[str] = []
    try:
        for name in (*TABLE_FILES.values(), STORE_FILE):
            for candidate in (path / name, path / (name + TMP_SUFFIX)):
                if candidate.is_symlink() or (candidate.exists() and not candidate.is_dir()):
                    candidate.unlink()
                    removed.append(candidate.name)
        for directory, pattern in (
            (path / COMPLETED_DIRECTORY, SEGMENT_NAME),
            (path / AUDIT_DIRECTORY, SEGMENT_NAME),
            (path / JOURNAL_DIRECTORY, JOURNAL_NAME),
        ):
            if not directory.is_dir():
                continue
            files = [
                entry
                for entry in directory.iterdir()
                if pattern.fullmatch(entry.name.removesuffix(TMP_SUFFIX)) and not entry.is_dir()
            ]
            for entry in files:
                entry.unlink()
            if files:
                fsync_directory(directory)
                removed.append(f"{len(files)} file(s) of {directory.name}/")
        fsync_directory(path)
    finally:
        lock.release()
    return (
        f"emptied the TinyDB store in {path}: removed {', '.join(removed) if removed else 'nothing, it held no files'}"
    )
