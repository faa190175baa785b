"""The embedded default: TinyDB on files that survive a crash at any instant.

Each collection is its own TinyDB file, so a status update rewrites the small
in-progress file and not the years of completed history. TinyDB itself is not
thread-safe and has no unique index; every operation therefore runs on one
dedicated worker thread, which serialises them and keeps file I/O off the event
loop. "Check the target is free, then insert" is atomic because nothing else
runs between the two steps.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import fcntl
import functools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from .base import (
    COLLECTIONS,
    FINAL_STATUSES,
    Job,
    JobChange,
    JobFinal,
    JobNotFound,
    JobQuery,
    MaintenanceStatus,
    StoreLocked,
    StoreStats,
    Target,
    TargetBusy,
    job_order,
    manifesto_datasets,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_FILE = "job-service.lock"
TMP_SUFFIX = ".tmp"


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
                self._data = json.loads(self._path.read_bytes())
            except FileNotFoundError:
                return None
        return self._data

    def write(self, data: dict[str, Any]) -> None:
        tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        try:
            with open(tmp, "wb") as file:
                file.write(json.dumps(data, ensure_ascii=False).encode())
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
    """The job as `change` leaves it (a new dict; `job` is not touched)."""
    job = copy.deepcopy(job)
    if change.status is not None:
        job["status"] = change.status
    if change.description is not None:
        job["parameters"]["description"] = change.description
    job["log"].extend(change.log)
    return job


def matches(job: Job, query: JobQuery) -> bool:
    if query.status is not None and job["status"] != query.status:
        return False
    return query.operations is None or job["parameters"]["operation"] in query.operations


job_field = Query()


class TinyDBStore:
    """The Store protocol on TinyDB files in one data directory."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(path / LOCK_FILE)
        for leftover in path.glob("*" + TMP_SUFFIX):
            leftover.unlink()
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinydb")
        self._dbs = {name: TinyDB(path / f"{name}.json", storage=AtomicJSONStorage) for name in COLLECTIONS}
        self._inprogress = self._dbs["inprogress"]
        self._completed = self._dbs["completed"]
        self._targets = self._dbs["targets"]
        self._maintenance = self._dbs["maintenance"]
        self._finish_interrupted_moves()

    @classmethod
    async def open(cls, path: str | Path) -> TinyDBStore:
        return await asyncio.to_thread(cls, Path(path))

    def _finish_interrupted_moves(self) -> None:
        """A crash between "insert into completed" and "remove from in-progress"
        leaves a finished job in both files; the completed copy is the truth."""
        completed_ids = {job["jobId"] for job in self._completed.all()}
        moved = [job.doc_id for job in self._inprogress.all() if job["jobId"] in completed_ids]
        if moved:
            self._inprogress.remove(doc_ids=moved)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # In the caller's context, so that the worker's log lines carry the request's id.
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        def close_files() -> None:
            for db in self._dbs.values():
                db.close()
            self._lock.release()

        await self._run(close_files)
        self._executor.shutdown()

    async def insert_job(self, job: Job) -> None:
        def insert() -> None:
            target = job["parameters"]["target"]
            if self._inprogress.contains(job_field.parameters.target == target):
                raise TargetBusy(target)
            self._inprogress.insert(job)

        await self._run(insert)

    async def get_job(self, job_id: str) -> Job | None:
        def get() -> Job | None:
            job = self._inprogress.get(job_field.jobId == job_id)
            if job is None:
                job = self._completed.get(job_field.jobId == job_id)
            return None if job is None else dict(job)

        return await self._run(get)

    def _all_jobs(self, include_completed: bool = True) -> list[Job]:
        jobs = self._inprogress.all()
        if include_completed:
            jobs += self._completed.all()
        return jobs

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        def find() -> list[Job]:
            jobs = self._all_jobs(include_completed=not query.ignore_completed)
            return sorted((dict(job) for job in jobs if matches(job, query)), key=job_order)

        return await self._run(find)

    async def jobs_for_target(self, name: str) -> list[Job]:
        def find() -> list[Job]:
            return sorted(
                (
                    dict(job)
                    for job in self._all_jobs()
                    if job["parameters"]["target"] == name or name in manifesto_datasets(job)
                ),
                key=job_order,
            )

        return await self._run(find)

    async def update_job(self, job_id: str, change: JobChange) -> Job:
        def update() -> Job:
            current = self._inprogress.get(job_field.jobId == job_id)
            if current is None:
                finished = self._completed.get(job_field.jobId == job_id)
                if finished is not None:
                    raise JobFinal(job_id, finished["status"])
                raise JobNotFound(job_id)
            job = apply_change(dict(current), change)  # a plain dict: no doc_id to carry over
            if job["status"] in FINAL_STATUSES:
                # Completed set first: a crash between the two writes leaves the
                # job in both files, which the next open resolves; never in none.
                self._completed.insert(job)
                self._inprogress.remove(doc_ids=[current.doc_id])
            else:
                self._inprogress.update(job, doc_ids=[current.doc_id])
            return job

        return await self._run(update)

    async def target_in_progress(self, name: str) -> bool:
        return await self._run(self._inprogress.contains, job_field.parameters.target == name)

    async def save_target(self, target: Target) -> None:
        await self._run(self._targets.upsert, target, job_field.name == target["name"])

    async def get_target(self, name: str) -> Target | None:
        target = await self._run(self._targets.get, job_field.name == name)
        return None if target is None else dict(target)

    async def list_targets(self) -> list[Target]:
        def list_all() -> list[Target]:
            return sorted((dict(target) for target in self._targets.all()), key=lambda t: t["name"])

        return await self._run(list_all)

    async def add_maintenance(self, status: MaintenanceStatus) -> None:
        await self._run(self._maintenance.insert, status)

    def _history(self) -> list[MaintenanceStatus]:
        # Document ids only grow, so they give the order of insertion even
        # between statuses set in the same microsecond.
        return [dict(status) for status in sorted(self._maintenance.all(), key=lambda s: -s.doc_id)]

    async def latest_maintenance(self, initial: MaintenanceStatus) -> MaintenanceStatus:
        def latest() -> MaintenanceStatus:
            history = self._history()
            if history:
                return history[0]
            self._maintenance.insert(initial)
            return dict(initial)

        return await self._run(latest)

    async def maintenance_history(self) -> list[MaintenanceStatus]:
        return await self._run(self._history)

    async def stats(self) -> StoreStats:
        def count() -> StoreStats:
            in_progress = Counter(job["status"] for job in self._inprogress.all())
            history = self._maintenance.all()
            latest = max(history, key=lambda status: status.doc_id) if history else None
            return StoreStats(dict(in_progress), len(self._completed), bool(latest and latest["paused"]))

        return await self._run(count)

    async def dump_collection(self, name: str) -> list[dict[str, Any]]:
        def dump() -> list[dict[str, Any]]:
            documents = self._dbs[name].all()
            if name == "maintenance":
                return [dict(document) for document in sorted(documents, key=lambda d: d.doc_id)]
            order = job_order if name in ("inprogress", "completed") else (lambda target: target["name"])
            return sorted((dict(document) for document in documents), key=order)

        return await self._run(dump)

    async def load_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        await self._run(self._dbs[name].insert_multiple, documents)

    async def is_empty(self) -> bool:
        return await self._run(lambda: not any(len(db) for db in self._dbs.values()))

    async def clear(self) -> None:
        def truncate_all() -> None:
            for db in self._dbs.values():
                db.truncate()

        await self._run(truncate_all)
