"""`/jobs`: what the admin UI posts and the executor polls and updates."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime

import pytest
from helpers import bump_job, create_job, post_jobs, put_job, stored_job

from backends import MAX_LOG_CHARACTERS
from job_service import MAX_TEXT_LENGTH, STORE

ISO_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


async def test_a_posted_job_is_queued_with_its_creator_and_an_empty_log(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET", description="first import")

    response = await client.get(f"/jobs/{job_id}")
    assert response.status == 200
    assert response.content_type == "application/json"
    job = await response.json()
    assert uuid.UUID(job["jobId"]).version == 4
    assert job["status"] == "queued"
    assert job["parameters"] == {"operation": "ADD", "target": "MY_DATASET", "description": "first import"}
    assert job["log"] == []
    assert ISO_WITH_OFFSET.fullmatch(job["createdAt"])
    assert job["createdBy"] == {"userId": "local-user", "firstName": "Local", "lastName": "User"}


async def test_each_posted_entry_gets_its_own_result_in_order(client):
    results = await post_jobs(
        client,
        {"operation": "ADD", "target": "FIRST"},
        {"operation": "SET_STATUS", "target": "SECOND"},
        {"operation": "ADD", "target": "FIRST"},
        {"operation": "SET_STATUS", "target": "THIRD", "releaseStatus": "PENDING_RELEASE"},
    )
    assert [r["status"] for r in results] == ["queued", "FAILED", "FAILED", "queued"]
    assert results[0]["msg"] == "CREATED" and "job_id" in results[0]
    assert results[1] == {
        "status": "FAILED",
        "msg": "FAILED: releaseStatus: Missing data for required field (a SET_STATUS needs it).",
    }
    assert results[2] == {"status": "FAILED", "msg": "FAILED: Job with target FIRST already in progress"}
    assert "job_id" not in results[1]


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"target": "A"}, "operation"),
        ({"operation": "ADD"}, "target"),
        ({"operation": "FLY", "target": "A"}, "operation"),
        ({"operation": "ADD", "target": "lower_case"}, "target"),
        ({"operation": "ADD", "target": "1STARTS_WITH_DIGIT"}, "target"),
        ({"operation": "ADD", "target": "_UNDERSCORE"}, "target"),
        ({"operation": "ADD", "target": "A" * 129}, "target"),
        ({"operation": "ADD", "target": "../ETC"}, "target"),
        ({"operation": "ADD", "target": "A", "colour": "red"}, "colour"),
        ({"operation": "ADD", "target": 7}, "target"),
        ({"operation": "ADD", "target": "A", "description": None}, "description"),
        ({"operation": "SET_STATUS", "target": "A", "releaseStatus": "RELEASED"}, "releaseStatus"),
        ({"operation": "REMOVE", "target": "A"}, "description"),
        ({"operation": "ADD", "target": "DATASTORE"}, "target"),
        (bump_job(target="MY_DATASET"), "target"),
        (bump_job(bumpToVersion=None), "bumpToVersion"),
        ({"operation": "BUMP", "target": "DATASTORE"}, "description"),
        (bump_job(bumpManifesto={"version": "1"}), "bumpManifesto.description"),
        (bump_job(bumpManifesto={**bump_job()["bumpManifesto"], "releaseTime": "soon"}), "bumpManifesto.releaseTime"),
        (
            bump_job(bumpManifesto={k: v for k, v in bump_job()["bumpManifesto"].items() if k != "updateType"}),
            "bumpManifesto.updateType",
        ),
        ("not an object", "Invalid input type"),
        (None, "Invalid input type"),
    ],
)
async def test_an_invalid_entry_fails_naming_the_field_and_stores_nothing(client, entry, names):
    [result] = await post_jobs(client, entry)
    assert result["status"] == "FAILED"
    assert result["msg"].startswith("FAILED: ") and names in result["msg"]
    assert await (await client.get("/jobs")).json() == []
    assert await (await client.get("/targets")).json() == []


async def test_a_valid_bump_is_refused_while_bumping_is_disabled(client):
    [result] = await post_jobs(client, bump_job())
    assert result == {"status": "FAILED", "msg": "FAILED: Bumping the datastore is disabled"}


async def test_validation_comes_before_the_bump_switch(client):
    [result] = await post_jobs(client, bump_job(bumpFromVersion=3))
    assert "bumpFromVersion" in result["msg"]


async def test_a_bump_keeps_its_manifesto_with_a_null_update_type(make_client):
    client = await make_client(jobs={"bump_enabled": True})
    manifesto = {**bump_job()["bumpManifesto"], "updateType": None}
    job_id = await create_job(client, **bump_job(bumpManifesto=manifesto))
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["parameters"]["bumpManifesto"] == manifesto
    assert job["parameters"]["bumpManifesto"]["updateType"] is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"jobs"', "must be a JSON object"),
        (b'{"jobs": NaN}', "not valid JSON"),
        (b'{"jobs": "ADD"}', "jobs: Not a valid list."),
        (b"{}", "jobs: Missing data for required field."),
        (b'{"jobs": [], "dryRun": true}', "dryRun: Unknown field."),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
async def test_a_malformed_post_is_a_400_and_stores_nothing(client, body, reason):
    response = await client.post("/jobs", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert reason in (await response.json())["message"]
    assert await (await client.get("/jobs")).json() == []


async def test_more_than_a_thousand_jobs_in_one_post_is_a_400(client):
    jobs = [{"operation": "ADD", "target": f"D{i}"} for i in range(1001)]
    response = await client.post("/jobs", json={"jobs": jobs})
    assert response.status == 400
    assert "jobs" in (await response.json())["message"]
    assert await (await client.get("/jobs")).json() == []


async def test_concurrent_posts_for_one_target_create_exactly_one_job(client):
    posts = [post_jobs(client, {"operation": "ADD", "target": "CONTESTED"}) for _ in range(30)]
    results = [result for [result] in await asyncio.gather(*posts)]
    created = [r for r in results if r["msg"] == "CREATED"]
    busy = [r for r in results if r["msg"] == "FAILED: Job with target CONTESTED already in progress"]
    assert (len(created), len(busy)) == (1, 29)
    assert len(await (await client.get("/jobs")).json()) == 1


async def test_get_jobs_is_oldest_first_and_filters_combine(client):
    first = await create_job(client, operation="ADD", target="A")
    second = await create_job(client, operation="REMOVE", target="B", description="gone")
    third = await create_job(client, operation="CHANGE", target="C")
    await put_job(client, first, status="completed")
    await put_job(client, third, status="built")

    async def job_ids(query: str) -> list[str]:
        response = await client.get(f"/jobs{query}")
        assert response.status == 200
        return [job["jobId"] for job in await response.json()]

    assert await job_ids("") == [first, second, third]
    assert await job_ids("?status=queued") == [second]
    assert await job_ids("?status=completed") == [first]
    assert await job_ids("?operation=ADD,REMOVE") == [first, second]
    assert await job_ids("?operation=ADD&operation=CHANGE") == [first, third]
    assert await job_ids("?ignoreCompleted=true") == [second, third]
    assert await job_ids("?ignoreCompleted=True") == [second, third]
    assert await job_ids("?ignoreCompleted=FALSE") == [first, second, third]
    assert await job_ids("?status=queued&operation=ADD,REMOVE&ignoreCompleted=true") == [second]
    assert await job_ids("?status=&operation=&ignoreCompleted=") == [first, second, third]
    assert await job_ids("?unknown=1") == [first, second, third]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("status=QUEUED", "status"),
        ("status=done", "status"),
        ("operation=ADD,FLY", "FLY"),
        ("ignoreCompleted=yes", "ignoreCompleted"),
        ("ignoreCompleted=1", "ignoreCompleted"),
        ("status=queued&status=built", "status"),
    ],
)
async def test_a_bad_query_parameter_is_a_400_naming_it(client, query, name):
    response = await client.get(f"/jobs?{query}")
    assert response.status == 400
    assert name in (await response.json())["message"]


async def test_an_unknown_job_is_a_404(client):
    response = await client.get("/jobs/no-such-job")
    assert response.status == 404
    assert await response.json() == {"message": "No job found for jobId: no-such-job"}


async def test_an_update_sets_status_and_description_and_logs_each(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")

    response = await client.put(f"/jobs/{job_id}", json={"status": "validating", "log": "Checking metadata"})
    assert response.status == 200
    assert await response.json() == {"message": f"Updated job with jobId {job_id}"}
    await put_job(client, job_id, description="Now with data")

    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "validating"
    assert job["parameters"]["description"] == "Now with data"
    assert [entry["message"] for entry in job["log"]] == [
        "Set status: validating",
        "Checking metadata",
        "Added update description",
    ]
    times = [datetime.fromisoformat(entry["at"]) for entry in job["log"]]
    assert times == sorted(times) and all(t.utcoffset() is not None for t in times)


async def test_a_final_job_frees_its_target_and_never_changes_again(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await put_job(client, job_id, status="failed", log="Bad metadata")

    response = await client.put(f"/jobs/{job_id}", json={"status": "queued"})
    assert response.status == 409
    assert await response.json() == {"message": f"Job {job_id} is already failed"}
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "failed"
    assert [entry["message"] for entry in job["log"]] == ["Set status: failed", "Bad metadata"]

    await create_job(client, operation="ADD", target="MY_DATASET")
    assert len(await (await client.get("/jobs?status=failed")).json()) == 1


async def test_a_full_log_refuses_more_lines_with_413_but_the_job_can_still_finish(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    line = "x" * MAX_TEXT_LENGTH
    lines_that_fit = MAX_LOG_CHARACTERS // (MAX_TEXT_LENGTH + len("Set status: validating"))
    for _ in range(lines_that_fit):
        await put_job(client, job_id, status="validating", log=line)

    response = await client.put(f"/jobs/{job_id}", json={"status": "validating", "log": line})
    assert response.status == 413
    assert "is full" in (await response.json())["message"]
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert len(job["log"]) == 2 * lines_that_fit, "the refused change added nothing"

    await put_job(client, job_id, status="completed", log="Done despite the long log")
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "completed"
    assert job["log"][-1]["message"] == "Done despite the long log"


async def test_a_job_completed_shows_once_in_every_listing(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    for status in ("initiated", "validating", "built", "importing", "completed"):
        await put_job(client, job_id, status=status)
    jobs = await (await client.get("/jobs")).json()
    assert [job["jobId"] for job in jobs] == [job_id]
    assert await (await client.get("/jobs?ignoreCompleted=true")).json() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "status or a description"),
        ({"log": "only a log"}, "status or a description"),
        ({"status": "done"}, "status"),
        ({"status": "QUEUED"}, "status"),
        ({"status": 3}, "status"),
        ({"description": ["x"]}, "description"),
        ({"status": "built", "log": 5}, "log"),
        ({"status": "built", "priority": 1}, "priority: Unknown field."),
    ],
)
async def test_a_bad_update_is_a_400_and_changes_nothing(client, body, reason):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    response = await client.put(f"/jobs/{job_id}", json=body)
    assert response.status == 400
    assert reason in (await response.json())["message"]
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "queued" and job["log"] == []


async def test_updating_an_unknown_job_is_a_404(client):
    response = await client.put("/jobs/no-such-job", json={"status": "built"})
    assert response.status == 404
    assert await response.json() == {"message": "No job found for jobId: no-such-job"}


async def test_an_update_that_is_not_json_is_a_400(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    response = await client.put(f"/jobs/{job_id}", data=b"status=built", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert await response.json() == {"message": "Request body is not valid JSON"}


async def test_a_long_listing_is_streamed_whole_and_in_order(client):
    completed = [stored_job(f"{n:06d}", target=f"T{n}", status="completed") for n in range(1200)]
    await client.app[STORE].load_collection("completed", completed)
    in_progress = await create_job(client, operation="ADD", target="NOW")

    response = await client.get("/jobs")
    assert response.status == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    jobs = await response.json()
    assert [job["jobId"] for job in jobs] == [job["jobId"] for job in completed] + [in_progress]
    assert len(await (await client.get("/jobs?status=completed")).json()) == 1200
