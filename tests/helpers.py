"""What tests and the bench share besides fixtures: config files, job documents, HTTP steps.

A plain module, not a test module or conftest, so that any test (and bench/) can import it
without importing another test module.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import tomli_w
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from pymongo import MongoClient

from backends import MongoDBOptions, TinyDBOptions
from job_service import open_configured_store

REPORT: list[str] = []
#: Every status each route (method, path template) answered to the tests' clients in this
#: process (conftest's `observe_status`; under pytest-xdist each worker has its own).
OBSERVED_STATUSES: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
#: Answers every operation may give without saying so: an unexpected failure, and a method the route lacks.
UNDOCUMENTED_EVERYWHERE = frozenset({405, 500})


def report(line: str) -> None:
    """Print `line` at the end of the run: figures and artifact paths CI's log should show."""
    REPORT.append(line)


def documentation_drift(document: dict[str, Any], observed: Mapping[tuple[str, str], set[int]]) -> list[str]:
    """Where the OpenAPI `document` and the statuses `observed` per (method, path) differ: each
    error status an operation documents and was never seen to answer, or answered undocumented."""
    drift = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = {int(status) for status in operation["responses"] if int(status) >= 400}
            seen = {status for status in observed.get((method.upper(), path), ()) if status >= 400}
            for status in sorted((documented ^ seen) - UNDOCUMENTED_EVERYWHERE):
                said = "documented, never observed" if status in documented else "observed, not documented"
                drift.append(f"{method.upper()} {path} {status}: {said}")
    return drift


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write `sections` (TOML tables as dicts) to `path` as TOML; `path`.

    A TOML writer quotes every value: text pasted into a template breaks on a path with a quote.
    """
    path.write_text(tomli_w.dumps(sections))
    return path


def service_config(storage: dict[str, Any], input_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A service's config on `storage` (a `[storage]` section, as the fixture gives), plus `sections`;
    datastores are provisioned in `datastores/` beside the input directory."""
    datastores = {"root": str(input_dir.parent / "datastores")}
    return {"storage": storage, "input": {"dir": str(input_dir)}, "datastores": datastores, **sections}


#: How a text log line begins (the commands log to stdout, beside what they print).
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def said(stdout: str) -> list[str]:
    """What a command printed for a person: its lines that are not log lines."""
    return [line for line in stdout.strip().splitlines() if not LOG_LINE.match(line)]


def run_job_service(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `job-service` command on `config`, to its end (two minutes at most): its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "job_service", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def store_options(storage: dict[str, Any]) -> TinyDBOptions | MongoDBOptions:
    """The options `backends.open_store` takes, for a `[storage]` section as the fixture gives."""
    backend = storage["backend"]
    return TinyDBOptions(**storage[backend]) if backend == "tinydb" else MongoDBOptions(**storage[backend])


#: The platform's JobParameters fields, in its order: its SQLite service stores every one.
PLATFORM_PARAMETERS = (
    "operation",
    "target",
    "bumpManifesto",
    "description",
    "releaseStatus",
    "bumpFromVersion",
    "bumpToVersion",
)


def platform_row_parameters(parameters: dict[str, Any]) -> str:
    """A job's `parameters` as the platform's SQLite service stores them: every field, unset ones null."""
    return json.dumps({name: parameters.get(name) for name in PLATFORM_PARAMETERS})


def bump_job(**overrides: Any) -> dict[str, Any]:
    """A valid BUMP as the admin UI posts it."""
    job = {
        "operation": "BUMP",
        "target": "DATASTORE",
        "description": "Release two datasets",
        "bumpFromVersion": "1.0.0",
        "bumpToVersion": "1.1.0",
        "bumpManifesto": {
            "version": "1.1.0.0",
            "description": "Release two datasets",
            "releaseTime": 1700000000,
            "languageCode": "no",
            "updateType": "MINOR",
            "dataStructureUpdates": [
                {"name": "NEW_DATASET", "description": "first", "operation": "ADD", "releaseStatus": "PENDING_RELEASE"},
                {
                    "name": "OLD_DATASET",
                    "description": "gone",
                    "operation": "REMOVE",
                    "releaseStatus": "PENDING_DELETE",
                },
                {"name": "DRAFT_DATASET", "description": "wip", "operation": "ADD", "releaseStatus": "DRAFT"},
            ],
        },
    }
    job.update(overrides)
    return job


#: The default datastore's rdn when the config does not name one.
DEFAULT_DATASTORE = "local"


def stored_job(
    job_id: str, target: str = "MY_DATASET", status: str = "queued", datastore: str = DEFAULT_DATASTORE
) -> dict[str, Any]:
    """A job document as a store holds it; ids that sort as numbers keep `createdAt` in their order."""
    return {
        "jobId": job_id,
        "datastoreRdn": datastore,
        "status": status,
        "parameters": {"operation": "ADD", "target": target},
        "log": [],
        "createdAt": f"2026-11-29T10:00:00.{job_id[-6:]:0>6}+00:00",
        "createdBy": {"userId": "u", "firstName": "F", "lastName": "L"},
    }


def write_stored_targets(storage: dict[str, Any], *targets: dict[str, Any]) -> None:
    """Write `targets` straight into the store of `storage` (a `[storage]` section, as the
    fixture gives) before it is opened: the TinyDB file or the MongoDB documents as an earlier
    release or a hand edit left them, which no store operation writes (no revision, no job shown)."""
    if storage["backend"] == "tinydb":
        path = Path(storage["tinydb"]["path"])
        path.mkdir(parents=True, exist_ok=True)
        table = {str(doc_id): target for doc_id, target in enumerate(targets, start=1)}
        (path / "targets.json").write_text(json.dumps({"_default": table}))
        return
    mongodb = storage["mongodb"]
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb["url"])
    with client:
        client[mongodb["database"]].targets.insert_many([dict(target) for target in targets])  # it adds _id


