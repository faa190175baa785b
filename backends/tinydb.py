"""The embedded default: TinyDB on files that survive a crash at any instant.

Each collection is its own TinyDB file, and the completed set, which grows for
years, is a series of segment files of which only the newest is ever written:
no write costs more as history grows. TinyDB itself is neither thread-safe nor
indexed, so every change runs on one dedicated worker thread, which serialises
them ("check the target is free, then insert" is atomic) and keeps file I/O off
the event loop. What the hot reads need (a job by id, the in-progress jobs, the
targets, the datastores) the worker also publishes as in-memory snapshots that
are replaced, never changed, so the event loop reads them without waiting for the
worker.

A data directory written before datastores existed holds jobs and targets without
`datastoreRdn`: each is given the default datastore as it is read into memory, so
opening such a directory rewrites nothing, and a document gains the field on disk
only when it is next written anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import functools
import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage

from .base import (
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
    StoreAnswer,
    StoreLocked,
    StoreStats,
    Target,
    TargetBusy,
    copy_document,
    job_order,
    manifesto_datasets,
    revision_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Mapping[str, Any])
LOCK_FILE = "job-service.lock"
TMP_SUFFIX = ".tmp"
#: Jobs per completed segment: a completion rewrites at most this many.
SEGMENT_SIZE = 500
#: Jobs decoded per step of a listing, so a listing of years of history never
#: holds every job as objects at once.
JOBS_PER_STEP = 500
#: The collections whose documents belong to a datastore.
IN_DATASTORES = frozenset({"inprogress", "completed", "targets"})


def fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable: the new name lives in the directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file behind.

    TinyDB's JSONStorage truncates and rewrites its file in place, so a crash
    mid-write loses the whole database. Here each write goes to a temporary
    file that is fsynced and renamed over the old one: the file on disk is
    always either the previous state or the new one. The last state is kept in
    memory, since TinyDB reads the storage before every single operation.
    """

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
        tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        try:
            with open(tmp, "wb") as file:
                file.write(orjson.dumps(data))
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self._path)
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
        self._file = open(path, "a+")  # noqa: SIM115 - held open: the lock lives as long as the file
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


def apply_change(job: Job, change: JobChange) -> Job:
    """The job as `change` leaves it, one revision on: a new dict, sharing nothing it changes with `job`."""
    job = Job(**job)
    job["log"] = [*job["log"], *copy_document(change.log)]
    job["revision"] = revision_of(job) + 1
    if change.status is not None:
        job["status"] = change.status
    if change.description is not None:
        job["parameters"] = {**job["parameters"], "description": change.description}
    return job


def in_datastore(document: M, default: str) -> M:
    """`document` as read today: a job or target written before datastores existed
    belongs to the default datastore. A new dict when it lacks one; never changed in place."""
    return document if "datastoreRdn" in document else cast(M, {**document, "datastoreRdn": default})


def held_target(job: Job) -> tuple[str, str]:
    """What an in-progress job holds: its target, in its datastore."""
    return job["datastoreRdn"], job["parameters"]["target"]


def target_key(target: Mapping[str, Any]) -> tuple[str, str]:
    return target["datastoreRdn"], target["name"]


def refuse_repeats(keys: Iterable[K], taken: Iterable[K], refusal: Callable[[K], StoreAnswer]) -> None:
    """Raise `refusal` of the first key already `taken` or repeated: an import keeps
    the rules that inserting one document at a time keeps."""
    seen = set(taken)
    for key in keys:
        if key in seen:
            raise refusal(key)
        seen.add(key)


def wanted(datastore: str, status: str, operation: str, query: JobQuery) -> bool:
    if query.datastore is not None and datastore != query.datastore:
        return False
    if query.status is not None and status != query.status:
        return False
    return query.operations is None or operation in query.operations


class JobFacts(NamedTuple):
    """What queries filter and sort completed jobs on, kept beside their JSON."""

    created_at: str
    job_id: str
    datastore: str
    status: str
    operation: str
    target: str


def facts_of(job: Job) -> JobFacts:
    parameters = job["parameters"]
    # Datastores, statuses, operations and targets repeat across history: one string object each.
    datastore, status, operation, target = (
        sys.intern(value)
        for value in (job["datastoreRdn"], job["status"], parameters["operation"], parameters["target"])
    )
    return JobFacts(job["createdAt"], job["jobId"], datastore, status, operation, target)


