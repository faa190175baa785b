"""Storage backends for job-service; `open_store` is the one place that picks one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .base import (
    COLLECTIONS,
    DATASTORE,
    DATASTORE_OPERATIONS,
    FINAL_STATUSES,
    KEYS_OPERATIONS,
    MAX_LOG_CHARACTERS,
    OPERATIONS,
    RELEASE_STATUSES,
    REQUIRED_BY_OPERATION,
    STATUSES,
    Datastore,
    DatastoreBusy,
    DatastoreGone,
    DatastoreTaken,
    Job,
    JobChange,
    JobFinal,
    JobLogFull,
    JobNotFound,
    JobQuery,
    LogEntry,
    MaintenanceStatus,
    MalformedDocument,
    Store,
    StoreAnswer,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreStats,
    StoreUnavailable,
    Target,
    TargetBusy,
    User,
    change_time,
    revision_of,
    targets_of,
)

__all__ = [
    "COLLECTIONS",
    "DATASTORE",
    "DATASTORE_OPERATIONS",
    "FINAL_STATUSES",
    "KEYS_OPERATIONS",
    "MAX_LOG_CHARACTERS",
    "OPERATIONS",
    "RELEASE_STATUSES",
    "REQUIRED_BY_OPERATION",
    "STATUSES",
    "Datastore",
    "DatastoreBusy",
    "DatastoreGone",
    "DatastoreTaken",
    "Job",
    "JobChange",
    "JobFinal",
    "JobLogFull",
    "JobNotFound",
    "JobQuery",
    "LogEntry",
    "MaintenanceStatus",
    "MalformedDocument",
    "MongoDBOptions",
    "Store",
    "StoreAnswer",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreStats",
    "StoreUnavailable",
    "Target",
    "TargetBusy",
    "TinyDBOptions",
    "User",
    "change_time",
    "open_store",
    "revision_of",
    "targets_of",
]


@dataclass(frozen=True)
class TinyDBOptions:
    """`[storage.tinydb]`: the data directory, which one process owns."""

    path: str = "data"


@dataclass(frozen=True)
class MongoDBOptions:
    """`[storage.mongodb]`, with the credentials that come from the environment."""

    url: str = "mongodb://localhost:27017"
    database: str = "jobdb"
    #: How long a request waits for an unreachable server before its 503.
    timeout_seconds: float = 5.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: Whose acknowledgement a write waits for: "majority" (which a failover never rolls back) or a number of members.
    write_concern: str | int = "majority"
    #: What reads see: "majority" (nothing a failover can roll back), "local" or "linearizable".
    read_concern: str = "majority"


async def open_store(
    options: TinyDBOptions | MongoDBOptions,
    default_datastore: str,
    initial_maintenance: MaintenanceStatus | None = None,
    on_malformed: Callable[[str], None] | None = None,
) -> Store:
    """Open the backend that `options` configure, whose documents from before
    datastores belong to `default_datastore`. A serving process passes the
    maintenance status to store when none ever was; the commands pass none.
    `on_malformed(collection)` is called each time a read meets a malformed
    document (MongoDB's; TinyDB refuses to open a store that holds one)."""
    if isinstance(options, TinyDBOptions):
        from .tinydb import TinyDBStore

        return await TinyDBStore.open(options.path, default_datastore, initial_maintenance)
    from .mongo import MongoStore

    return await MongoStore.open(
        options.url,
        options.database,
        options.timeout_seconds,
        options.username,
        options.password,
        write_concern=options.write_concern,
        read_concern=options.read_concern,
        default_datastore=default_datastore,
        initial_maintenance=initial_maintenance,
        on_malformed=on_malformed,
    )
