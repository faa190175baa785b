"""The TinyDB store on real files: durable, atomic, crash-safe, one owner."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import listed, service_config, stored_job, write_config

import backends.tinydb as tinydb_backend
from backends import JobChange, JobQuery, StoreLocked, TargetBusy
from backends.tinydb import AtomicJSONStorage, TinyDBStore


@pytest.fixture
def backend() -> str:
    """The HTTP tests in this module are about TinyDB's files."""
    return "tinydb"


async def test_everything_written_is_there_after_reopening(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.insert_job(stored_job("2", target="OTHER"))
    await store.update_job("2", JobChange(status="completed"))
    await store.save_target({"datastoreRdn": "local", "name": "MY_DATASET", "status": "queued"})
    await store.add_maintenance({"msg": "m", "paused": True, "timestamp": "t"})
    await store.close()

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == ["1", "2"]
    assert (await store.get_job("2"))["status"] == "completed"
    assert await store.list_targets("local") == [{"datastoreRdn": "local", "name": "MY_DATASET", "status": "queued"}]
    assert await store.maintenance_history() == [{"msg": "m", "paused": True, "timestamp": "t"}]
    await store.close()


async def test_a_second_owner_of_the_data_directory_is_refused(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    with pytest.raises(StoreLocked, match=str(tmp_path)):
        await TinyDBStore.open(tmp_path, "local")
    await store.close()
    await (await TinyDBStore.open(tmp_path, "local")).close()


def test_a_second_service_process_refuses_to_start_with_one_clear_line(tmp_path):
    storage = {"tinydb": {"path": str(tmp_path / "data")}}
    config = write_config(tmp_path / "config.toml", service_config(storage, tmp_path / "in"))
    (tmp_path / "data").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from backends.tinydb import TinyDBStore;"
            "store = asyncio.run(TinyDBStore.open(sys.argv[1], 'local'));"
            "print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / "data"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = subprocess.run(
            [sys.executable, "-m", "job_service", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("job-service: The data directory") and f"pid {holder.pid}" in last_line
    assert "Traceback" not in result.stderr


def test_a_write_interrupted_before_the_rename_leaves_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "db.json"
    storage = AtomicJSONStorage(path)
    storage.write({"_default": {"1": {"v": "old"}}})

    def crash(*args):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    data = storage.read()
    data["_default"]["1"]["v"] = "new"
    with pytest.raises(KeyboardInterrupt):
        storage.write(data)
    monkeypatch.undo()

    assert storage.read() == {"_default": {"1": {"v": "old"}}}, "memory must not run ahead of the file"
    assert AtomicJSONStorage(path).read() == {"_default": {"1": {"v": "old"}}}
    assert json.loads(path.read_bytes()) == {"_default": {"1": {"v": "old"}}}


async def test_a_leftover_temporary_file_is_ignored_and_removed(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.close()
    (tmp_path / "inprogress.json.tmp").write_text('{"_default": {"1": {"jobId": "tor')

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == ["1"]
    assert not (tmp_path / "inprogress.json.tmp").exists()
    await store.close()


async def test_a_crash_between_the_two_writes_of_a_completion_loses_nothing(tmp_path):
    """Completion writes the completed file, then the in-progress file: stop after the first."""
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.close()
    inprogress_before = (tmp_path / "inprogress.json").read_bytes()
    store = await TinyDBStore.open(tmp_path, "local")
    await store.update_job("1", JobChange(status="completed"))
    await store.close()
    (tmp_path / "inprogress.json").write_bytes(inprogress_before)  # the second write never happened

    store = await TinyDBStore.open(tmp_path, "local")
    jobs = await listed(store.find_jobs(JobQuery()))
    assert [(job["jobId"], job["status"]) for job in jobs] == [("1", "completed")]
    assert await listed(store.find_jobs(JobQuery(ignore_completed=True))) == []
    assert not await store.target_in_progress("local", "MY_DATASET")
    await store.close()


async def test_concurrent_inserts_on_one_target_store_exactly_one(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    results = await asyncio.gather(*(store.insert_job(stored_job(str(n))) for n in range(20)), return_exceptions=True)
    assert sum(result is None for result in results) == 1
    assert sum(isinstance(result, TargetBusy) for result in results) == 19
    assert len(await listed(store.find_jobs(JobQuery()))) == 1
    await store.close()


async def test_returned_jobs_are_copies_the_store_does_not_share(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    job = await store.get_job("1")
    await store.update_job("1", JobChange(status="built", log=[{"at": "t", "message": "Set status: built"}]))
    assert job["status"] == "queued" and job["log"] == []
    await store.close()


def test_files_are_plain_json_per_collection(tmp_path):
    async def write():
        store = await TinyDBStore.open(Path(tmp_path), "local")
        await store.insert_job(stored_job("1"))
        await store.close()

    asyncio.run(write())
    stored = json.loads((tmp_path / "inprogress.json").read_text())
    assert [job["jobId"] for job in stored["_default"].values()] == ["1"]


async def test_a_failing_disk_is_a_500_that_leaks_nothing_and_loses_nothing(make_client, tmp_path, caplog):
    """A directory where the store writes its temporary file makes every write fail for real."""
    client = await make_client()
    [kept] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "KEPT"}]})).json()
    blocker = tmp_path / "data" / "inprogress.json.tmp"
    blocker.mkdir()

    response = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "LOST"}]}, headers={"X-Request-ID": "req-500"}
    )
    assert response.status == 500
    assert await response.json() == {"message": "Internal Server Error"}
    assert response.headers["X-Request-ID"] == "req-500"
    assert "IsADirectoryError" in caplog.text and "inprogress.json failed" in caplog.text

    blocker.rmdir()
    jobs = await (await client.get("/jobs")).json()
    assert [job["jobId"] for job in jobs] == [kept["job_id"]]