class CompletedJobs:
    """The completed set: append-only segments of at most SEGMENT_SIZE jobs, each a
    TinyDB file, and in memory each job's JSON and the facts queries need.

    A finished job never changes, so only the newest segment is ever written and
    a completion costs the same at any history size; memory holds each job as
    its JSON bytes, about a third of its size as Python objects. Reads of one
    job by id are single dict lookups, safe from any thread; everything that
    iterates runs on the store's worker thread. A job from before datastores is
    remembered in `default_datastore`, its file left as it is.
    """

    def __init__(self, directory: Path, default_datastore: str) -> None:
        directory.mkdir(exist_ok=True)
        self._directory = directory
        self._default = default_datastore
        self._load()

    def _load(self) -> None:
        self._encoded: dict[str, bytes] = {}
        self._facts: dict[str, JobFacts] = {}
        #: Job ids by (datastore, dataset): the target and any dataset a BUMP manifesto lists.
        self._by_dataset: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        directory = self._directory
        segments = sorted(directory.glob("*.json"))
        for path in segments[:-1]:
            self._remember(orjson.loads(path.read_bytes()).get("_default", {}).values())
        self._active_path = segments[-1] if segments else self._segment_path(1)
        self._active = TinyDB(self._active_path, storage=AtomicJSONStorage)
        self._remember(self._active.all())

    def _segment_path(self, number: int) -> Path:
        return self._directory / f"{number:08d}.json"

    def _remember(self, jobs: Iterable[Job]) -> None:
        for stored in jobs:
            job = in_datastore(stored, self._default)
            job_id = job["jobId"]
            # A copy of exactly its length: orjson's own bytes keep their whole
            # working buffer, four times the size, for as long as they live.
            self._encoded[job_id] = bytes(memoryview(orjson.dumps(job)))
            facts = self._facts[job_id] = facts_of(job)
            for name in {facts.target, *manifesto_datasets(job)}:
                self._by_dataset[facts.datastore, name].append(job_id)

    def add(self, jobs: list[Job]) -> None:
        """Append `jobs` durably, starting a new segment whenever the newest is full."""
        while jobs:
            if len(self._active) >= SEGMENT_SIZE:
                self._active.close()
                self._active_path = self._segment_path(int(self._active_path.stem) + 1)
                self._active = TinyDB(self._active_path, storage=AtomicJSONStorage)
            room = SEGMENT_SIZE - len(self._active)
            batch, jobs = jobs[:room], jobs[room:]
            self._active.insert_multiple(batch)
            self._remember(batch)

    def get(self, job_id: str) -> Job | None:
        encoded = self._encoded.get(job_id)
        return None if encoded is None else orjson.loads(encoded)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._facts

    def __len__(self) -> int:
        return len(self._facts)

    @staticmethod
    def excluded_by(query: JobQuery) -> bool:
        """Whether no completed job can match `query`, without looking."""
        return query.ignore_completed or (query.status is not None and query.status not in FINAL_STATUSES)

    def facts(self, query: JobQuery) -> list[JobFacts]:
        if self.excluded_by(query):
            return []
        return [
            facts for facts in self._facts.values() if wanted(facts.datastore, facts.status, facts.operation, query)
        ]

    def facts_for_dataset(self, datastore: str, name: str) -> list[JobFacts]:
        return [self._facts[job_id] for job_id in self._by_dataset.get((datastore, name), ())]

    def clear(self) -> None:
        self._active.close()
        for path in self._directory.glob("*.json"):
            path.unlink()
        fsync_directory(self._directory)
        self._load()

    def close(self) -> None:
        self._active.close()


