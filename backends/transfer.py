"""Moving every document between stores: `job-service export` and `job-service import`.

It works through the storage protocol alone, so an export of any backend imports
into any other. The file is JSON Lines, one `{"collection", "document"}` a line,
documents exactly as the API shows them.

Every document that crosses, exported, imported or adopted, is judged by one set of
rules (`Rules`, with `Whole` for what no document shows alone): the API's own schemas,
the shape every reader relies on (PROBLEMS), and what the stores' rules rest on. An
import reads its file twice, once to judge every line and once to load it, so that a
file of years of history is refused before anything is written and never held whole.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import orjson
from marshmallow import Schema

from . import MongoDBOptions, TinyDBOptions, open_store
from .base import (
    COLLECTIONS,
    FINAL_STATUSES,
    IN_DATASTORES,
    MAX_LOG_CHARACTERS,
    PROBLEMS,
    Store,
    StoreError,
    in_datastore,
    log_characters,
    parse_json,
)

#: Documents per `load_collection` call: a batch of jobs with their logs is a few
#: megabytes, and a call's own cost (TinyDB writes its files once per call) is spread
#: over many documents.
BATCH = 1000
#: The largest document, as JSON, that a store takes: half of MongoDB's 16 MiB, whose
#: BSON takes more bytes than JSON for the same document; a job the API made (its log
#: bounded by MAX_LOG_CHARACTERS, its other values by the body limit) is far smaller.
MAX_DOCUMENT_BYTES = 8 << 20


class TransferError(Exception):
    """An export or import that cannot be done; its text is the one line printed."""


def json_problem(document: Any) -> str | None:
    """Where `document` holds a value that JSON has not (bytes, a BSON binary or date,
    text that was not UTF-8, NaN), if anywhere: no store could keep it, nor a client read it."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        path, value = pending.pop()
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return f"{path or 'the document'}: the key {key!r:.80} is not text"
                pending.append((f"{path}.{key}" if path else key, item))
        elif kind is list:
            pending.extend((f"{path}.{index}", item) for index, item in enumerate(value))
        elif kind is float:
            if not math.isfinite(value):
                return f"{path}: {value!r} is not a JSON number"
        elif kind not in (str, int, bool, type(None)):
            return f"{path}: {value!r:.80} is not a JSON value (text, number, true, false, null, list or object)"
    return None


@dataclass(frozen=True)
class Rules:
    """How the service judges each kind of document: its API's schemas, and what they
    leave open that a document it serves must still respect. The service gives them, so
    that export, import and adoption keep exactly the rules its API keeps."""

    job: Schema
    target: Schema
    maintenance: Schema
    datastore: Schema
    audit: Schema
    statuses: frozenset[str]
    is_dataset_name: Callable[[object], bool]
    is_rdn: Callable[[object], bool]
    #: Rdns that are routes of their own (`/datastores/rdns`), which no datastore may have.
    reserved_rdns: frozenset[str]
    #: Marshmallow's error messages as one line.
    describe: Callable[[Any], str]

    def problem(self, collection: str, document: Any) -> str | None:
        """What keeps `document` from being one of `collection` as the API serves it; None if nothing.
        A job or target without `datastoreRdn` is judged as the caller gives it (in the default one)."""
        problem = json_problem(document) or PROBLEMS[collection](document)
        if problem is not None:
            return problem
        if collection in ("inprogress", "completed"):
            problem = self._job_problem(document, final=collection == "completed")
        else:
            problem = {
                "targets": self._target_problem,
                "maintenance": self._maintenance_problem,
                "datastores": self._datastore_problem,
                "audit": self._audit_problem,
            }[collection](document)
        if problem is None and (size := len(orjson.dumps(document))) > MAX_DOCUMENT_BYTES:
            problem = f"it is {size:,} bytes as JSON, over the {MAX_DOCUMENT_BYTES:,} a stored document may be"
        return problem

    def _job_problem(self, job: Mapping[str, Any], final: bool) -> str | None:
        errors = self.job.validate(job)
        if errors:
            return self.describe(errors)
        status = job["status"]
        if status not in self.statuses:
            return f"status: {status!r} is not a job status"
        if (status in FINAL_STATUSES) != final:
            kind = "a completed job" if final else "a job in progress"
            return f"status: {status!r} is {'not ' if final else ''}a final status, as {kind}'s must be"
        if not self.is_rdn(job["datastoreRdn"]):
            return f"datastoreRdn: {job['datastoreRdn']!r} is not a datastore rdn"
        if not final and log_characters(job["log"]) > MAX_LOG_CHARACTERS:
            return (
                f"log: its lines hold {log_characters(job['log']):,} characters, over the"
                f" {MAX_LOG_CHARACTERS:,} of a job in progress (it could never move on)"
            )
        return None

    def _target_problem(self, target: Mapping[str, Any]) -> str | None:
        errors = self.target.validate(target)
        if errors:
            return self.describe(errors)
        if not self.is_dataset_name(target["name"]):
            return f"name: {target['name']!r} is not a valid dataset name"
        if target["status"] not in self.statuses:
            return f"status: {target['status']!r} is not a job status"
        if not self.is_rdn(target["datastoreRdn"]):
            return f"datastoreRdn: {target['datastoreRdn']!r} is not a datastore rdn"
        return None

    def _maintenance_problem(self, status: Mapping[str, Any]) -> str | None:
        errors = self.maintenance.validate(status)
        return self.describe(errors) if errors else None

    def _audit_problem(self, entry: Mapping[str, Any]) -> str | None:
        errors = self.audit.validate(entry)
        if errors:
            return self.describe(errors)
        if entry["datastoreRdn"] is not None and not self.is_rdn(entry["datastoreRdn"]):
            return f"datastoreRdn: {entry['datastoreRdn']!r} is not a datastore rdn"
        return None

    def _datastore_problem(self, datastore: Mapping[str, Any]) -> str | None:
        # `deleted` is the registry's, not the API's: PROBLEMS checks it.
        errors = self.datastore.validate({name: value for name, value in datastore.items() if name != "deleted"})
        if errors:
            return self.describe(errors)
        if datastore["rdn"] in self.reserved_rdns:
            return f"rdn: {datastore['rdn']} is the name of a route, not an rdn a datastore may have"
        if not PurePosixPath(datastore["directory"]).is_absolute():
            return f"directory: {datastore['directory']!r} is not an absolute path"
        return None