async def test_a_completion_cut_short_by_a_failing_disk_is_finished_not_repeated(make_client, tmp_path):
    """The completed set is written, then writing the in-progress file fails: the
    job must end up completed once, and a retry of the PUT must not add it again."""
    client = await make_client()
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})).json()
    job_id = created["job_id"]
    blocker = tmp_path / "data" / "inprogress.json.tmp"
    blocker.mkdir()
    assert (await client.put(f"/jobs/{job_id}", json={"status": "completed"})).status == 500
    blocker.rmdir()

    retry = await client.put(f"/jobs/{job_id}", json={"status": "completed"})
    assert (retry.status, await retry.json()) == (409, {"message": f"Job {job_id} is already completed"})
    assert [job["jobId"] for job in await (await client.get("/jobs")).json()] == [job_id]
    assert await (await client.get("/jobs?ignoreCompleted=true")).json() == []
    [again] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})).json()
    assert again["msg"] == "CREATED"
    await client.close()

    store = await TinyDBStore.open(tmp_path / "data", "local")
    assert [job["status"] for job in await listed(store.jobs_for_target("local", "MY_DATASET"))] == [
        "completed",
        "queued",
    ]
    await store.close()


async def test_the_completed_set_spreads_over_segments_and_reopens_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(tinydb_backend, "SEGMENT_SIZE", 3)
    store = await TinyDBStore.open(tmp_path, "local")
    for n in range(10):
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{n}"))
        await store.update_job(f"{n:06d}", JobChange(status="completed" if n % 2 else "failed"))
    await store.close()
    assert len(list((tmp_path / "completed").glob("*.json"))) == 4

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == [f"{n:06d}" for n in range(10)]
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery(status="failed")))] == [
        f"{n:06d}" for n in range(0, 10, 2)
    ]
    assert (await store.get_job("000007"))["status"] == "completed"
    assert [job["jobId"] for job in await listed(store.jobs_for_target("local", "T4"))] == ["000004"]
    assert (await store.stats()).completed == 10
    await store.close()


async def test_a_completion_rewrites_only_the_newest_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(tinydb_backend, "SEGMENT_SIZE", 2)
    store = await TinyDBStore.open(tmp_path, "local")
    for n in range(4):
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{n}"))
        await store.update_job(f"{n:06d}", JobChange(status="completed"))
    first = tmp_path / "completed" / "00000001.json"
    written = first.stat().st_mtime_ns, first.read_bytes()
    await store.insert_job(stored_job("000004", target="T4"))
    await store.update_job("000004", JobChange(status="completed"))
    assert (first.stat().st_mtime_ns, first.read_bytes()) == written
    await store.close()


async def test_a_failed_store_operation_is_counted_in_metrics(make_client, tmp_path):
    client = await make_client()
    (tmp_path / "data" / "inprogress.json.tmp").mkdir()
    assert (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "A"}]})).status == 500
    metrics = await (await client.get("/metrics")).text()
    assert 'store_operation_errors_total{operation="insert_job"} 1.0' in metrics
