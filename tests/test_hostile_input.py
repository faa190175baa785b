"""Hostile input: every entry point answers a clear 4xx and changes nothing."""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import bump_job
from yarl import URL

from job_service import INITIAL_MAINTENANCE_MSG

JSON_ENTRY_POINTS = [
    ("POST", "/jobs"),
    ("PUT", "/jobs/{job_id}"),
    ("POST", "/maintenance-status"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("POST", "/datastores/local/jobs/{job_id}/cancel"),
]

#: A body the tests send as JSON, whatever it holds.
JSON = {"Content-Type": "application/json"}


async def raw_request(client, method: str, path: str):
    """Send `path` exactly as written: the client would otherwise resolve `..` and `%2e%2e` itself."""
    url = URL(f"http://{client.host}:{client.port}{path}", encoded=True)
    response = await client.session.request(method, url)
    await response.read()
    return response


@pytest.fixture
async def job_id(client) -> str:
    response = await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "EXISTING"}]})
    return (await response.json())[0]["job_id"]


async def unchanged(client, job_id: str) -> None:
    """The state the `job_id` fixture made, and nothing more."""
    jobs = await (await client.get("/jobs")).json()
    assert [(job["jobId"], job["status"], job["log"]) for job in jobs] == [(job_id, "queued", [])]
    history = await (await client.get("/maintenance-history")).json()
    assert [status["msg"] for status in history] == [INITIAL_MAINTENANCE_MSG]  # only the one stored at start


@pytest.mark.parametrize(("method", "path"), JSON_ENTRY_POINTS)
@pytest.mark.parametrize(
    "body",
    [
        b'{"status": NaN}',
        b'{"status": Infinity}',
        b'{"status": -Infinity}',
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a": ' + b'{"b": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b'{"a": ' + b"9" * 10_000 + b"}",
        b'{"a": 1e999999}',
        b'{"a": "\xff\xfe"}',
        b"\x00\x01\x02",
        b"",
    ],
    ids=[
        "NaN",
        "Infinity",
        "-Infinity",
        "deep-lists",
        "deep-objects",
        "huge-int",
        "huge-float",
        "bad-utf8",
        "binary",
        "empty",
    ],
)
async def test_unparseable_json_is_a_400(client, job_id, method, path, body):
    response = await client.request(method, path.format(job_id=job_id), data=body, headers=JSON)
    assert response.status == 400
    assert (await response.json())["message"]
    await unchanged(client, job_id)


@pytest.mark.parametrize(("method", "path"), JSON_ENTRY_POINTS)
@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversize_body_is_a_413_on_every_entry_point(make_client, method, path, chunked):
    client = await make_client(server={"max_body_bytes": 4096})
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "EXISTING"}]})).json()
    body = b'{"msg": "' + b"x" * 10_000 + b'", "paused": true}'

    async def stream():
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = await client.request(
        method, path.format(job_id=created["job_id"]), data=stream() if chunked else body, headers=JSON
    )
    assert response.status == 413
    assert "4096" in (await response.json())["message"]
    await unchanged(client, created["job_id"])


