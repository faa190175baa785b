"""What every route shares: health, unknown routes and methods, body limits, errors."""

from __future__ import annotations

import pytest

#: A body the tests send as JSON, whatever it holds.
JSON = {"Content-Type": "application/json"}


async def test_alive_and_ready(client):
    response = await client.get("/health/alive")
    assert (response.status, await response.json()) == (200, {"message": "I'm alive!"})
    response = await client.get("/health/ready")
    assert (response.status, await response.json()) == (200, {"message": "I'm ready!"})


async def test_an_unknown_route_is_a_json_404(client):
    response = await client.get("/no/such/route")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert await response.json() == {"message": "Not Found"}


async def test_a_wrong_method_is_a_json_405_with_allow(client):
    response = await client.patch("/jobs")
    assert response.status == 405
    assert await response.json() == {"message": "Method Not Allowed"}
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_a_413_and_stores_nothing(make_client, chunked):
    client = await make_client(server={"max_body_bytes": 1000})
    body = b'{"jobs": [' + b",".join([b'{"operation": "ADD", "target": "A"}'] * 100) + b"]}"

    async def chunks():
        yield body

    response = await client.post("/jobs", data=chunks() if chunked else body, headers=JSON)
    assert response.status == 413
    assert await response.json() == {"message": "Request body is larger than the limit of 1000 bytes"}
    assert await (await client.get("/jobs")).json() == []


async def test_deeply_nested_json_is_a_400(client):
    body = b'{"jobs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post("/jobs", data=body, headers=JSON)
    assert response.status == 400
    assert await response.json() == {"message": "Request body is not valid JSON"}


async def test_a_number_with_ten_thousand_digits_is_a_400(client):
    response = await client.post(
        "/maintenance-status", data=b'{"msg": "x", "pause": ' + b"1" * 10_000 + b"}", headers=JSON
    )
    assert response.status == 400


async def test_a_request_id_is_echoed_or_made_up(client):
    response = await client.get("/health/alive", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await client.get("/health/alive", headers={"X-Request-ID": "bad id\twith tab" + "x" * 200})
    assert response.headers["X-Request-ID"].isalnum() and len(response.headers["X-Request-ID"]) == 32
    response = await client.get("/no/such/route")
    assert len(response.headers["X-Request-ID"]) == 32
