"""The BUMP preview: `GET /datastores/{rdn}/bump-preview` says which version a BUMP makes, what it
releases, removes and leaves in the draft, what blocks one now, and the BUMP to post."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import (
    access_claims,
    cookies_for,
    create_job,
    datastore_version,
    put_job,
    update,
    write_version_files,
)

FILES_ONLY = pytest.mark.parametrize("backend", ["tinydb"])
FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data", "bumpEnabled": True}
PREVIEW = "/datastores/no.ssb.fdb/bump-preview"


async def provision(client, **overrides: Any) -> tuple[Path, str]:
    """A provisioned datastore: its directory, and its keys job (in progress)."""
    response = await client.post("/datastores", json={**FDB, **overrides})
    assert response.status == 200, await response.text()
    [datastore] = [d for d in await (await client.get("/datastores")).json() if d["rdn"] == FDB["rdn"]]
    return Path(datastore["directory"]), (await response.json())["job_id"]


@pytest.fixture
async def fdb(client) -> Path:
    """A provisioned datastore that may bump, its keys job done: its directory."""
    directory, keys_job = await provision(client)
    await put_job(client, keys_job, status="completed")
    return directory


async def preview(client, path: str = PREVIEW) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


def codes(answer: dict[str, Any]) -> list[str]:
    return [blocker["code"] for blocker in answer["blockers"]]


@FILES_ONLY
async def test_the_preview_says_what_a_bump_makes_and_gives_the_bump_to_post(client, fdb):
    new = update("NEW", "ADD", "PENDING_RELEASE", "first")
    leaving = update("LEAVING", "REMOVE", "PENDING_DELETE", "gone")
    wip = update("WIP", "CHANGE", "DRAFT", "not yet")
    draft = datastore_version(new, leaving, wip, number="0.0.0.1700000001", update_type="MAJOR")
    write_version_files(fdb, draft, datastore_version(update("LEAVING", "ADD", "RELEASED"), number="1.2.3.0"))

    answer = await preview(client)
    assert answer == {
        "datastoreRdn": "no.ssb.fdb",
        "fromVersion": "1.2.3",
        "toVersion": "2.0.0",  # a REMOVE: a major version
        "updateType": "MAJOR",
        "released": [new],
        "removed": [leaving],
        "staysDraft": [wip],
        "blockers": [],
        "job": {
            "operation": "BUMP",
            "target": "DATASTORE",
            "description": "Version 2.0.0",
            "bumpFromVersion": "1.2.3",
            "bumpToVersion": "2.0.0",
            "bumpManifesto": draft,
        },
    }

    # The job, posted as it is: nothing the executor would refuse, and stored.
    dry = await client.post("/datastores/no.ssb.fdb/jobs?dryRun=true", json={"jobs": [answer["job"]]})
    assert await dry.json() == [{"status": "queued", "msg": "WOULD_CREATE", "checks": []}]
    job_id = await create_job_in(client, answer["job"])
    assert (await client.get(f"/jobs/{job_id}")).status == 200

    # Now the datastore's target is held until that BUMP is done.
    assert codes(await preview(client)) == ["TARGET_BUSY"]


async def create_job_in(client, job: dict[str, Any]) -> str:
    [result] = await (await client.post("/datastores/no.ssb.fdb/jobs", json={"jobs": [job]})).json()
    assert result["msg"] == "CREATED", result
    return result["job_id"]


@FILES_ONLY
@pytest.mark.parametrize(
    ("operations", "update_type", "to_version"),
    [
        (["ADD"], "MINOR", "1.3.0"),
        (["PATCH_METADATA"], "PATCH", "1.2.4"),
        (["ADD", "PATCH_METADATA"], "MINOR", "1.3.0"),
        (["CHANGE", "ADD"], "MAJOR", "2.0.0"),
    ],
)
async def test_the_version_follows_the_executors_update_type_rules(client, fdb, operations, update_type, to_version):
    pending = [update(f"DATASET_{n}", operation, "PENDING_RELEASE") for n, operation in enumerate(operations)]
    write_version_files(fdb, datastore_version(*pending), datastore_version(number="1.2.3.0"))
    answer = await preview(client)
    assert (answer["fromVersion"], answer["updateType"], answer["toVersion"]) == ("1.2.3", update_type, to_version)


@FILES_ONLY
async def test_the_first_version_is_1_0_0_whatever_it_holds(client, fdb):
    write_version_files(fdb, datastore_version(update("FIRST", "PATCH_METADATA", "PENDING_RELEASE")))
    answer = await preview(client)
    assert (answer["fromVersion"], answer["updateType"], answer["toVersion"]) == ("0.0.0", "MAJOR", "1.0.0")
    assert answer["job"]["bumpFromVersion"] == "0.0.0"


@FILES_ONLY
async def test_a_draft_with_nothing_pending_has_nothing_to_post(client, fdb):
    wip = update("WIP", "ADD", "DRAFT")
    write_version_files(fdb, datastore_version(wip), datastore_version(number="1.0.0.0"))
    answer = await preview(client)
    assert codes(answer) == ["NOTHING_PENDING"]
    assert (answer["toVersion"], answer["updateType"], answer["job"]) == (None, None, None)
    assert (answer["fromVersion"], answer["staysDraft"]) == ("1.0.0", [wip])


@FILES_ONLY
async def test_a_stale_manifesto_is_found_out_once_the_draft_changes(client, fdb):
    versions = [datastore_version(update("OLD", "ADD", "RELEASED"))]
    write_version_files(fdb, datastore_version(update("NEW", "ADD", "PENDING_RELEASE")), *versions)
    job = (await preview(client))["job"]

    # Another administrator sets OLD for removal meanwhile: the executor would fail the BUMP.
    draft = datastore_version(update("NEW", "ADD", "PENDING_RELEASE"), update("OLD", "REMOVE", "PENDING_DELETE"))
    write_version_files(fdb, draft, *versions)
    [result] = await (await client.post("/datastores/no.ssb.fdb/jobs?dryRun=true", json={"jobs": [job]})).json()
    assert [check["code"] for check in result["checks"]] == ["BUMP_MANIFESTO_STALE"]
    assert "pending in the draft but not in the manifesto: OLD" in result["checks"][0]["message"]
    assert (await preview(client))["toVersion"] == "2.0.0"


async def test_a_freshly_provisioned_datastore_that_may_not_bump_is_blocked_twice(client):
    await provision(client, bumpEnabled=False)  # its keys job holds the DATASTORE target
    answer = await preview(client)
    assert codes(answer) == ["BUMP_DISABLED", "TARGET_BUSY", "NOTHING_PENDING"]
    assert answer["fromVersion"] == "0.0.0" and answer["job"] is None


async def test_the_default_datastore_has_its_preview_too(client):
    [default] = [d for d in await (await client.get("/datastores")).json() if d["rdn"] == "local"]
    write_version_files(Path(default["directory"]), datastore_version(update("A", "ADD", "PENDING_RELEASE")))
    await create_job(client, operation="ADD", target="A")  # a dataset's job holds nothing of a BUMP's
    answer = await preview(client, "/datastores/local/bump-preview")
    assert codes(answer) == ["BUMP_DISABLED"]  # [jobs] bump_enabled is off by default
    assert answer["toVersion"] == "1.0.0"


@FILES_ONLY
@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: (folder / "draft_version.json").unlink(),
        lambda folder: (folder / "datastore_versions.json").write_text('{"versions": [{"version": "one"}]}'),
        lambda folder: (folder / "draft_version.json").write_text('{"dataStructureUpdates": []}'),
    ],
    ids=["draft missing", "version not a number", "draft without its keys"],
)
async def test_unreadable_version_files_are_a_blocker_not_a_503(client, fdb, damage):
    write_version_files(fdb, datastore_version(update("A", "ADD", "PENDING_RELEASE")), datastore_version())
    damage(fdb / "datastore")
    answer = await preview(client)
    assert codes(answer) == ["DATASTORE_FILES_UNREADABLE"]
    assert answer["blockers"][0]["message"].endswith("what a BUMP would do is not known")
    assert (answer["fromVersion"], answer["toVersion"], answer["job"], answer["released"]) == (None, None, None, [])


@pytest.mark.parametrize(
    ("path", "status"), [("/datastores/no.such/bump-preview", 404), ("/datastores/No.Such/bump-preview", 400)]
)
async def test_an_unknown_or_invalid_datastore_is_refused(client, path, status):
    response = await client.get(path)
    assert response.status == status
    assert "message" in await response.json()


def admin_claims(*datastores: str) -> dict[str, Any]:
    return access_claims(aud=["datastore-api-jobs", *datastores])


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_only_administrators_of_the_datastore_see_its_preview(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(audience="datastore-api-jobs")
    assert (await client.get("/datastores/local/bump-preview")).status == 401
    elsewhere = cookies_for(keys, access=admin_claims("no.ssb"))
    assert (await client.get("/datastores/local/bump-preview", cookies=elsewhere)).status == 403
    here = cookies_for(keys, access=admin_claims("local"))
    assert (await client.get("/datastores/local/bump-preview", cookies=here)).status == 200
