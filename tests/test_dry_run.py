"""Dry runs: `POST /jobs?dryRun=true` judges every entry as a real POST would, stores nothing,
and says of each what the executor would say, from the datastore's version files and archives."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    bump_job,
    create_job,
    dataset_archive,
    datastore_version,
    put_job,
    update,
    write_version_files,
)

#: The version files and archives are files: the same on every backend.
FILES_ONLY = pytest.mark.parametrize("backend", ["tinydb"])
FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data", "bumpEnabled": True}
FDB_JOBS = "/datastores/no.ssb.fdb/jobs"


@pytest.fixture
async def fdb(client) -> Path:
    """A provisioned datastore that may bump, its keys job done: its directory."""
    response = await client.post("/datastores", json=FDB)
    assert response.status == 200, await response.text()
    await put_job(client, (await response.json())["job_id"], status="completed")
    [datastore] = [d for d in await (await client.get("/datastores")).json() if d["rdn"] == "no.ssb.fdb"]
    return Path(datastore["directory"])


async def dry_run(client, *jobs: dict[str, Any], path: str = FDB_JOBS) -> list[dict[str, Any]]:
    response = await client.post(f"{path}?dryRun=true", json={"jobs": list(jobs)})
    assert response.status == 200, await response.text()
    return await response.json()


def found(result: dict[str, Any]) -> list[tuple[str, str]]:
    """A result's checks as (level, code)."""
    return [(check["level"], check["code"]) for check in result["checks"]]


async def store_state(client, datastore: str = "no.ssb.fdb") -> tuple[Any, ...]:
    paths = ("/jobs", f"/datastores/{datastore}/jobs", "/targets", f"/datastores/{datastore}/targets")
    return tuple([await (await client.get(path)).json() for path in paths])


@FILES_ONLY
async def test_a_dry_run_says_of_each_entry_what_the_executor_would_say(client, fdb):
    write_version_files(
        fdb,
        datastore_version(update("IN_DRAFT", "ADD", "DRAFT"), update("LEAVING", "REMOVE", "PENDING_DELETE")),
        datastore_version(update("RELEASED_ONE", "ADD", "RELEASED"), update("GONE", "REMOVE", "DELETED")),
    )
    inbox = Path(f"{fdb}_input")
    dataset_archive(inbox, "NEW")
    dataset_archive(inbox, "NO_CHUNKS", data=False)
    dataset_archive(inbox, "FRESH", data=False)
    dataset_archive(inbox, "RELEASED_ONE")

    results = await dry_run(
        client,
        {"operation": "ADD", "target": "NEW"},
        {"operation": "ADD", "target": "MISSING"},
        {"operation": "ADD", "target": "NO_CHUNKS"},
        {"operation": "ADD", "target": "RELEASED_ONE"},
        {"operation": "CHANGE", "target": "FRESH"},
        {"operation": "SET_STATUS", "target": "IN_DRAFT", "releaseStatus": "PENDING_DELETE"},
        {"operation": "SET_STATUS", "target": "LEAVING", "releaseStatus": "PENDING_DELETE"},
        {"operation": "REMOVE", "target": "GONE", "description": "once more"},
        bump_job(),
        {"operation": "ADD", "target": "NEW"},
        {"operation": "ADD"},
    )

    assert [(result["status"], result["msg"]) for result in results] == [
        *[("queued", "WOULD_CREATE")] * 9,
        ("FAILED", "FAILED: Job with target NEW already in progress"),  # as a real POST: the first holds it
        ("FAILED", "FAILED: target: Missing data for required field."),
    ]
    assert all("job_id" not in result for result in results)
    assert [found(result) for result in results] == [
        [],
        [("error", "ARCHIVE_MISSING")],
        [("error", "NO_DATA")],
        [("error", "ALREADY_RELEASED_USE_CHANGE")],
        [("error", "NO_DATA"), ("error", "NOT_RELEASED_USE_ADD")],
        [("error", "RELEASE_STATUS_NOT_ALLOWED")],
        [("warning", "RELEASE_STATUS_NOT_ALLOWED")],
        [("error", "RELEASE_STATUS_NOT_ALLOWED")],
        [("error", "BUMP_MANIFESTO_STALE")],
        [("error", "TARGET_BUSY")],
        [],
    ]
    messages = [check["message"] for result in results for check in result["checks"]]
    assert "RELEASED_ONE is released: post CHANGE for new data and metadata" in messages[2]
    assert "IN_DRAFT is in the draft by operation ADD: a SET_STATUS may make it DRAFT or PENDING_RELEASE" in messages[5]
    assert messages[8].startswith(
        'The executor will fail it, saying "Changes were made to the datastore after bump was requested":'
        " pending in the manifesto but not so in the draft: NEW_DATASET, OLD_DATASET;"
        " pending in the draft but not in the manifesto: LEAVING"
    )