class Whole:
    """The rules no document shows alone, over all the documents of an export: one
    registration per rdn, one target per name, one job in progress per target of a
    datastore, none in a deleted datastore, and every job and target in a datastore
    that is there. It keeps only what is small (datastores, targets, jobs in progress),
    each with where it was found (`where`: a line of the file, say), never the history."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.deleted: dict[str, bool] = {}
        self.targets: set[tuple[str, str]] = set()
        self.held: dict[tuple[str, str], str] = {}
        #: The audit entries' ids: the trail of human actions, far smaller than the history.
        self.audit: set[str] = set()
        #: Each datastore a job or target names, with the first place that names it.
        self.named: dict[str, str] = {}

    def problem(self, collection: str, document: Mapping[str, Any], where: str) -> str | None:
        """What `document`, sound by itself, breaks of the rules with the documents before it."""
        if collection == "datastores":
            if document["rdn"] in self.deleted:
                return f"the datastore {document['rdn']} is registered twice"
            if document["rdn"] == self.default and document["deleted"]:
                return f"the datastore {document['rdn']} is the default datastore, which cannot be deleted"
            self.deleted[document["rdn"]] = document["deleted"]
        elif collection == "targets":
            key = (document["datastoreRdn"], document["name"])
            if key in self.targets:
                return f"a second target {key[1]} of datastore {key[0]}"
            self.targets.add(key)
        elif collection == "inprogress":
            key = (document["datastoreRdn"], document["parameters"]["target"])
            if key in self.held:
                return (
                    f"a second job in progress on target {key[1]} of datastore {key[0]} (the first: {self.held[key]}):"
                    " one job in progress per target"
                )
            self.held[key] = where
        elif collection == "audit":
            if document["id"] in self.audit:
                return f"a second audit entry {document['id']}"
            self.audit.add(document["id"])
        if collection in IN_DATASTORES:
            self.named.setdefault(document["datastoreRdn"], where)
        return None

    def problems(self) -> Iterator[str]:
        """What breaks the rules once every document is known, each with where it was found."""
        for rdn, where in self.named.items():
            if rdn != self.default and rdn not in self.deleted:
                yield f"{where}: its datastore {rdn} is neither the default datastore nor registered"
        for (rdn, target), where in self.held.items():
            if self.deleted.get(rdn) and rdn != self.default:
                yield f"{where}: a job in progress on target {target} of datastore {rdn}, which is deleted"


def in_default_datastore(collection: str, document: Any, default: str) -> Any:
    """A job or target of an export from before datastores belongs to the default datastore."""
    return in_datastore(document, default) if collection in IN_DATASTORES and isinstance(document, dict) else document


def document_name(collection: str, document: Mapping[str, Any]) -> str:
    """A document as an operator finds it in the store."""
    if collection in ("inprogress", "completed"):
        return f"{collection} job {document.get('jobId')!r}"
    if collection == "targets":
        return f"target {document.get('name')!r} of datastore {document.get('datastoreRdn')}"
    if collection == "datastores":
        return f"datastore {document.get('rdn')!r}"
    if collection == "audit":
        return f"audit entry {document.get('id')!r}"
    return f"maintenance status of {document.get('timestamp')!r}"


async def export_documents(
    options: TinyDBOptions | MongoDBOptions, default_datastore: str, path: Path, rules: Rules
) -> int:
    """Write every document of the store to `path` as JSON Lines; how many. A document
    that the import would refuse stops the export, naming it, and leaves no file: an
    export is a backup, and one that cannot be imported again is none."""
    malformed: list[str] = []
    store = await open_store(options, default_datastore, on_malformed=malformed.append)
    whole = Whole(default_datastore)
    count = 0
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for collection in COLLECTIONS:
                async for page in store.dump_collection(collection):
                    for document in page:
                        # Without the store's own bookkeeping, which is not the job's.
                        exported = {key: value for key, value in document.items() if key != "revision"}
                        name = document_name(collection, exported)
                        problem = rules.problem(collection, exported) or whole.problem(collection, exported, name)
                        if problem is not None:
                            raise TransferError(f"cannot export {name}: {problem}; fix it in the store first")
                        line = {"collection": collection, "document": exported}
                        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
                        count += 1
                if malformed:
                    raise TransferError(
                        f"cannot export: {len(malformed)} document(s) of {collection} are malformed (the log names"
                        " them); fix them in the store first"
                    )
            for problem in whole.problems():
                raise TransferError(f"cannot export {problem}; fix it in the store first")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        await store.close()
    return count


def export_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The lines of an export file, one at a time: (line number, collection, document)."""
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
                yield number, line["collection"], line["document"]
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None


