"""What a careless or hostile client may do, and what the service does about it."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sys
import tarfile
import threading

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.test_utils import make_mocked_request
from helpers import create_job, faulty, stored_job
from marshmallow import ValidationError

from job_service import (
    MAX_ARCHIVE_MEMBERS,
    MAX_TEXT_LENGTH,
    STORE,
    JobQueries,
    JsonFormatter,
    MalformedRequestFilter,
    RequestContextFilter,
    TextFormatter,
    UnreadableArchive,
    inspect_archive,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def backend() -> str:
    """What these tests try is the HTTP layer's: one backend shows it."""
    return "tinydb"


async def with_completed_jobs(client, count: int) -> None:
    jobs = [stored_job(f"{n:06d}", target=f"T{n}", status="completed") for n in range(count)]
    await client.app[STORE].load_collection("completed", jobs)


async def test_head_of_a_long_listing_is_headers_alone_and_the_connection_goes_on(client):
    await with_completed_jobs(client, 600)
    async with aiohttp.ClientSession(base_url=str(client.make_url("/"))) as session:
        for _ in range(2):  # one kept-alive connection: a stray body would garble the next answer
            async with session.head("/jobs") as head:
                assert head.status == 200 and await head.read() == b""
            async with session.get("/health/alive") as alive:
                assert await alive.json() == {"message": "I'm alive!"}


async def test_a_failure_mid_stream_cuts_the_connection_and_says_so(make_client, caplog):
    def fails_after_600(store):
        async def find_jobs(query):
            count = 0
            async for page in store.find_jobs(query):
                for job in page:
                    count += 1
                    if count > 600:
                        raise OSError("the disk went away")
                    yield [job]

        return find_jobs

    client = await make_client(faulty(find_jobs=fails_after_600))
    await with_completed_jobs(client, 1200)
    with caplog.at_level(logging.INFO):
        response = await client.get("/jobs")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 5)
    assert any("aborted mid-stream" in record.getMessage() for record in caplog.records)
    metrics = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/jobs",status="aborted"} 1.0' in metrics
    assert 'status="500"' not in metrics and 'status="503"' not in metrics


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/jobs", b'{"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}'),
        ("POST", "/maintenance-status", b'{"msg": "x", "paused": true}'),
        ("POST", "/datastores", b'{"rdn": "no.ssb.fdb", "name": "Fdb", "description": ""}'),
        ("PUT", "/jobs/{job_id}", b'{"status": "built"}'),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_body_that_is_not_json_is_a_415_and_changes_nothing(client, method, path, body, content_type):
    job_id = await create_job(client, operation="ADD", target="EXISTING")
    response = await client.request(
        method, path.format(job_id=job_id), data=body, headers={"Content-Type": content_type}
    )
    assert response.status == 415
    assert "application/json" in (await response.json())["message"]
    [job] = await (await client.get("/jobs")).json()
    assert (job["jobId"], job["status"]) == (job_id, "queued")
    assert len(await (await client.get("/maintenance-history")).json()) == 1
    assert await (await client.get("/datastores/rdns")).json() == ["local"]


