"""What operators rely on: JSON logs tied by request id, /metrics, SIGTERM, gunicorn."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from helpers import DEFAULT_DATASTORE, create_job, put_job, service_config, store_options
from prometheus_client.parser import text_string_to_metric_families
from service_process import ServiceProcess

from backends import MaintenanceStatus, open_store
from job_service import STORE

INITIAL = MaintenanceStatus(msg="Set by the test", paused=False, timestamp="2026-11-30T00:00:00.000000+00:00")


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_every_log_line_of_a_request_is_json_with_its_request_id(storage, tmp_path):
    logging = {"format": "json", "access_reads": True}  # every access line, the reads' too
    initialised = await open_store(store_options(storage), DEFAULT_DATASTORE, INITIAL)  # no write at start
    await initialised.close()
    service = ServiceProcess(tmp_path, service_config(storage, tmp_path / "input", logging=logging))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "BROKEN.tar").write_bytes(b"not a tar")
    await service.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{service.url}/health/alive", headers={"X-Request-ID": "plain-1"}) as response:
                assert response.headers["X-Request-ID"] == "plain-1"
            async with session.get(f"{service.url}/importable-datasets", headers={"X-Request-ID": "scan-2"}):
                pass
            # The journal file this run will first append to, a directory instead: the write fails.
            # Files are named by their first record's number: 2, the initial status was 1.
            (Path(storage["tinydb"]["path"]) / "journal" / f"{2:016d}.jsonl").mkdir(parents=True)
            body = {"jobs": [{"operation": "ADD", "target": "A"}]}
            async with session.post(f"{service.url}/jobs", json=body, headers={"X-Request-ID": "fail-3"}) as response:
                assert response.status == 500
    finally:
        assert service.stop() == 0

    lines = [json.loads(line) for line in service.log_lines()]  # every line, not only the request's
    by_request: dict[str, list[dict]] = {}
    for line in lines:
        by_request.setdefault(line["xRequestId"], []).append(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["@timestamp"])
        assert line["serviceName"] == "job-service" and line["serviceVersion"] and line["host"]
        assert isinstance(line["level"], int) and line["levelName"] in ("DEBUG", "INFO", "WARNING", "ERROR")

    [access] = by_request["plain-1"]
    assert access["loggerName"] == "job_service.access"
    assert (access["method"], access["url"], access["statusCode"]) == ("GET", "/health/alive", 200)
    assert access["responseTime"] >= 0

    # The broken archive, then (the default datastore has no version files here) that, then the access line.
    scan = by_request["scan-2"]
    assert [line["loggerName"] for line in scan] == ["job_service", "job_service", "job_service.access"]
    assert "BROKEN.tar" in scan[0]["message"] and all(line["url"] == "/importable-datasets" for line in scan)

    # The store's line, the traceback of the 500 (and, the store being broken, the audit
    # trail's own failure to keep its entry), then the access line: all under the one id.
    failure = by_request["fail-3"]
    assert failure[0]["loggerName"] == "backends.tinydb" and failure[-1]["loggerName"] == "job_service.access"
    [traceback] = [line for line in failure if "Unhandled error" in line["message"]]
    assert traceback["loggerName"] == "job_service" and "IsADirectoryError" in traceback["error.stack"]
    assert failure[-1]["statusCode"] == 500


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_text_format_is_readable(storage, tmp_path):
    logging = {"access_reads": True}  # a read's access line, at INFO
    service = ServiceProcess(tmp_path, service_config(storage, tmp_path / "input", logging=logging))
    await service.start()
    try:
        async with aiohttp.ClientSession() as session:
            await session.get(f"{service.url}/jobs?status=queued", headers={"X-Request-ID": "text-1"})
    finally:
        service.stop()
    line = next(line for line in service.log_lines() if "text-1" in line)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO job_service\.access \[text-1\] GET /jobs\?status=queued 200", line
    )


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def metrics(client) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await response.text())


FIND_JOBS_READS = ("store_operation_duration_seconds_count", (("operation", "find_jobs"),))


async def test_a_poll_repeated_while_no_job_changes_is_answered_without_reading_the_store(client):
    """The executors poll every few seconds. While no job changes, a store that can tell
    (TinyDB; not a MongoDB others write to) is not read again; the first poll after a change
    sees it."""
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    poll = "/jobs?status=queued&ignoreCompleted=true"
    first = await (await client.get(poll)).json()
    reads = (await metrics(client))[FIND_JOBS_READS]
    assert await (await client.get(poll)).json() == first
    assert [job["jobId"] for job in first] == [job_id]
    kept = client.app[STORE].in_progress_version is not None
    assert (await metrics(client))[FIND_JOBS_READS] == reads + (0 if kept else 1)
    await put_job(client, job_id, status="validating", log="started")
    assert await (await client.get(poll)).json() == []
    [validating] = await (await client.get("/jobs?status=validating")).json()
    assert [entry["message"] for entry in validating["log"]][-1] == "started"


async def test_metrics_parse_and_move_as_requests_are_made(client):
    before = await metrics(client)
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await create_job(client, operation="ADD", target="OTHER_DATASET")
    await put_job(client, job_id, status="completed")
    await client.post("/maintenance-status", json={"msg": "upgrade", "paused": True})
    await client.get("/nowhere")
    after = await metrics(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("http_requests_total", route="/jobs", method="POST", status="200") == 2
    assert delta("http_requests_total", route="/jobs/{jobId}", method="PUT", status="200") == 1
    assert delta("http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("http_request_duration_seconds_count", route="/jobs", method="POST") == 2
    assert after[("jobs_in_progress", (("datastore", "local"), ("status", "queued")))] == 1
    assert after[("jobs_in_progress", (("datastore", "local"), ("status", "built")))] == 0
    assert after[("jobs_completed", ())] == 1
    assert after[("maintenance_paused", ())] == 1
    assert delta("store_operation_duration_seconds_count", operation="insert_job") == 2
    assert delta("store_operation_duration_seconds_count", operation="update_job") == 1
    await client.get("/jobs?ignoreCompleted=true")
    assert delta("store_operation_duration_seconds_count", operation="find_jobs") == 0
    assert (await metrics(client))[("store_operation_duration_seconds_count", (("operation", "find_jobs"),))] >= 1


async def test_expected_outcomes_are_not_counted_as_store_errors(client):
    await create_job(client, operation="ADD", target="MY_DATASET")
    await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})
    await client.put("/jobs/unknown", json={"status": "built"})
    assert not [key for key in await metrics(client) if key[0] == "store_operation_errors_total"]


async def test_sigterm_during_a_burst_of_writes_loses_nothing_it_answered(storage, tmp_path):
    service = ServiceProcess(tmp_path, service_config(storage, tmp_path / "input"))
    await service.start()
    answered: list[str] = []
    refused: list[str] = []
    failed: list[tuple[str, BaseException]] = []

    async def writer(number: int) -> None:
        # A new connection for every request: each one is either refused or answered.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(10_000):
                target = f"C{number}_{n}"
                try:
                    body = {"jobs": [{"operation": "ADD", "target": target}]}
                    async with session.post(f"{service.url}/jobs", json=body) as response:
                        [result] = await response.json()
                        assert response.status == 200 and result["msg"] == "CREATED"
                        answered.append(target)
                except aiohttp.ClientConnectorError:
                    refused.append(target)
                    return
                except aiohttp.ClientError as exc:
                    failed.append((target, exc))
                    return

    writers = [asyncio.ensure_future(writer(number)) for number in range(8)]
    await asyncio.sleep(0.5)
    exit_code = await asyncio.to_thread(service.stop, signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*writers), 30)
    assert exit_code == 0
    assert len(answered) > 8

    await service.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{service.url}/jobs") as response:
            stored = {job["parameters"]["target"] for job in await response.json()}
    finally:
        service.stop()
    assert set(answered) <= stored
    # A connection the kernel had queued but the service never took is reset, not answered:
    # acceptable only if the service did nothing with it.
    assert not {target for target, _ in failed} & stored, failed


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_service_runs_under_gunicorn(storage, tmp_path):
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    assert gunicorn, "gunicorn is a test dependency"
    service = ServiceProcess(tmp_path, service_config(storage, tmp_path / "input"))
    service.command = (
        gunicorn, "job_service:gunicorn_app", "--worker-class", "aiohttp.GunicornWebWorker",
        "--bind", f"127.0.0.1:{service.port}", "--workers", "1",
    )  # fmt: skip
    await service.start(env={"JOB_SERVICE_CONFIG": str(service.config), "PATH": str(Path(sys.executable).parent)})
    try:
        async with aiohttp.ClientSession() as session:
            body = {"jobs": [{"operation": "ADD", "target": "UNDER_GUNICORN"}]}
            async with session.post(f"{service.url}/jobs", json=body) as response:
                assert (await response.json())[0]["msg"] == "CREATED"
    finally:
        assert service.stop() == 0
    assert any("job_service.access" in line and "POST /jobs 200" in line for line in service.log_lines())
