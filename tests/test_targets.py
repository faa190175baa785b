"""`/targets`: the last action on every dataset, and the jobs that touched it."""

from __future__ import annotations

import pytest
from helpers import bump_job, create_job, put_job


async def test_a_new_job_records_its_target(client):
    await create_job(client, operation="SET_STATUS", target="MY_DATASET", releaseStatus="PENDING_RELEASE")

    response = await client.get("/targets/MY_DATASET")
    assert response.status == 200
    target = await response.json()
    assert target["name"] == "MY_DATASET"
    assert target["status"] == "queued"
    assert target["action"] == ["SET_STATUS", "PENDING_RELEASE"]
    assert target["lastUpdatedBy"]["userId"] == "local-user"


async def test_every_update_refreshes_the_target(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    before = await (await client.get("/targets/MY_DATASET")).json()
    await put_job(client, job_id, status="importing")

    after = await (await client.get("/targets/MY_DATASET")).json()
    assert after["status"] == "importing"
    assert after["action"] == ["ADD"]
    assert after["lastUpdatedAt"] > before["lastUpdatedAt"]


async def test_targets_are_listed_by_name(client):
    for name in ("ZEBRA", "APPLE", "MANGO"):
        await create_job(client, operation="ADD", target=name)
    targets = await (await client.get("/targets")).json()
    assert [target["name"] for target in targets] == ["APPLE", "MANGO", "ZEBRA"]


async def test_a_completed_bump_records_what_it_released_and_removed(make_client):
    client = await make_client(jobs={"bump_enabled": True})
    bump_id = await create_job(client, **bump_job())
    assert (await (await client.get("/targets/DATASTORE")).json())["action"] == ["BUMP", "1.0.0", "1.1.0"]

    await put_job(client, bump_id, status="completed")

    targets = {target["name"]: target for target in await (await client.get("/targets")).json()}
    assert set(targets) == {"DATASTORE", "NEW_DATASET", "OLD_DATASET"}
    assert targets["DATASTORE"]["status"] == "completed"
    assert targets["NEW_DATASET"]["action"] == ["RELEASED", "1.1.0"]
    assert targets["OLD_DATASET"]["action"] == ["REMOVED", "1.1.0"]
    assert targets["NEW_DATASET"]["status"] == "completed"
    assert targets["NEW_DATASET"]["lastUpdatedBy"]["userId"] == "local-user"


async def test_a_failed_bump_releases_nothing(make_client):
    client = await make_client(jobs={"bump_enabled": True})
    bump_id = await create_job(client, **bump_job())
    await put_job(client, bump_id, status="failed")
    names = [target["name"] for target in await (await client.get("/targets")).json()]
    assert names == ["DATASTORE"]


async def test_target_jobs_include_bumps_that_list_the_dataset_once_each(make_client):
    client = await make_client(jobs={"bump_enabled": True})
    add_id = await create_job(client, operation="ADD", target="NEW_DATASET")
    await put_job(client, add_id, status="completed")
    bump_id = await create_job(client, **bump_job())
    await create_job(client, operation="ADD", target="UNRELATED")

    response = await client.get("/targets/NEW_DATASET/jobs")
    assert response.status == 200
    assert [job["jobId"] for job in await response.json()] == [add_id, bump_id]
    drafts = await (await client.get("/targets/DRAFT_DATASET/jobs")).json()
    assert [job["jobId"] for job in drafts] == [bump_id]


async def test_an_unknown_target_is_a_404_and_has_no_jobs(client):
    response = await client.get("/targets/NOBODY")
    assert response.status == 404
    assert await response.json() == {"message": "No target named NOBODY"}
    response = await client.get("/targets/NOBODY/jobs")
    assert response.status == 200
    assert await response.json() == []


@pytest.mark.parametrize("path", ["/targets/lower", "/targets/1ABC/jobs", "/targets/" + "A" * 129, "/targets/A%20B"])
async def test_an_invalid_target_name_is_a_400(client, path):
    response = await client.get(path)
    assert response.status == 400
    assert "contains invalid characters" in (await response.json())["message"]