async def test_a_dry_run_stores_nothing(client, input_dir):
    held = await create_job(client, operation="ADD", target="HELD")
    before = await store_state(client, "local")
    results = await dry_run(
        client,
        {"operation": "ADD", "target": "NEW"},
        {"operation": "ADD", "target": "HELD"},
        {"operation": "SET_STATUS", "target": "OTHER", "releaseStatus": "PENDING_RELEASE"},
        path="/jobs",
    )
    assert [(result["status"], result["msg"]) for result in results] == [
        ("queued", "WOULD_CREATE"),
        ("FAILED", "FAILED: Job with target HELD already in progress"),
        ("queued", "WOULD_CREATE"),
    ]
    assert ("error", "TARGET_BUSY") in found(results[1])
    assert await store_state(client, "local") == before
    [job] = before[0]
    assert job["jobId"] == held


async def test_a_dry_run_of_a_bump_while_bumping_is_disabled_is_refused_as_a_real_post_is(client):
    [result] = await dry_run(client, bump_job(), path="/jobs")
    assert (result["status"], result["msg"]) == ("FAILED", "FAILED: Bumping the datastore is disabled")
    assert ("error", "BUMP_DISABLED") in found(result)
    assert await (await client.get("/jobs")).json() == []


@FILES_ONLY
async def test_a_bump_with_nothing_pending_is_found_out(client, fdb):
    write_version_files(fdb, datastore_version(update("WIP", "ADD", "DRAFT")), datastore_version())
    manifesto = {**bump_job()["bumpManifesto"], "dataStructureUpdates": [update("WIP", "ADD", "DRAFT")]}
    [result] = await dry_run(client, bump_job(bumpManifesto=manifesto))
    assert result["msg"] == "WOULD_CREATE"
    assert found(result) == [("error", "NOTHING_PENDING")]


@FILES_ONLY
async def test_the_executor_imports_the_archived_upload_when_there_is_one(client, fdb):
    write_version_files(fdb, datastore_version(), datastore_version(update("MY_DATASET", "ADD", "RELEASED")))
    inbox = Path(f"{fdb}_input")
    dataset_archive(inbox, "MY_DATASET")
    dataset_archive(inbox, "MY_DATASET", data=False, archived=True)
    change, patch = await dry_run(
        client, {"operation": "CHANGE", "target": "MY_DATASET"}, {"operation": "PATCH_METADATA", "target": "OTHER"}
    )
    assert found(change) == [("error", "NO_DATA")]
    assert change["checks"][0]["message"].startswith("archive/MY_DATASET.tar holds no data (chunks/)")
    assert found(patch) == [("error", "ARCHIVE_MISSING"), ("error", "NOT_RELEASED_USE_ADD")]


@FILES_ONLY
async def test_the_checks_follow_the_version_files_as_the_executor_changes_them(client, fdb):
    write_version_files(fdb, datastore_version(), datastore_version())
    dataset_archive(Path(f"{fdb}_input"), "MY_DATASET")
    add = {"operation": "ADD", "target": "MY_DATASET"}
    assert found((await dry_run(client, add))[0]) == []

    write_version_files(fdb, datastore_version(), datastore_version(update("MY_DATASET", "ADD", "RELEASED")))
    assert found((await dry_run(client, add))[0]) == [("error", "ALREADY_RELEASED_USE_CHANGE")]