def raw_request(port: int, head: bytes, timeout: float = 5) -> bytes:
    """Send `head` (and nothing more) on a socket of its own; what comes back first."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        return sock.recv(65536)


async def test_a_body_announced_over_the_limit_gets_413_before_100_continue(make_client):
    client = await make_client(server={"max_body_bytes": 1000})
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await asyncio.to_thread(raw_request, client.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b"100 Continue" not in answer


BODY_ROUTES = [
    ("POST", "/jobs", "application/json"),
    ("POST", "/datastores/local/jobs", "application/json"),
    ("PUT", "/jobs/some-job", "application/json"),
    ("POST", "/maintenance-status", "application/json"),
    ("POST", "/maintenance-statuses", "application/json"),
    ("POST", "/datastores", "application/json"),
    ("POST", "/datastores/local/public-key", "application/x-pem-file"),
    ("POST", "/jobs/some-job/cancel", "application/json"),
    ("POST", "/datastores/local/jobs/some-job/cancel", "application/json"),
]


@pytest.mark.parametrize(("method", "path", "content_type"), BODY_ROUTES)
async def test_a_body_that_trickles_in_gets_408(make_client, method, path, content_type):
    client = await make_client(server={"body_timeout": 0.5})
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n{{"
    answer = await asyncio.to_thread(raw_request, client.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert await (await client.get("/jobs")).json() == []


@pytest.mark.parametrize(("method", "path", "content_type"), BODY_ROUTES)
async def test_a_body_of_another_media_type_is_a_415_on_every_route_that_takes_one(client, method, path, content_type):
    other = "text/plain" if content_type == "application/json" else "application/json"
    response = await client.request(method, path, data=b"{}", headers={"Content-Type": other})
    assert response.status == 415
    assert content_type in (await response.json())["message"]


def leave_mid_answer(port: int) -> None:
    """Ask for a long listing, read one byte of it, and reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


async def test_a_client_that_goes_away_is_a_499_not_an_error(client, caplog):
    await with_completed_jobs(client, 5000)
    with caplog.at_level(logging.INFO):
        await asyncio.to_thread(leave_mid_answer, client.port)
        await asyncio.sleep(0.5)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    metrics = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/jobs",status="499"} 1.0' in metrics
    assert 'status="500"' not in metrics


async def test_successful_reads_are_logged_at_debug_and_writes_at_info(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="job_service.access"):
        await client.get("/jobs")
        await client.get("/targets/MY_DATASET")
        await client.post("/jobs", json={"jobs": []})
    levels = [(record.getMessage(), record.levelname) for record in caplog.records]
    assert levels == [
        ("GET /jobs 200", "DEBUG"),
        ("GET /targets/MY_DATASET 404", "INFO"),
        ("POST /jobs 200", "INFO"),
    ]


async def test_every_access_line_is_kept_at_info_when_asked(make_client, caplog):
    client = await make_client(logging={"access_reads": True})
    with caplog.at_level(logging.DEBUG, logger="job_service.access"):
        await client.get("/jobs")
    assert [record.levelname for record in caplog.records] == ["INFO"]


def plain_tar(path, members: list[str]) -> None:
    with tarfile.open(path, "w") as archive:
        for member in members:
            archive.addfile(tarfile.TarInfo(member), io.BytesIO(b""))