async def listed(pages: Any) -> list[dict[str, Any]]:
    """Every document of a store's listing (an async iterator of pages)."""
    return [document async for page in pages for document in page]


async def post_jobs(client: TestClient, *jobs: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/jobs", json={"jobs": list(jobs)})
    assert response.status == 200, await response.text()
    return await response.json()


async def create_job(client: TestClient, **job: Any) -> str:
    """Post one job that must be created; its jobId."""
    [result] = await post_jobs(client, job)
    assert result["msg"] == "CREATED", result
    return result["job_id"]


async def put_job(client: TestClient, job_id: str, **body: Any) -> None:
    response = await client.put(f"/jobs/{job_id}", json=body)
    assert response.status == 200, await response.text()


# --- tokens, as the platform's auth service signs them ---------------------------------

USER = "6f1a0e6c-0000-4000-8000-000000000001"
ADMIN_ROLE = "role/dataadministrator"


class KeyServer:
    """A JWKS endpoint the tests can rotate keys on, counting its fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {"key-1": new_key()}
        self.fetches = 0
        self.down = False

    async def serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.json_response({"message": "unavailable"}, status=503)
        return web.json_response({"keys": [public_jwk(kid, key) for kid, key in self.keys.items()]})


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


def token(key: rsa.RSAPrivateKey, kid: str = "key-1", algorithm: str = "RS256", **claims: Any) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def access_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "sub": USER,
        "aud": "datastore",
        "exp": int(time.time()) + 300,
        "accreditation/role": ADMIN_ROLE,
        "user/uuid": USER,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def info_claims(**overrides: Any) -> dict[str, Any]:
    claims = {"user/uuid": USER, "user/firstName": "Ola", "user/lastName": "Nordmann", "exp": int(time.time()) + 300}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def cookies_for(keys: KeyServer, access: dict | None = None, info: dict | None = None) -> dict[str, str]:
    key = keys.keys["key-1"]
    return {
        "authorization": token(key, **(access_claims() if access is None else access)),
        "user-info": token(key, **(info_claims() if info is None else info)),
    }


class Faulty:
    """A real store some of whose operations are replaced, as a failing backend's would
    behave: `Faulty(store, update_job=raising(StoreFull(...)))`. Every other call goes
    to the real store."""

    def __init__(self, store: Any, **replaced: Any) -> None:
        self.store = store
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced[name] if name in self._replaced else getattr(self.store, name)


def dies_after(operation: str) -> Any:
    """A store operation that is made, and then the process dies: nothing after it runs."""

    def make(store: Any) -> Any:
        async def made_then_dead(*args: Any) -> None:
            await getattr(store, operation)(*args)
            raise asyncio.CancelledError

        return made_then_dead

    return make


def raising(error: Exception) -> Any:
    """An operation that fails with `error` whatever it is asked."""

    async def operation(*args: Any, **kwargs: Any) -> Any:
        raise error

    return operation


def faulty(**replaced: Any) -> Any:
    """An opener for `create_app` (and the `make_client` fixture's `open_store`): the
    configured store, with `replaced` operations, each given the real store first."""

    async def open_faulty(config: Any, on_malformed: Any) -> Faulty:
        store = await open_configured_store(config, on_malformed)
        return Faulty(store, **{name: make(store) for name, make in replaced.items()})

    return open_faulty


# --- a datastore's files, as the platform writes them ---------------------------------


def make_archive(path: Path, *members: str) -> Path:
    """A tar at `path` holding small files named `members` (a name ending in / is a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                data = b"{}"
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def dataset_archive(input_dir: Path, name: str, *, data: bool = True, archived: bool = False) -> Path:
    """`<name>.tar` as an upload of the dataset: its metadata, and data chunks unless `data` is false."""
    folder = input_dir / "archive" if archived else input_dir
    return make_archive(folder / f"{name}.tar", f"{name}.json", *(["chunks/1.parquet"] if data else []))


def update(name: str, operation: str, release_status: str, description: str = "") -> dict[str, str]:
    """One of a version's `dataStructureUpdates`."""
    return {"name": name, "description": description, "operation": operation, "releaseStatus": release_status}


def datastore_version(*updates: dict[str, str], number: str = "1.0.0.0", update_type: str | None = "MINOR") -> dict:
    """A version (or the draft) as the executor writes it."""
    return {
        "version": number,
        "description": "A release",
        "releaseTime": 1700000000,
        "languageCode": "no",
        "dataStructureUpdates": list(updates),
        "updateType": update_type,
    }


def write_version_files(directory: Path, draft: dict, *versions: dict) -> None:
    """A datastore's `datastore/draft_version.json` and `datastore_versions.json` (versions newest first)."""
    folder = directory / "datastore"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "draft_version.json").write_text(json.dumps(draft))
    released = {"name": directory.name, "label": "A datastore", "description": "", "versions": list(versions)}
    (folder / "datastore_versions.json").write_text(json.dumps(released))
