"""Fixtures: a real service on a real backend in a temp dir, driven over HTTP; and the hooks
that end a run (its report lines, the documentation check).

Fixtures and hooks only: what tests share besides them is in `helpers`, a module tests may import.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import (
    DEFAULT_DATASTORE,
    OBSERVED_STATUSES,
    REPORT,
    KeyServer,
    documentation_drift,
    service_config,
    store_options,
)
from mongo_server import MongoServer, secantusd
from pymongo import MongoClient

from backends import open_store
from job_service import Config, ConfigSchema, create_app, open_configured_store, openapi_document

BACKENDS = ["tinydb", "mongodb"]
TESTS = Path(__file__).parent
DOCUMENTATION_DRIFT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """CI's log ends with what the tests `report()`ed (schemathesis's counts, artifact
    paths), and with the documentation's drift when there is some."""
    for line in REPORT:
        terminalreporter.write_line(line)
    drift = terminalreporter.config.stash.get(DOCUMENTATION_DRIFT, [])
    if drift:
        terminalreporter.write_sep("=", "the OpenAPI document differs from what the service answered", red=True)
        for line in drift:
            terminalreporter.write_line(line, red=True)


def ran_the_whole_suite(session: pytest.Session) -> bool:
    """Whether every test was selected and the run went to its end (failures or not)."""
    option = session.config.option
    selected = option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False)
    whole = not selected and [Path(arg).resolve() for arg in session.config.args] == [TESTS]
    ended = session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    return whole and ended and not (session.shouldfail or session.shouldstop)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each operation answers exactly the errors it documents: what the tests' clients saw
    (`observe_status`) compared with the OpenAPI document once, at the end of a run of the
    whole suite, which fails with the drift named. A pytest-xdist worker compares nothing:
    it hands what it saw, and what its tests `report()`ed, to the controller."""
    config = session.config
    if hasattr(config, "workeroutput"):
        observed = [[method, path, sorted(statuses)] for (method, path), statuses in OBSERVED_STATUSES.items()]
        config.workeroutput.update(observed_statuses=observed, report=REPORT)
        return
    if not ran_the_whole_suite(session):
        return
    document = openapi_document()
    drift = config.stash[DOCUMENTATION_DRIFT] = documentation_drift(document, OBSERVED_STATUSES)
    if drift:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        operations = sum(len(operations) for operations in document["paths"].values())
        REPORT.append(
            f"the OpenAPI document: each of its {operations} operations answered exactly the errors it documents"
        )


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, called on its controller
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker's observations and report lines, as its `pytest_sessionfinish` handed them over."""
    output = getattr(node, "workeroutput", {})
    for method, path, statuses in output.get("observed_statuses", []):
        OBSERVED_STATUSES[method, path].update(statuses)
    REPORT.extend(output.get("report", []))


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
def own_server(tmp_path: Path) -> Iterator[MongoServer]:
    """A SecantusDB of this test's own, on disk, so that it can be stopped and started again
    (from a test, through `asyncio.to_thread`: both block until the server is down or up)."""
    command = secantusd()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the MongoDB backend: set SECANTUSD")
        pytest.skip("needs SECANTUSD to start a server of its own")
    server = MongoServer(command, storage=tmp_path / "mongo")
    server.start()
    yield server
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
        raw = service_config(dict(storage), input_dir)
        for name, values in sections.items():
            if isinstance(values, list):  # an array of tables, such as [[notify]]
                raw[name] = values
            else:
                raw.setdefault(name, {}).update(values)
        return ConfigSchema().load(raw)

    return make


@pytest.fixture
async def make_client(aiohttp_client: Any, make_config: Callable[..., Config]) -> Callable[..., Any]:
    """A client of a service on the fresh store; keyword arguments are extra TOML sections,
    and `open_store` how the app opens its store (see `helpers.faulty`)."""

    async def make(open_store: Any = open_configured_store, **sections: dict[str, Any]) -> TestClient:
        app = create_app(make_config(**sections), open_store)
        app.on_response_prepare.append(observe_status)
        return await aiohttp_client(app)

    return make


async def observe_status(request: web.Request, response: web.StreamResponse) -> None:
    """Note which status each route answered: `pytest_sessionfinish` compares them with the OpenAPI document."""
    resource = request.match_info.route.resource
    if resource is not None:
        OBSERVED_STATUSES[request.method, resource.canonical].add(response.status)


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


@pytest.fixture
async def key_server(aiohttp_server: Any) -> tuple[KeyServer, str]:
    """A JWKS endpoint on loopback, and its URL."""
    keys = KeyServer()
    app = web.Application()
    app.router.add_get("/jwks", keys.serve)
    server = await aiohttp_server(app)
    return keys, str(server.make_url("/jwks"))


@pytest.fixture
async def auth_client(make_client: Callable[..., Any], key_server: tuple[KeyServer, str]) -> Callable[..., Any]:
    """A client of a service with auth on, its keys from `key_server`; keyword arguments are `[auth]` keys."""
    _, url = key_server

    async def make(**auth: Any) -> TestClient:
        return await make_client(auth={"enabled": True, "jwks_url": url, **auth})

    return make


@pytest.fixture
async def open_stores(storage):
    """Open stores on the one fresh store of the test; all closed at its end."""
    opened = []

    async def open_one(initial_maintenance=None):
        store = await open_store(store_options(storage), DEFAULT_DATASTORE, initial_maintenance)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_stores):
    return await open_stores()
