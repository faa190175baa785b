"""`job-service export` and `import`: a backup, and the way from TinyDB to MongoDB."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from helpers import bump_job, create_job, put_job, run_job_service, said, service_config, write_config
from pymongo import MongoClient

FDB = "no.ssb.fdb"


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
    """Some of everything: a datastore, jobs in progress and final, a completed BUMP, targets, maintenance."""
    client = await make_client(jobs={"bump_enabled": True})
    # The datastore, its keys job in progress and the job's target DATASTORE.
    response = await client.post("/datastores", json={"rdn": FDB, "name": "Forskning", "description": "d"})
    assert response.status == 200, await response.text()
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
    # 1 datastore, 4 jobs, 6 targets, 3 posted maintenance statuses and the initial one stored at start,
    # and the audit trail of the 7 requests that did it
    assert said(exported.stdout) == [f"exported 22 documents to {from_tinydb}"]
    imported = run_job_service(mongodb_config, "import", "--from", str(from_tinydb))
    assert imported.returncode == 0, imported.stderr
    assert run_job_service(mongodb_config, "export", "--to", str(from_mongodb)).returncode == 0

    assert from_tinydb.read_text() == from_mongodb.read_text()
    lines = from_tinydb.read_text().splitlines()
    assert len(lines) == 22 and "Reading ✓ metadata" in from_tinydb.read_text()


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
    path.write_text(
        '{"collection": "maintenance", "document": {"msg": "m", "paused": false, "timestamp": "t"}}\n' + content
    )
    result = run_job_service(tinydb_config, "import", "--from", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"job-service: {path}:2: ")
    assert not Path(tinydb_config.parent / "data" / "maintenance.json").exists()


@pytest.fixture(params=["tinydb", "mongodb"])
def destination(request, tmp_path, input_dir):
    """A config of an empty store of each backend to import into, and a look at what it holds."""
    if request.param == "tinydb":
        data = tmp_path / "destination"
        storage = {"backend": "tinydb", "tinydb": {"path": str(data)}}
        yield (
            write_config(tmp_path / "destination.toml", service_config(storage, input_dir)),
            lambda: sorted(path.name for path in data.rglob("*") if path.is_file() and path.name != "job-service.lock"),
        )
        return
    url, database = request.getfixturevalue("mongodb_url"), f"test_{uuid.uuid4().hex[:16]}"
    storage = {"backend": "mongodb", "mongodb": {"url": url, "database": database}}
    with MongoClient(url) as client:

        def held():
            return sorted(
                name for name in client[database].list_collection_names() if client[database][name].find_one()
            )

        yield write_config(tmp_path / "destination.toml", service_config(storage, input_dir)), held
        client.drop_database(database)


def edit_first(lines: list[dict], collection: str, change) -> int:
    """Apply `change` to the document of the first line of `collection`; that line's number."""
    number = next(number for number, line in enumerate(lines, start=1) if line["collection"] == collection)
    change(lines[number - 1]["document"])
    return number


def without(name):
    return lambda document: document.pop(name)


def setting(name, value):
    return lambda document: document.update({name: value})


#: Hand edits of one line, each a document the API could never serve, with what the refusal says.
HAND_EDITS = {
    "a completed job without createdAt": ("completed", without("createdAt"), "has no text createdAt"),
    "a datastore without deleted": ("datastores", without("deleted"), "has no deleted that is true or false"),
    "a maintenance status paused yes": ("maintenance", setting("paused", "yes"), "has no paused that is true or false"),
    "a completed job with status queued": ("completed", setting("status", "queued"), "'queued' is not a final status"),
    "a non-text jobId": ("completed", setting("jobId", 7), "has no text jobId"),
    "a job in progress without parameters": ("inprogress", without("parameters"), "has no parameters"),
    "a target without name": ("targets", without("name"), "has no text name"),
    "an rdn ../../etc": ("datastores", setting("rdn", "../../etc"), "rdn: "),
    "a job with an unknown status": ("inprogress", setting("status", "paused"), "'paused' is not a job status"),
    "a log line with a key of its own": (
        "completed",
        lambda job: job["log"][0].update(level="info"),
        "log.0.level: Unknown field.",
    ),
    "a target of a datastore not there": ("targets", setting("datastoreRdn", "no.ssb.gone"), "no.ssb.gone is neither"),
    "a job in progress in a deleted datastore": ("datastores", setting("deleted", True), "which is deleted"),
}