def check_export(path: Path, default_datastore: str, rules: Rules) -> int:
    """Judge every line of an export file before anything is written: the first bad one
    is refused, naming its line number and what is wrong. How many documents it holds."""
    whole = Whole(default_datastore)
    count = 0
    for number, collection, document in export_lines(path):
        document = in_default_datastore(collection, document, default_datastore)
        where = f"{path}:{number}"
        problem = rules.problem(collection, document) or whole.problem(collection, document, where)
        if problem is not None:
            raise TransferError(f"{where}: {collection}: {problem}")
        count += 1
    for problem in whole.problems():
        raise TransferError(problem)
    return count


async def empty_store(options: TinyDBOptions | MongoDBOptions) -> str:
    """Empty the configured store without opening it (one that holds what it cannot work
    with does not open); what it removed, for the operator."""
    if isinstance(options, TinyDBOptions):
        from .tinydb import empty_directory

        return empty_directory(Path(options.path))
    from .mongo import empty_database

    return await empty_database(
        options.url, options.database, options.timeout_seconds, options.username, options.password
    )


async def open_destination(
    options: TinyDBOptions | MongoDBOptions, default_datastore: str, replace: bool, say: Callable[[str], None]
) -> Store:
    """The store an import writes to, open and empty: emptied first when `replace` (saying
    what was removed), else refused unless it is empty, so that no import mixes with
    what a store holds."""
    if replace:
        say(await empty_store(options))
    store = await open_store(options, default_datastore)
    try:
        if not replace and not await store.is_empty():
            raise TransferError("the destination store is not empty; add --replace to empty it first")
    except BaseException:
        await store.close()
        raise
    return store


async def fill_or_empty(store: Store, fill: Awaitable[None]) -> None:
    """Await `fill`, and if it fails on the way, empty the store again: it was empty before.
    A store is never left half-imported without the operator being told."""
    try:
        await fill
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, TransferError | StoreError) else f"{type(exc).__name__}: {exc}"
        try:
            await store.clear()
        except StoreError:
            raise TransferError(f"{reason}; the store holds part of the import: run it again with --replace") from exc
        if isinstance(exc, Exception):
            raise TransferError(f"{reason}; nothing was imported") from exc
        raise


async def load_export(store: Store, path: Path, default_datastore: str) -> None:
    """The lines of a checked export into `store`, a batch of each collection at a time."""
    pending: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, collection, document in export_lines(path):
        batch = pending[collection]
        batch.append(in_default_datastore(collection, document, default_datastore))
        if len(batch) >= BATCH:
            await store.load_collection(collection, pending.pop(collection))
    for collection, batch in pending.items():
        await store.load_collection(collection, batch)


async def import_documents(
    options: TinyDBOptions | MongoDBOptions,
    default_datastore: str,
    path: Path,
    replace: bool,
    rules: Rules,
    out: TextIO = sys.stdout,
) -> int:
    """Load an export into the store, which must be empty unless `replace`; how many.
    Jobs and targets of an export from before datastores go to `default_datastore`."""
    count = check_export(path, default_datastore, rules)
    store = await open_destination(options, default_datastore, replace, lambda line: print(line, file=out))
    try:
        await fill_or_empty(store, load_export(store, path, default_datastore))
    finally:
        await store.close()
    return count
