"""Administrators undo a wrong post and post a failed job again, without ever changing a
job the executor may be working on (a 409 on its first PUT of a job crashes it)."""

from __future__ import annotations

from helpers import (
    access_claims,
    bump_job,
    cookies_for,
    create_job,
    datastore_version,
    faulty,
    put_job,
    raising,
    update,
    write_version_files,
)

from backends import StoreFull

REASON = {"reason": "Posted to the wrong dataset"}


async def test_a_queued_job_is_cancelled_saying_who_and_why_and_its_target_is_free(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    response = await client.post(f"/jobs/{job_id}/cancel", json=REASON)
    assert response.status == 200, await response.text()
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "failed"
    assert job["cancelledBy"] == {"userId": "local-user", "firstName": "Local", "lastName": "User"}
    assert [entry["message"] for entry in job["log"]] == [
        "Set status: failed",
        "Cancelled by Local User (local-user): Posted to the wrong dataset",
    ]
    assert (await (await client.get("/targets/MY_DATASET")).json())["status"] == "failed"
    assert await create_job(client, operation="ADD", target="MY_DATASET")  # the target is free again


async def test_only_a_queued_job_can_be_cancelled(client):
    working = await create_job(client, operation="ADD", target="WORKING")
    await put_job(client, working, status="initiated")
    done = await create_job(client, operation="ADD", target="DONE")
    await put_job(client, done, status="completed")
    for job_id, status in ((working, "initiated"), (done, "completed")):
        response = await client.post(f"/jobs/{job_id}/cancel", json=REASON)
        assert response.status == 409
        assert (await response.json())["message"] == f"Job {job_id} is {status}: only a queued job can be cancelled"
    assert (await (await client.get(f"/jobs/{working}")).json())["status"] == "initiated"


async def test_a_job_a_poll_just_handed_out_is_not_cancelled_unless_maintenance_pauses(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    assert (await client.get("/jobs?status=queued&operation=PATCH_METADATA,ADD,CHANGE")).status == 200
    refused = await client.post(f"/jobs/{job_id}/cancel", json=REASON)
    assert refused.status == 409
    assert "handed to the executor" in (await refused.json())["message"]
    assert (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "queued"
    await client.post("/maintenance-status", json={"msg": "Cleaning up", "paused": True})
    assert (await client.post(f"/jobs/{job_id}/cancel", json=REASON)).status == 200


async def test_the_grace_after_a_handout_is_configured(make_client):
    client = await make_client(jobs={"handout_grace_seconds": 0})
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await client.get("/jobs?status=queued")
    assert (await client.post(f"/jobs/{job_id}/cancel", json=REASON)).status == 200


async def test_a_cancel_without_a_reason_or_of_an_unknown_job_is_refused(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    for body in ({}, {"reason": ""}, {"reason": 1}, {"reason": "x", "more": 1}):
        assert (await client.post(f"/jobs/{job_id}/cancel", json=body)).status == 400, body
    assert (
        await client.post(f"/jobs/{job_id}/cancel", data="why", headers={"Content-Type": "text/plain"})
    ).status == 415
    assert (await client.post("/jobs/no-such-job/cancel", json=REASON)).status == 404
    assert (await client.post(f"/datastores/no.ssb.fdb/jobs/{job_id}/cancel", json=REASON)).status == 404
    assert (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "queued"


async def test_an_administrator_cancels_only_the_jobs_of_their_datastores(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(api_key="the executor's key, long enough")
    posted = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=cookies_for(keys)
    )
    [created] = await posted.json()
    elsewhere = cookies_for(keys, access=access_claims(aud=["datastore", "no.ssb.fdb"]))
    assert (await client.post(f"/jobs/{created['job_id']}/cancel", json=REASON, cookies=elsewhere)).status == 404
    assert (await client.post(f"/jobs/{created['job_id']}/cancel", json=REASON)).status == 401
    key = {"X-API-Key": "the executor's key, long enough"}
    assert (await client.post(f"/jobs/{created['job_id']}/cancel", json=REASON, headers=key)).status == 401
    assert (
        await client.post(f"/jobs/{created['job_id']}/cancel", json=REASON, cookies=cookies_for(keys))
    ).status == 200


async def test_a_failed_job_is_posted_again_linked_to_the_one_it_retries(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET", description="A new dataset")
    await put_job(client, job_id, status="failed", log="The disk was full")
    response = await client.post(f"/jobs/{job_id}/retry")
    assert response.status == 200, await response.text()
    result = await response.json()
    assert (result["status"], result["msg"]) == ("queued", "CREATED")
    retry = await (await client.get(f"/jobs/{result['job_id']}")).json()
    failed = await (await client.get(f"/jobs/{job_id}")).json()
    assert retry["retryOf"] == job_id and retry["status"] == "queued" and retry["log"] == []
    assert retry["parameters"] == failed["parameters"]
    busy = await client.post(f"/jobs/{job_id}/retry")  # its retry holds the target now
    assert busy.status == 409


async def test_a_retried_job_says_by_which_job_from_then_on_and_is_retried_once(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await put_job(client, job_id, status="failed", log="The disk was full")
    tag = (await client.get(f"/jobs/{job_id}")).headers["ETag"]
    retry_id = (await (await client.post(f"/jobs/{job_id}/retry")).json())["job_id"]

    read = await client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})  # a kept copy is out of date
    assert read.status == 200 and (await read.json())["retriedBy"] == retry_id
    for listing in ("/jobs?status=failed", "/jobs", "/targets/MY_DATASET/jobs", "/datastores/local/jobs"):
        jobs = await (await client.get(listing)).json()
        assert [job.get("retriedBy") for job in jobs if job["jobId"] == job_id] == [retry_id], listing
    assert "retriedBy" not in await (await client.get(f"/jobs/{retry_id}")).json()

    await put_job(client, retry_id, status="failed", log="The disk was full again")
    again = await client.post(f"/jobs/{job_id}/retry")
    assert (again.status, await again.json()) == (
        409,
        {"message": f"Job {job_id} was retried already, by job {retry_id}"},
    )
    third = await client.post(f"/jobs/{retry_id}/retry")  # the retry is the one to retry
    assert third.status == 200
    third_id = (await third.json())["job_id"]
    assert (await (await client.get(f"/jobs/{retry_id}")).json())["retriedBy"] == third_id
    assert (await (await client.get(f"/jobs/{job_id}")).json())["retriedBy"] == retry_id


async def test_the_link_is_read_again_after_a_restart_wherever_the_retry_is(make_client):
    client = await make_client()
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await put_job(client, job_id, status="failed", log="The disk was full")
    retry_id = (await (await client.post(f"/jobs/{job_id}/retry")).json())["job_id"]
    for status in ("validating", "completed"):  # the retry in progress, then completed
        await put_job(client, retry_id, status=status)
        await client.close()
        client = await make_client()
        assert (await (await client.get(f"/jobs/{job_id}")).json())["retriedBy"] == retry_id, status
    await client.close()


async def test_only_a_failed_job_is_retried(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    assert (await client.post(f"/jobs/{job_id}/retry")).status == 409
    await put_job(client, job_id, status="completed")
    response = await client.post(f"/jobs/{job_id}/retry")
    assert response.status == 409
    assert (await response.json())["message"] == f"Job {job_id} is completed: only a failed job can be retried"
    assert (await client.post("/jobs/no-such-job/retry")).status == 404


async def test_a_bump_whose_manifesto_the_draft_left_behind_is_not_retried(make_client, input_dir):
    client = await make_client(jobs={"bump_enabled": True})
    directory = input_dir.parent / "datastores" / "local"
    manifesto = bump_job()["bumpManifesto"]
    draft = datastore_version(*manifesto["dataStructureUpdates"], number="0.0.0.0")
    write_version_files(directory, draft)
    job_id = await create_job(client, **bump_job())
    await put_job(client, job_id, status="failed", log="The executor stopped")
    write_version_files(directory, datastore_version(update("OTHER", "ADD", "PENDING_RELEASE"), number="0.0.0.0"))
    refused = await client.post(f"/jobs/{job_id}/retry")
    assert refused.status == 409
    assert (await refused.json())["message"].startswith("BUMP_MANIFESTO_STALE")
    write_version_files(directory, draft)
    assert (await client.post(f"/jobs/{job_id}/retry")).status == 200


async def test_a_datastores_own_routes_cancel_and_retry_its_jobs_alone(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    own = f"/datastores/local/jobs/{job_id}"
    assert (await client.post(f"{own}/cancel", json={})).status == 400
    assert (await client.post(f"{own}/cancel", data="why", headers={"Content-Type": "text/plain"})).status == 415
    assert (await client.post(f"{own}/retry")).status == 409  # queued: nothing to retry
    assert (await client.post(f"/datastores/Not.An.Rdn/jobs/{job_id}/retry")).status == 400
    assert (await client.post(f"/datastores/no.such/jobs/{job_id}/retry")).status == 404
    assert (await client.post(f"{own}/cancel", json=REASON)).status == 200
    assert (await client.post(f"{own}/cancel", json=REASON)).status == 409  # failed by now
    assert (await client.post(f"{own}/retry")).status == 200


async def test_a_full_disk_is_a_507_and_the_job_stays_as_it_was(make_client):
    full = StoreFull("The disk of the data directory data is full: the change was not stored")
    client = await make_client(faulty(update_job=lambda store: raising(full)))
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "A"}]})).json()
    job_id = created["job_id"]
    for path in (f"/jobs/{job_id}/cancel", f"/datastores/local/jobs/{job_id}/cancel"):
        assert (await client.post(path, json=REASON)).status == 507
    assert (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "queued"


async def test_a_retry_the_disk_cannot_take_is_a_507(make_client, storage):
    full = StoreFull("The disk of the data directory data is full: the change was not stored")
    client = await make_client(faulty(insert_job=lambda store: raising(full)))
    jobs = [{"operation": "ADD", "target": "A"}, {"operation": "ADD", "target": "B"}]
    created = await (await client.post("/jobs", json={"jobs": jobs})).json()  # two at once: insert_jobs
    job_id = created[0]["job_id"]
    await put_job(client, job_id, status="failed")
    for path in (f"/jobs/{job_id}/retry", f"/datastores/local/jobs/{job_id}/retry"):
        assert (await client.post(path)).status == 507