@FILES_ONLY
@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: (folder / "draft_version.json").unlink(),
        lambda folder: (folder / "datastore_versions.json").write_text("{half"),
        # The listing of importable datasets reads it; the executor's model needs every key of an update.
        lambda folder: (folder / "draft_version.json").write_text(
            '{"version": "1.0.0.0", "description": "", "releaseTime": 0, "languageCode": "no", "updateType": null,'
            ' "dataStructureUpdates": [{"name": "A", "releaseStatus": "DRAFT"}]}'
        ),
    ],
    ids=["draft missing", "versions not JSON", "update without operation"],
)
async def test_unreadable_version_files_are_a_warning_and_refuse_nothing(client, fdb, damage):
    write_version_files(fdb, datastore_version(), datastore_version())
    damage(fdb / "datastore")
    [result] = await dry_run(client, {"operation": "SET_STATUS", "target": "A", "releaseStatus": "PENDING_RELEASE"})
    assert result["msg"] == "WOULD_CREATE"
    assert found(result) == [("warning", "DATASTORE_FILES_UNREADABLE")]
    assert "what the executor will say of this SET_STATUS is not known" in result["checks"][0]["message"]


async def test_a_real_post_answers_as_before_and_logs_and_counts_what_the_checks_find(client, caplog):
    caplog.set_level(logging.WARNING, logger="job_service")
    response = await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "NOT_UPLOADED"}]})
    assert response.status == 200
    [result] = await response.json()
    assert set(result) == {"status", "msg", "job_id"} and result["msg"] == "CREATED"

    [line] = [record.getMessage() for record in caplog.records if "the checks say" in record.getMessage()]
    assert f"Stored job {result['job_id']} (ADD of NOT_UPLOADED)" in line
    assert "error ARCHIVE_MISSING" in line and "warning DATASTORE_FILES_UNREADABLE" in line
    metrics = await (await client.get("/metrics")).text()
    assert 'job_checks_total{code="ARCHIVE_MISSING",level="error"} 1.0' in metrics
    assert 'job_checks_total{code="DATASTORE_FILES_UNREADABLE",level="warning"} 1.0' in metrics


@pytest.mark.parametrize("query", ["dryRun=yes", "dryRun=1", "dryRun=", "dryRun=true&dryRun=false", "dryrun=true"])
async def test_a_bad_dry_run_parameter_is_a_400_and_stores_nothing(client, query):
    response = await client.post(f"/jobs?{query}", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})
    assert response.status == 400
    assert "dryRun" in (await response.json())["message"]
    assert await (await client.get("/jobs")).json() == []


async def test_dry_run_takes_true_and_false_in_any_letter_case(client):
    job = {"operation": "ADD", "target": "MY_DATASET"}
    [result] = await (await client.post("/jobs?dryRun=TRUE", json={"jobs": [job]})).json()
    assert result["msg"] == "WOULD_CREATE"
    [result] = await (await client.post("/jobs?dryRun=False", json={"jobs": [job]})).json()
    assert result["msg"] == "CREATED"


async def test_a_dry_run_on_an_unknown_datastore_is_a_404(client):
    response = await client.post("/datastores/no.such/jobs?dryRun=true", json={"jobs": []})
    assert response.status == 404
    assert await response.json() == {"message": "No datastore found for datastore_rdn: no.such"}


async def test_the_api_document_describes_dry_runs_and_their_checks(client):
    document = await (await client.get("/openapi.json")).json()
    for path in ("/jobs", "/datastores/{rdn}/jobs"):
        assert "dryRun" in [parameter["name"] for parameter in document["paths"][path]["post"]["parameters"]]
    schemas = document["components"]["schemas"]
    assert "checks" in schemas["PostJobResult"]["properties"]
    assert "BUMP_MANIFESTO_STALE" in schemas["Check"]["properties"]["code"]["enum"]