async def test_a_misplaced_archive_entry_hides_nothing(client, input_dir, tmp_path):
    plain_tar(input_dir / "GOOD.tar", ["GOOD.json", "chunks/1.parquet"])
    (input_dir / "archive").write_text("a file where the archive folder should be")
    listed = await (await client.get("/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["GOOD"]


async def test_an_archive_folder_that_is_a_link_out_of_the_input_directory_is_not_followed(client, input_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    plain_tar(outside / "SECRET.tar", ["SECRET.json"])
    (input_dir / "archive").symlink_to(outside)
    assert await (await client.get("/importable-datasets")).json() == []


async def test_a_compressed_archive_is_skipped_and_logged(client, input_dir, caplog):
    with tarfile.open(input_dir / "ZIPPED.tar", "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("ZIPPED.json"), io.BytesIO(b""))
    plain_tar(input_dir / "PLAIN.tar", ["PLAIN.json"])
    listed = await (await client.get("/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["PLAIN"]
    assert "ZIPPED.tar: cannot read it as a plain tar archive" in caplog.text


async def test_an_archive_of_too_many_members_is_read_once_for_all_listings_and_skipped(client, input_dir, caplog):
    plain_tar(input_dir / "BOMB.tar", [f"member{n}" for n in range(MAX_ARCHIVE_MEMBERS + 10)])
    plain_tar(input_dir / "GOOD.tar", ["GOOD.json", "chunks/1.parquet"])
    listings = await asyncio.gather(*(client.get("/importable-datasets") for _ in range(8)))
    for listing in listings:
        assert [dataset["datasetName"] for dataset in await listing.json()] == ["GOOD"]
    assert caplog.text.count(f"BOMB.tar: cannot read it as a plain tar archive: more than {MAX_ARCHIVE_MEMBERS:,}") == 1


async def test_concurrent_listings_share_one_scan_of_the_input_directory(client, input_dir, caplog):
    plain_tar(input_dir / "GOOD.tar", ["GOOD.json", "chunks/1.parquet"])
    plain_tar(input_dir / "not-a-dataset-name.tar", ["x.json"])  # each scan logs that it skips it
    caplog.set_level(logging.INFO)
    listings = await asyncio.gather(*(client.get("/importable-datasets") for _ in range(8)))
    for listing in listings:
        assert [dataset["datasetName"] for dataset in await listing.json()] == ["GOOD"]
    assert caplog.text.count("not-a-dataset-name.tar: not a valid dataset name") == 1


def test_an_inspection_stops_at_its_next_member_when_the_service_stops(tmp_path):
    plain_tar(tmp_path / "LONG.tar", [f"member{n}" for n in range(100)])
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(UnreadableArchive, match="stopping"):
        inspect_archive(str(tmp_path / "LONG.tar"), "LONG", stopping)


@pytest.mark.parametrize("field", ["log", "description"])
async def test_a_log_line_or_description_over_its_limit_is_a_413_and_changes_nothing(client, field):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    body = {"status": "validating", field: "x" * (MAX_TEXT_LENGTH + 1)}
    response = await client.put(f"/jobs/{job_id}", json=body)
    assert response.status == 413
    assert field in (await response.json())["message"]
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert (job["status"], job["log"]) == ("queued", [])


async def test_a_new_job_with_a_description_over_its_limit_fails_alone(client):
    entries = [
        {"operation": "REMOVE", "target": "TOO_LONG", "description": "x" * (MAX_TEXT_LENGTH + 1)},
        {"operation": "ADD", "target": "FINE"},
    ]
    [refused, created] = await (await client.post("/jobs", json={"jobs": entries})).json()
    assert refused["status"] == "FAILED" and "description" in refused["msg"]
    assert created["msg"] == "CREATED"


async def test_a_file_name_with_a_newline_cannot_forge_a_log_line(client, input_dir, caplog):
    (input_dir / "BAD\nERROR job_service forged line.tar").write_bytes(b"")
    with caplog.at_level(logging.INFO):
        await client.get("/importable-datasets")
    [record] = [record for record in caplog.records if "forged" in record.getMessage()]
    RequestContextFilter().filter(record)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "BAD\\nERROR job_service forged line.tar" in line
    assert "\n" not in JsonFormatter().format(record)


def test_a_malformed_request_is_one_warning_line_not_an_error_with_a_traceback():
    try:
        raise BadHttpMessage("Invalid header token")
    except BadHttpMessage:
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), sys.exc_info()
        )
    assert MalformedRequestFilter().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert "Invalid header token" in record.getMessage()


def test_parsed_job_queries_are_bounded_and_a_bad_one_is_never_kept():
    queries = JobQueries(limit=4)
    for number in range(10):
        request = make_mocked_request("GET", f"/jobs?status=queued&operation=ADD&n{number}=")
        assert queries.of(request, None).status == "queued"
    assert len(queries) == 4
    with pytest.raises(ValidationError):
        queries.of(make_mocked_request("GET", "/jobs?status=nonsense&n0="), None)
    assert len(queries) == 4 and queries.of(make_mocked_request("GET", "/jobs?status=queued"), None)


def test_a_parsed_job_query_is_kept_for_its_scope_alone():
    queries = JobQueries()
    request = make_mocked_request("GET", "/jobs?status=queued")
    assert queries.of(request, "no.ssb.fdb").datastore == "no.ssb.fdb"
    assert queries.of(request, None).datastore is None
