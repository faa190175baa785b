"""Moving every document between stores: `job-service export` and `job-service import`.

It works through the storage protocol alone, so an export of any backend imports
into any other. The file is JSON Lines, one `{"collection", "document"}` a line,
documents exactly as the API shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import MongoDBOptions, TinyDBOptions, open_store
from .base import COLLECTIONS, Store, parse_json


class TransferError(Exception):
    """An export or import that cannot be done; its text is the one line printed."""


async def export_documents(options: TinyDBOptions | MongoDBOptions, default_datastore: str, path: Path) -> int:
    """Write every document of the store to `path` as JSON Lines; how many."""
    store = await open_store(options, default_datastore)
    count = 0
    try:
        with open(path, "w", encoding="utf-8") as out:
            for collection in COLLECTIONS:
                async for page in store.dump_collection(collection):
                    for document in page:
                        # Without the store's own bookkeeping, which is not the job's.
                        exported = {key: value for key, value in document.items() if key != "revision"}
                        line = {"collection": collection, "document": exported}
                        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
                        count += 1
    finally:
        await store.close()
    return count


def read_export(path: Path) -> dict[str, list[dict[str, Any]]]:
    """An export file, checked line by line before anything is written."""
    documents: dict[str, list[dict[str, Any]]] = {collection: [] for collection in COLLECTIONS}
    try:
        with open(path, encoding="utf-8") as lines:
            for number, text in enumerate(lines, start=1):
                try:
                    line = parse_json(text)
                except ValueError:
                    raise TransferError(f"{path}:{number}: not a JSON line") from None
                if (
                    not isinstance(line, dict)
                    or line.keys() != {"collection", "document"}
                    or line["collection"] not in COLLECTIONS
                    or not isinstance(line["document"], dict)
                ):
                    raise TransferError(f"{path}:{number}: not a job-service export line")
                documents[line["collection"]].append(line["document"])
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None
    return documents


async def prepare_destination(store: Store, replace: bool) -> None:
    """Every import starts from an empty store: emptied first when `replace`, else
    refused unless it is empty, so that no import mixes with what a store holds."""
    if replace:
        await store.clear()
    elif not await store.is_empty():
        raise TransferError("the destination store is not empty; add --replace to empty it first")


async def import_documents(
    options: TinyDBOptions | MongoDBOptions, default_datastore: str, path: Path, replace: bool
) -> int:
    """Load an export into the store, which must be empty unless `replace`; how many.
    Jobs and targets of an export from before datastores go to `default_datastore`."""
    documents = read_export(path)
    store = await open_store(options, default_datastore)
    try:
        await prepare_destination(store, replace)
        for collection, collection_documents in documents.items():
            await store.load_collection(collection, collection_documents)
    finally:
        await store.close()
    return sum(len(collection_documents) for collection_documents in documents.values())
