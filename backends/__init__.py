"""Storage backends for job-service; `open_store` is the one place that picks one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

from marshmallow import ValidationError, fields, validate

from .base import (
    COLLECTIONS,
    DATASTORE,
    DATASTORE_OPERATIONS,
    FINAL_STATUSES,
    KEYS_OPERATIONS,
    MAX_LOG_CHARACTERS,
    NOTIFICATION_STATES,
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
    JobMoved,
    JobNotFound,
    JobQuery,
    LogEntry,
    MaintenanceStatus,
    MalformedDocument,
    Notification,
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
    "NOTIFICATION_STATES",
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
    "JobMoved",
    "JobNotFound",
    "JobQuery",
    "LogEntry",
    "MaintenanceStatus",
    "MalformedDocument",
    "MongoDBOptions",
    "Notification",
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
    "setting",
    "targets_of",
]


def setting(default: Any, reader: Any, meaning: str) -> Any:
    """A key of the configuration file, declared once as a dataclass field: its default
    (`dataclasses.MISSING` for a key that must be given),
    the marshmallow field that reads and checks it (the service derives its schema from
    these), and what it means."""
    metadata = {"field": reader, "meaning": meaning}
    if default is MISSING:  # a key every table must give: no default
        return field(metadata=metadata)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default.copy(), metadata=metadata)
    return field(default=default, metadata=metadata)


def write_concern(value: Any) -> str | int:
    """`[storage.mongodb] write_concern`: "majority" or a number of members, at least 1."""
    if value == "majority" or (type(value) is int and value >= 1):
        concern: str | int = value
        return concern
    raise ValidationError('Must be "majority" or a number of members (1 or more).')


@dataclass(frozen=True)
class TinyDBOptions:
    """`[storage.tinydb]`: the data directory, which one process owns."""

    path: str = setting("data", fields.String(), "the data directory, which one process owns")


@dataclass(frozen=True)
class MongoDBOptions:
    """`[storage.mongodb]`, with the credentials that come from the environment (no keys of the file)."""

    url: str = setting("mongodb://localhost:27017", fields.String(), "the server (env MONGODB_URL)")
    database: str = setting("jobdb", fields.String(), "the database")
    timeout_seconds: float = setting(
        5.0,
        fields.Float(validate=validate.Range(min=0, min_inclusive=False)),
        "how long a request waits for an unreachable server before its 503",
    )
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    write_concern: str | int = setting(
        "majority",
        fields.Function(deserialize=write_concern),
        'whose acknowledgement a write waits for: "majority" (which a failover never rolls back) or a number',
    )
    read_concern: str = setting(
        "majority",
        fields.String(validate=validate.OneOf(["majority", "local", "linearizable"])),
        'what reads see: "majority" (nothing a failover can roll back), "local" or "linearizable"',
    )


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
