"""`job-service export` and `import`: a backup, and the way from TinyDB to MongoDB."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import bump_job, create_job, put_job, run_job_service, service_config, write_config
from pymongo import MongoClient


@pytest.fixture
def backend() -> str:
    """The store filled over HTTP here is TinyDB; the MongoDB side is configured by hand."""
    return "tinydb"


@pytest.fixture
def tinydb_config(tmp_path, storage, input_dir) -> Path:
    return write_config(tmp_path / "tinydb.toml", service_config(storage, input_dir))


@pytest.fixture
def mongodb_config(tmp_path, mongodb_url, input_dir):
    database = f"test_{uuid.uuid4().hex[:16]}"
    storage = {"backend": "mongodb", "mongodb": {"url": mongodb_url, "database": database}}
    yield write_config(tmp_path / "mongodb.toml", service_config(storage, input_dir))
    with MongoClient(mongodb_url) as client:
        client.drop_database(database)


async def fill_store(make_client) -> None:
    """Some of everything: jobs in progress and final, a completed BUMP, targets, maintenance."""
    client = await make_client(jobs={"bump_enabled": True})
    queued = await create_job(client, operation="ADD", target="QUEUED_DATASET", description="ny")
    await put_job(client, queued, status="validating", log="Reading ✓ metadata")
    done = await create_job(client, operation="SET_STATUS", target="DONE", releaseStatus="PENDING_RELEASE")
    await put_job(client, done, status="completed")
    bump = await create_job(client, **bump_job())
    await put_job(client, bump, status="completed")
    for n in range(3):
        await client.post("/maintenance-status", json={"msg": f"status {n}", "paused": n == 1})
    await client.close()


async def test_a_round_trip_tinydb_to_mongodb_is_identical(make_client, tinydb_config, mongodb_config, tmp_path):
    await fill_store(make_client)
    from_tinydb, from_mongodb = tmp_path / "from-tinydb.jsonl", tmp_path / "from-mongodb.jsonl"

    exported = run_job_service(tinydb_config, "export", "--to", str(from_tinydb))
    assert exported.returncode == 0, exported.stderr
    # 3 jobs, 4 targets, 3 posted maintenance statuses and the initial one stored at start
    assert exported.stdout.strip() == f"exported 12 documents to {from_tinydb}"
    imported = run_job_service(mongodb_config, "import", "--from", str(from_tinydb))
    assert imported.returncode == 0, imported.stderr
    assert run_job_service(mongodb_config, "export", "--to", str(from_mongodb)).returncode == 0

    assert from_tinydb.read_text() == from_mongodb.read_text()
    lines = from_tinydb.read_text().splitlines()
    assert len(lines) == 12 and "Reading ✓ metadata" in from_tinydb.read_text()


async def test_import_refuses_a_store_that_is_not_empty_unless_told(make_client, tinydb_config, tmp_path):
    await fill_store(make_client)
    backup = tmp_path / "backup.jsonl"
    assert run_job_service(tinydb_config, "export", "--to", str(backup)).returncode == 0

    refused = run_job_service(tinydb_config, "import", "--from", str(backup))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "job-service: the destination store is not empty; add --replace to empty it first"
    )
    replaced = run_job_service(tinydb_config, "import", "--from", str(backup), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    again = tmp_path / "again.jsonl"
    assert run_job_service(tinydb_config, "export", "--to", str(again)).returncode == 0
    assert again.read_text() == backup.read_text()


@pytest.mark.parametrize(
    "content",
    ['{"collection": "jobs", "document": {}}\n', "not json\n", '{"collection": "targets"}\n', "[1]\n"],
)
def test_a_bad_export_file_is_refused_before_anything_is_written(tinydb_config, tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"collection": "targets", "document": {"name": "A"}}\n' + content)
    result = run_job_service(tinydb_config, "import", "--from", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"job-service: {path}:2: ")
    assert not Path(tinydb_config.parent / "data" / "targets.json").exists()