class TinyDBStore:
    """The Store protocol on TinyDB files in one data directory."""

    def __init__(self, path: Path, default_datastore: str, initial_maintenance: MaintenanceStatus | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(path / LOCK_FILE)
        for leftover in path.rglob("*" + TMP_SUFFIX):
            leftover.unlink()
        self._default = default_datastore
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinydb")
        self._registry = TinyDB(path / "datastores.json", storage=AtomicJSONStorage)
        self._inprogress = TinyDB(path / "inprogress.json", storage=AtomicJSONStorage)
        self._targets = TinyDB(path / "targets.json", storage=AtomicJSONStorage)
        self._maintenance = TinyDB(path / "maintenance.json", storage=AtomicJSONStorage)
        self._completed = CompletedJobs(path / "completed", default_datastore)
        self._tables = {
            "datastores": self._registry,
            "inprogress": self._inprogress,
            "targets": self._targets,
            "maintenance": self._maintenance,
        }
        # Snapshots for the event loop: replaced by the worker after each change, never changed.
        self._current: Mapping[str, Job] = MappingProxyType({})
        self._targets_by_key: Mapping[tuple[str, str], Target] = MappingProxyType({})
        self._targets_by_datastore: Mapping[str, tuple[Target, ...]] = MappingProxyType({})
        #: Ordered by rdn.
        self._datastores: Mapping[str, Datastore] = MappingProxyType({})
        self._latest_maintenance: MaintenanceStatus | None = None
        self._out_of_step = False
        self._closed = False
        self._recover()
        if initial_maintenance is not None and self._latest_maintenance is None:
            self._maintenance.insert(dict(initial_maintenance))
            self._latest_maintenance = MaintenanceStatus(**initial_maintenance)

    @classmethod
    async def open(
        cls, path: str | Path, default_datastore: str, initial_maintenance: MaintenanceStatus | None = None
    ) -> TinyDBStore:
        """Open (creating) the data directory, whose jobs and targets from before
        datastores belong to `default_datastore`; a service also stores
        `initial_maintenance` there when no maintenance status was ever set."""
        return await asyncio.to_thread(cls, Path(path), default_datastore, initial_maintenance)

    def _finish_interrupted_moves(self) -> None:
        """A crash between "add to completed" and "remove from in-progress" leaves a
        finished job in both; the completed copy is the truth."""
        moved = [job.doc_id for job in self._inprogress.all() if job["jobId"] in self._completed]
        if moved:
            self._inprogress.remove(doc_ids=moved)

    def _recover(self) -> None:
        """Bring memory in step with the files, as at every open: a write that
        failed (a full disk, say) may have left a job's move to the completed
        set half done, and the snapshots ahead of or behind the files."""
        self._finish_interrupted_moves()
        self._publish()
        self._out_of_step = False

    def _guarded(self, function: Callable[..., T], *args: Any) -> T:
        if self._out_of_step:
            self._recover()
        try:
            return function(*args)
        except StoreAnswer:
            raise  # nothing was written
        except BaseException:
            self._out_of_step = True
            with contextlib.suppress(Exception):  # if the disk still fails, the next operation tries again
                self._recover()
            raise

    def _read(self, document: M) -> M:
        """A stored job or target as the snapshots hold it: the store's own copy, in its datastore."""
        return in_datastore(copy_document(document), self._default)

    def _publish(self) -> None:
        history = self._maintenance.all()
        latest = max(history, key=lambda status: status.doc_id) if history else None
        self._latest_maintenance = None if latest is None else cast(MaintenanceStatus, dict(latest))
        jobs: list[Job] = [self._read(job) for job in self._inprogress.all()]
        self._current = MappingProxyType({job["jobId"]: job for job in jobs})
        targets: list[Target] = [self._read(target) for target in self._targets.all()]
        self._publish_targets({target_key(target): target for target in targets})
        self._publish_datastores({datastore["rdn"]: copy_document(datastore) for datastore in self._registry.all()})

    def _publish_targets(self, targets: dict[tuple[str, str], Target]) -> None:
        self._targets_by_key = MappingProxyType(targets)
        by_datastore: defaultdict[str, list[Target]] = defaultdict(list)
        for datastore, name in sorted(targets):
            by_datastore[datastore].append(targets[datastore, name])
        self._targets_by_datastore = MappingProxyType({rdn: tuple(listed) for rdn, listed in by_datastore.items()})

    def _publish_datastores(self, datastores: dict[str, Datastore]) -> None:
        self._datastores = MappingProxyType({rdn: datastores[rdn] for rdn in sorted(datastores)})

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # In the caller's context, so that the worker's log lines carry the request's id.
        call = functools.partial(contextvars.copy_context().run, self._guarded, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        """Release the files and the directory; closing again does nothing."""
        if self._closed:
            return
        self._closed = True

        def close_files() -> None:
            for table in self._tables.values():
                table.close()
            self._completed.close()
            self._lock.release()

        await self._run(close_files)
        self._executor.shutdown()

    def _doc_id(self, table: TinyDB, matches: Callable[[Mapping[str, Any]], bool]) -> int:
        """The TinyDB id of the one document that `matches` (the tables it is used on are small)."""
        [document] = table.search(matches)
        return document.doc_id

    def _job_doc_id(self, job_id: str) -> int:
        return self._doc_id(self._inprogress, lambda stored: stored["jobId"] == job_id)

    async def insert_job(self, job: Job) -> None:
        job = copy_document(job)

        def insert() -> None:
            held = held_target(job)
            if any(held_target(current) == held for current in self._current.values()):
                raise TargetBusy(held[1])
            self._inprogress.insert(job)
            self._current = MappingProxyType({**self._current, job["jobId"]: job})

        await self._run(insert)

    async def get_job(self, job_id: str) -> Job | None:
        # In-progress first: a job that moves meanwhile is in the completed set by then.
        job = self._current.get(job_id)
        return copy_document(job) if job is not None else self._completed.get(job_id)

    async def _stream(self, snapshot: Callable[[], list[JobFacts | Job]], on_loop: bool = False) -> AsyncIterator[Job]:
        """Jobs in order: in-progress ones as taken, completed ones decoded a step at a time.
        A snapshot of in-progress jobs alone is taken `on_loop`, without the worker."""
        entries = snapshot() if on_loop else await self._run(snapshot)
        for start in range(0, len(entries), JOBS_PER_STEP):
            for entry in entries[start : start + JOBS_PER_STEP]:
                job = self._completed.get(entry.job_id) if isinstance(entry, JobFacts) else entry
                if job is not None:  # None: an import --replace emptied the store meanwhile
                    yield job
            await asyncio.sleep(0)

    def find_jobs(self, query: JobQuery) -> AsyncIterator[Job]:
        def snapshot() -> list[JobFacts | Job]:
            current: list[JobFacts | Job] = [
                copy_document(job)
                for job in self._current.values()
                if wanted(job["datastoreRdn"], job["status"], job["parameters"]["operation"], query)
            ]
            return sorted([*current, *self._completed.facts(query)], key=entry_order)

        return self._stream(snapshot, on_loop=self._completed.excluded_by(query))

    def jobs_for_target(self, datastore: str, name: str) -> AsyncIterator[Job]:
        def snapshot() -> list[JobFacts | Job]:
            current: list[JobFacts | Job] = [
                copy_document(job)
                for job in self._current.values()
                if job["datastoreRdn"] == datastore
                and (job["parameters"]["target"] == name or name in manifesto_datasets(job))
            ]
            return sorted([*current, *self._completed.facts_for_dataset(datastore, name)], key=entry_order)

        return self._stream(snapshot)

    async def update_job(self, job_id: str, change: JobChange) -> Job:
        def update() -> Job:
            current = self._current.get(job_id)
            if current is None:
                finished = self._completed.get(job_id)
                if finished is not None:
                    raise JobFinal(job_id, finished["status"])
                raise JobNotFound(job_id)
            job = apply_change(current, change)
            remaining = {key: value for key, value in self._current.items() if key != job_id}
            if job["status"] in FINAL_STATUSES:
                # Completed set first: a crash between the two writes leaves the
                # job in both, which the next open resolves; never in neither.
                self._completed.add([job])
                self._inprogress.remove(doc_ids=[self._job_doc_id(job_id)])
                self._current = MappingProxyType(remaining)
            else:
                self._inprogress.update(job, doc_ids=[self._job_doc_id(job_id)])
                self._current = MappingProxyType({**remaining, job_id: job})
            return copy_document(job)

        return await self._run(update)

    async def target_in_progress(self, datastore: str, name: str) -> bool:
        return any(held_target(job) == (datastore, name) for job in self._current.values())

    async def save_target(self, target: Target) -> None:
        target = copy_document(target)

        def save() -> None:
            key = target_key(target)
            if key in self._targets_by_key:
                self._targets.update(target, doc_ids=[self._target_doc_id(key)])
            else:
                self._targets.insert(target)
            self._publish_targets({**self._targets_by_key, key: target})

        await self._run(save)

    def _target_doc_id(self, key: tuple[str, str]) -> int:
        """A target from before datastores is found in the default datastore too
        (and gains its `datastoreRdn` on disk as it is written)."""
        return self._doc_id(self._targets, lambda stored: target_key(in_datastore(stored, self._default)) == key)

    async def get_target(self, datastore: str, name: str) -> Target | None:
        target = self._targets_by_key.get((datastore, name))
        return None if target is None else copy_document(target)

    async def list_targets(self, datastore: str) -> list[Target]:
        return copy_document(list(self._targets_by_datastore.get(datastore, ())))

    async def add_datastore(self, datastore: Datastore) -> None:
        datastore = copy_document(datastore)

        def add() -> None:
            rdn = datastore["rdn"]
            if rdn in self._datastores:
                raise DatastoreTaken(rdn)
            self._registry.insert(datastore)
            self._publish_datastores({**self._datastores, rdn: datastore})

        await self._run(add)

    async def get_datastore(self, rdn: str) -> Datastore | None:
        datastore = self._datastores.get(rdn)
        return None if datastore is None else copy_document(datastore)

    async def list_datastores(self) -> list[Datastore]:
        return copy_document(list(self._datastores.values()))

    def _datastore_doc_id(self, rdn: str) -> int:
        return self._doc_id(self._registry, lambda stored: stored["rdn"] == rdn)

    async def delete_datastore(self, rdn: str) -> None:
        def delete() -> None:
            # On the worker, like every insert: no job can start between this check and the mark.
            if any(job["datastoreRdn"] == rdn for job in self._current.values()):
                raise DatastoreBusy(rdn)
            registered = self._datastores.get(rdn)
            if registered is not None:
                self._registry.update({"deleted": True}, doc_ids=[self._datastore_doc_id(rdn)])
                self._publish_datastores({**self._datastores, rdn: {**registered, "deleted": True}})

        await self._run(delete)

    async def remove_datastore(self, rdn: str) -> None:
        def remove() -> None:
            if rdn in self._datastores:
                self._registry.remove(doc_ids=[self._datastore_doc_id(rdn)])
                self._publish_datastores({key: value for key, value in self._datastores.items() if key != rdn})

        await self._run(remove)

    async def add_maintenance(self, status: MaintenanceStatus) -> None:
        def add() -> None:
            self._maintenance.insert(dict(status))
            self._latest_maintenance = MaintenanceStatus(**status)

        await self._run(add)

    def _history(self) -> list[MaintenanceStatus]:
        # Document ids only grow, so they give the order of insertion even
        # between statuses set in the same microsecond.
        return [
            cast(MaintenanceStatus, dict(status)) for status in sorted(self._maintenance.all(), key=lambda s: -s.doc_id)
        ]

    async def latest_maintenance(self) -> MaintenanceStatus | None:
        # Kept in memory: the executor reads it before every start of work, and the
        # history only grows.
        latest = self._latest_maintenance
        return None if latest is None else MaintenanceStatus(**latest)

    async def maintenance_history(self) -> list[MaintenanceStatus]:
        return await self._run(self._history)

    async def stats(self) -> StoreStats:
        def count() -> StoreStats:
            in_progress = Counter((job["datastoreRdn"], job["status"]) for job in self._current.values())
            latest = self._latest_maintenance
            return StoreStats(dict(in_progress), len(self._completed), bool(latest and latest["paused"]))

        return await self._run(count)

    async def dump_collection(self, name: str) -> list[dict[str, Any]]:
        def dump() -> list[Any]:
            if name == "completed":
                return [self._completed.get(facts.job_id) for facts in sorted(self._completed.facts(JobQuery()))]
            if name == "inprogress":
                return sorted((copy_document(job) for job in self._current.values()), key=job_order)
            if name == "targets":
                return [copy_document(self._targets_by_key[key]) for key in sorted(self._targets_by_key)]
            if name == "datastores":
                return copy_document(list(self._datastores.values()))
            return [dict(status) for status in sorted(self._maintenance.all(), key=lambda s: s.doc_id)]

        return await self._run(dump)

    async def load_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        documents = copy_document(documents)
        if name in IN_DATASTORES:
            documents = [in_datastore(document, self._default) for document in documents]

        def load() -> None:
            if name == "inprogress":
                taken = map(held_target, self._current.values())
                jobs = cast(list[Job], documents)
                refuse_repeats(map(held_target, jobs), taken, lambda key: TargetBusy(key[1]))
            if name == "datastores":
                refuse_repeats((datastore["rdn"] for datastore in documents), self._datastores, DatastoreTaken)
            if name == "completed":
                self._completed.add(cast(list[Job], documents))
            else:
                self._tables[name].insert_multiple(documents)
            self._publish()

        await self._run(load)

    async def is_empty(self) -> bool:
        def empty() -> bool:
            return not len(self._completed) and not any(len(table) for table in self._tables.values())

        return await self._run(empty)

    async def clear(self) -> None:
        def truncate_all() -> None:
            for table in self._tables.values():
                table.truncate()
            self._completed.clear()
            self._publish()

        await self._run(truncate_all)


def entry_order(entry: JobFacts | Job) -> tuple[str, str]:
    return (entry.created_at, entry.job_id) if isinstance(entry, JobFacts) else job_order(entry)