HOSTILE_NAMES = [
    "A/B",
    "..",
    "../ETC",
    "A\\B",
    "A\x00B",
    "A\nB",
    "A\tB",
    "\u0391BC",  # Greek capital alpha
    "\uff21\uff22\uff23",  # fullwidth ABC
    "A\u200bB",  # zero-width space
    "ABC\u0301",  # combining accent
    "",
    " ",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_a_hostile_target_name_in_a_job_fails_and_stores_nothing(client, job_id, name):
    response = await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": name}]})
    assert response.status == 200
    [result] = await response.json()
    assert result["status"] == "FAILED" and "target" in result["msg"]
    await unchanged(client, job_id)


HOSTILE_PATH_SEGMENTS = [
    "%2e%2e",
    "..%2F..%2FSECRET",
    "A%2FB",
    "%2FSECRET",
    "A%5CB",
    "A%00B",
    "A%0AB",
    "%CE%91BC",
    "%EF%BC%A1%EF%BC%A2",
    "SECRET%20",
    "SECRET.tar",
    "%252e%252e",
]


@pytest.mark.parametrize("segment", HOSTILE_PATH_SEGMENTS)
async def test_a_hostile_name_in_a_path_touches_nothing(client, input_dir, tmp_path, segment):
    outside = tmp_path / "SECRET.tar"
    outside.write_bytes(b"outside the input directory")
    inside = input_dir / "SECRET.tar"
    inside.write_bytes(b"inside")
    for method, path in [
        ("DELETE", f"/importable-datasets/{segment}"),
        ("GET", f"/targets/{segment}"),
        ("GET", f"/targets/{segment}/jobs"),
    ]:
        response = await raw_request(client, method, path)
        assert response.status in (400, 404), (method, path, response.status)
        assert (await response.json())["message"]
    assert outside.read_bytes() == b"outside the input directory"
    assert inside.read_bytes() == b"inside"


async def test_dot_segments_never_leave_the_routes(client, input_dir, tmp_path):
    (tmp_path / "SECRET.tar").write_bytes(b"outside")
    for path in [
        "/importable-datasets/../SECRET",
        "/importable-datasets/%2E%2E/SECRET",
        "/importable-datasets/./../../SECRET",
    ]:
        response = await client.delete(path)
        assert response.status in (400, 404, 405)
    assert (tmp_path / "SECRET.tar").exists()


@pytest.mark.parametrize(
    "query",
    ["status=queued&status=built", "ignoreCompleted=true&ignoreCompleted=false", "status=queued&status=queued"],
)
async def test_a_repeated_query_parameter_is_a_400(client, query):
    response = await client.get(f"/jobs?{query}")
    assert response.status == 400
    assert "more than once" in (await response.json())["message"]


@pytest.mark.parametrize("query", ["status=%00", "operation=ADD%0A", "status=queued%20", "ignoreCompleted=tru%C3%A9"])
async def test_control_characters_in_query_values_are_a_400(client, query):
    response = await client.get(f"/jobs?{query}")
    assert response.status == 400


async def test_a_hostile_request_id_is_neither_echoed_nor_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    long_id = "A" * 10_000
    response = await client.get("/jobs/none", headers={"X-Request-ID": long_id})
    assert response.status == 404
    assert response.headers["X-Request-ID"] != long_id and len(response.headers["X-Request-ID"]) == 32
    assert long_id not in caplog.text


async def test_a_request_id_with_a_line_break_is_refused_by_the_http_parser(client):
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /health/alive HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\rInjected: yes\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.0 400") or status_line.startswith(b"HTTP/1.1 400")


async def test_cookies_with_two_large_tokens_fit_in_the_header_limit(client):
    cookie = "authorization=" + "a" * 9000 + "; user-info=" + "b" * 9000
    response = await client.get("/health/alive", headers={"Cookie": cookie})
    assert response.status == 200


@pytest.mark.parametrize(("method", "path"), JSON_ENTRY_POINTS)
@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"', '"\\udbff\\u0041"'])
async def test_a_lone_surrogate_is_a_400(client, job_id, method, path, text):
    """JSON can escape half a surrogate pair; no store can write it, so it never gets that far."""
    body = f'{{"msg": {text}, "paused": true, "status": "built", "jobs": [{{"operation": "ADD", "target": "A", '
    body += f'"description": {text}}}]}}'
    response = await client.request(method, path.format(job_id=job_id), data=body.encode(), headers=JSON)
    assert response.status == 400
    assert "lone surrogate" in (await response.json())["message"]
    await unchanged(client, job_id)


async def test_a_surrogate_pair_is_one_character_and_welcome(client):
    body = b'{"jobs": [{"operation": "ADD", "target": "EMOJI", "description": "\\ud83d\\ude00"}]}'
    [result] = await (await client.post("/jobs", data=body, headers=JSON)).json()
    job = await (await client.get(f"/jobs/{result['job_id']}")).json()
    assert job["parameters"]["description"] == "\U0001f600"


@pytest.mark.parametrize("release_time", [2**63, -(2**63) - 1, 10**30])
async def test_a_release_time_beyond_64_bits_fails_the_entry(make_client, release_time):
    client = await make_client(jobs={"bump_enabled": True})
    manifesto = {**bump_job()["bumpManifesto"], "releaseTime": release_time}
    [result] = await (await client.post("/jobs", json={"jobs": [bump_job(bumpManifesto=manifesto)]})).json()
    assert result["status"] == "FAILED" and "releaseTime" in result["msg"]
    assert await (await client.get("/jobs")).json() == []


@pytest.mark.parametrize("segment", ["%ED%A0%80", "%FF%FE", "%C0%AF", "%80"])
async def test_a_job_id_that_is_not_utf_8_is_simply_not_found(client, segment):
    for method, body in [("GET", None), ("PUT", b'{"status": "built"}')]:
        url = URL(f"http://{client.host}:{client.port}/jobs/{segment}", encoded=True)
        response = await client.session.request(method, url, data=body, headers=JSON)
        assert response.status in (400, 404), (method, segment, await response.text())
