"""Storage backends for job-service; `open_store` is the one place that picks one."""

from __future__ import annotations

from typing import Any

from .base import (
    COLLECTIONS,
    FINAL_STATUSES,
    Job,
    JobChange,
    JobFinal,
    JobNotFound,
    JobQuery,
    Store,
    StoreError,
    StoreLocked,
    StoreStats,
    StoreUnavailable,
    TargetBusy,
)

__all__ = [
    "COLLECTIONS",
    "FINAL_STATUSES",
    "Job",
    "JobChange",
    "JobFinal",
    "JobNotFound",
    "JobQuery",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreStats",
    "StoreUnavailable",
    "TargetBusy",
    "open_store",
]


async def open_store(backend: str, options: dict[str, Any]) -> Store:
    """Open the backend named in `[storage] backend` with its own config section."""
    if backend == "tinydb":
        from .tinydb import TinyDBStore

        return await TinyDBStore.open(**options)
    if backend == "mongodb":
        from .mongo import MongoStore

        return await MongoStore.open(**options)
    raise ValueError(f"unknown storage backend {backend!r}")
