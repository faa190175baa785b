"""Routes are declared once: the resolver enforces each declaration, and the
OpenAPI document is made from it."""

from __future__ import annotations

import re

import pytest
from helpers import DEFAULT_DATASTORE, KeyServer, access_claims, cookies_for

from job_service import ROUTES, Access, Route, openapi_operation


@pytest.fixture
def backend() -> str:
    return "tinydb"


API_KEY = "k" * 32
#: A value for each path parameter, valid as far as the resolver looks.
PATH_VALUES = {"rdn": DEFAULT_DATASTORE, "name": "MY_DATASET", "jobId": "no-such-job", "filename": "favicon-32x32.png"}


def declared_paths(*policies: Access) -> list[tuple[str, str, Route]]:
    return [
        (declared.method, path, declared)
        for declared in ROUTES
        for path in declared.paths
        if declared.access_on(path) in policies
    ]


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda match: PATH_VALUES[match.group(1)], path)


def body_of(declared: Route) -> dict:
    if declared.body is None:
        return {}
    return {"data": b"{}", "headers": {"Content-Type": declared.body_media_type}}


CREDENTIALED = [
    Access.READ_JOBS,
    Access.ADMINISTER,
    Access.EXECUTOR,
    Access.EXECUTOR_OR_ADMINISTRATOR,
    Access.PROVISION,
]


@pytest.mark.parametrize(("method", "path", "declared"), declared_paths(*CREDENTIALED))
async def test_every_route_that_needs_a_credential_refuses_a_caller_without_one(auth_client, method, path, declared):
    client = await auth_client(api_key=API_KEY)
    response = await client.request(method, concrete(path), **body_of(declared))
    assert response.status == 401, await response.text()


@pytest.mark.parametrize(("method", "path", "declared"), declared_paths(Access.OPEN, Access.READ))
async def test_every_open_route_answers_a_caller_without_a_credential(auth_client, method, path, declared):
    client = await auth_client(api_key=API_KEY)
    response = await client.request(method, concrete(path), **body_of(declared))
    assert response.status not in (401, 403), await response.text()


@pytest.mark.parametrize(("method", "path", "declared"), declared_paths(Access.ADMINISTER))
async def test_every_administrators_route_refuses_a_datastore_provisioner(
    auth_client, key_server: tuple[KeyServer, str], method, path, declared
):
    keys, _ = key_server
    client = await auth_client(api_key=API_KEY)
    provisioner = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/datastoreprovisioner"}))
    response = await client.request(method, concrete(path), cookies=provisioner, **body_of(declared))
    assert response.status == 403, await response.text()


def test_each_datastore_twin_is_for_administrators_of_that_datastore_unless_open():
    for declared in ROUTES:
        if declared.twin:
            twin = declared.paths[-1]
            assert twin == f"/datastores/{{rdn}}{declared.path}"
            expected = Access.OPEN if declared.access is Access.OPEN else Access.ADMINISTER
            assert declared.access_on(twin) is expected


async def example(request, scope):  # pragma: no cover - documented, never served
    raise AssertionError


def test_a_route_with_a_path_parameter_of_its_own_is_documented():
    declared = Route("GET", "/widgets/{widgetId}", example, Access.OPEN, "A widget", None, "operations")
    [parameter] = openapi_operation(declared, declared.path)["parameters"]
    assert parameter == {"in": "path", "name": "widgetId", "required": True, "schema": {"type": "string"}}


def test_the_errors_of_a_route_follow_from_its_declaration():
    declared = Route("POST", "/widgets", example, Access.ADMINISTER, "A widget", None, "operations", twin=True, body={})
    original, twin = declared.paths
    assert declared.errors_on(original) == {400, 401, 403, 408, 413, 415}
    assert declared.errors_on(twin) == {400, 401, 403, 404, 408, 413, 415, 503}
