"""Fixtures: a real service on a real backend in a temp dir, driven over HTTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from mongo_server import MongoServer, secantusd
from pymongo import MongoClient

from job_service import Config, ConfigSchema, create_app

BACKENDS = ["tinydb", "mongodb"]
REPORT: list[str] = []


def report(line: str) -> None:
    """Print `line` at the end of the run: figures and artifact paths CI's log should show."""
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in REPORT:
        terminalreporter.write_line(line)


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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str]:
    """A MongoDB server for the whole run: MONGODB_URL's, or a SecantusDB started here.

    Without either the MongoDB tests are skipped, except in CI (CI=true), where a
    skipped backend would be a contract left unchecked.
    """
    if os.environ.get("MONGODB_URL"):
        yield os.environ["MONGODB_URL"]
        return
    command = secantusd()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the MongoDB backend: set SECANTUSD or MONGODB_URL")
        pytest.skip("no MongoDB server: set SECANTUSD (a secantusd-py) or MONGODB_URL")
    server = MongoServer(command)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The `[storage]` section of a fresh, empty store of `backend`."""
    if backend == "tinydb":
        yield {"backend": "tinydb", "tinydb": {"path": str(tmp_path / "data")}}
        return
    url = request.getfixturevalue("mongodb_url")
    database = f"test_{uuid.uuid4().hex[:16]}"
    yield {"backend": "mongodb", "mongodb": {"url": url, "database": database, "timeout_seconds": 5}}
    with MongoClient(url) as client:
        client.drop_database(database)


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    path = tmp_path / "input"
    path.mkdir()
    return path


@pytest.fixture
def make_config(storage: dict[str, Any], input_dir: Path) -> Callable[..., Config]:
    """A Config on the fresh store; keyword arguments are extra TOML sections."""

    def make(**sections: dict[str, Any]) -> Config:
        raw: dict[str, Any] = {"storage": dict(storage), "input": {"dir": str(input_dir)}}
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return ConfigSchema().load(raw)

    return make


@pytest.fixture
async def make_client(aiohttp_client: Any, make_config: Callable[..., Config]) -> Callable[..., Any]:
    async def make(**sections: dict[str, Any]) -> TestClient:
        return await aiohttp_client(create_app(make_config(**sections)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


def stored_job(job_id: str, target: str = "MY_DATASET", status: str = "queued") -> dict[str, Any]:
    """A job document as a store holds it; ids that sort as numbers keep `createdAt` in their order."""
    return {
        "jobId": job_id,
        "status": status,
        "parameters": {"operation": "ADD", "target": target},
        "log": [],
        "createdAt": f"2026-11-29T10:00:00.{job_id[-6:]:0>6}+00:00",
        "createdBy": {"userId": "u", "firstName": "F", "lastName": "L"},
    }


async def listed(jobs: Any) -> list[dict[str, Any]]:
    """Everything a store's job iterator yields."""
    return [job async for job in jobs]


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