@pytest.mark.parametrize("edit", HAND_EDITS)
async def test_an_export_with_one_hand_edited_line_is_refused_in_one_line_before_anything_is_written(
    make_client, tinydb_config, destination, tmp_path, edit
):
    await fill_store(make_client)
    backup = tmp_path / "backup.jsonl"
    assert run_job_service(tinydb_config, "export", "--to", str(backup)).returncode == 0
    lines = [json.loads(line) for line in backup.read_text().splitlines()]
    collection, change, expected = HAND_EDITS[edit]
    number = edit_first(lines, collection, change)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config, held = destination

    result = run_job_service(config, "import", "--from", str(edited))

    assert result.returncode == 1, result.stdout
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"job-service: {edited}:"), message
    assert expected in message
    if "neither" not in expected and "deleted" not in expected:
        assert message.startswith(f"job-service: {edited}:{number}: {collection}: "), message
    assert held() == []
    # The store opens, and the file as exported goes in whole.
    imported = run_job_service(config, "import", "--from", str(backup))
    assert imported.returncode == 0, imported.stderr
    assert said(imported.stdout) == [f"imported 22 documents from {backup}"]


def test_two_jobs_in_progress_on_one_target_are_refused_naming_both_lines(tinydb_config, destination, tmp_path):
    job = {
        "jobId": "1",
        "datastoreRdn": "local",
        "status": "queued",
        "parameters": {"operation": "ADD", "target": "TWICE"},
        "log": [],
        "createdAt": "2026-11-29T10:00:00.000001+00:00",
        "createdBy": {"userId": "u", "firstName": "F", "lastName": "L"},
    }
    path = tmp_path / "twice.jsonl"
    lines = [{"collection": "inprogress", "document": {**job, "jobId": job_id}} for job_id in ("1", "2")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config, held = destination
    result = run_job_service(config, "import", "--from", str(path))
    assert result.stderr.strip() == (
        f"job-service: {path}:2: inprogress: a second job in progress on target TWICE of datastore local"
        f" (the first: {path}:1): one job in progress per target"
    )
    assert held() == []


async def test_replace_empties_a_store_that_does_not_open(make_client, tinydb_config, destination, tmp_path):
    """What an import of today's release could leave: a store that refuses to start."""
    await fill_store(make_client)
    backup = tmp_path / "backup.jsonl"
    assert run_job_service(tinydb_config, "export", "--to", str(backup)).returncode == 0
    config, _ = destination
    assert run_job_service(config, "import", "--from", str(backup)).returncode == 0
    spoil_in_progress_job(config)
    assert run_job_service(config, "export", "--to", str(tmp_path / "again.jsonl")).returncode == 1

    replaced = run_job_service(config, "import", "--from", str(backup), "--replace")

    assert replaced.returncode == 0, replaced.stderr
    emptied, imported = said(replaced.stdout)
    assert emptied.startswith("emptied the ") and "inprogress" in emptied
    assert imported == f"imported 22 documents from {backup}"
    again = tmp_path / "again.jsonl"
    assert run_job_service(config, "export", "--to", str(again)).returncode == 0
    assert again.read_text() == backup.read_text()


def spoil_in_progress_job(config: Path) -> None:
    """Take the parameters from every job in progress, by hand, behind the store's back."""
    import tomllib

    storage = tomllib.loads(config.read_text())["storage"]
    if storage["backend"] == "tinydb":
        path = Path(storage["tinydb"]["path"]) / "inprogress.json"
        table = json.loads(path.read_text())
        for document in table["_default"].values():
            del document["parameters"]
        path.write_text(json.dumps(table))
        return
    with MongoClient(storage["mongodb"]["url"]) as client:
        client[storage["mongodb"]["database"]].inprogress.update_many({}, {"$unset": {"parameters": ""}})


async def test_a_retry_link_travels_as_the_retrys_retry_of_alone(make_client, tinydb_config, mongodb_config, tmp_path):
    client = await make_client()
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await put_job(client, job_id, status="failed", log="The disk was full")
    retry_id = (await (await client.post(f"/jobs/{job_id}/retry")).json())["job_id"]
    await put_job(client, retry_id, status="completed")
    await client.close()
    from_tinydb, from_mongodb = tmp_path / "from-tinydb.jsonl", tmp_path / "from-mongodb.jsonl"

    assert run_job_service(tinydb_config, "export", "--to", str(from_tinydb)).returncode == 0
    jobs = [line["document"] for line in map(json.loads, from_tinydb.read_text().splitlines())]
    assert [job.get("retryOf") for job in jobs if "jobId" in job] == [None, job_id]
    assert not any("retriedBy" in job for job in jobs)
    assert run_job_service(mongodb_config, "import", "--from", str(from_tinydb)).returncode == 0
    assert run_job_service(mongodb_config, "export", "--to", str(from_mongodb)).returncode == 0
    assert from_tinydb.read_text() == from_mongodb.read_text()
