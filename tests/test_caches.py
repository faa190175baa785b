"""What the service keeps encoded is never older than the store: keyed on the store's
revisions, which change with every change, and kept only where every change goes
through the service."""

from __future__ import annotations

from helpers import DEFAULT_DATASTORE, create_job, stored_job
from pymongo import MongoClient

from backends import JobChange
from job_service import STORE


async def test_a_target_read_again_after_each_change_shows_it(client):
    store = client.app[STORE]
    ola = {**stored_job("1"), "createdBy": {"userId": "u1", "firstName": "Ola", "lastName": "Nordmann"}}
    # The same user, renamed since, posts again in the same microsecond: no field of the old
    # version tuple (time, status, action, user id) tells the two targets apart.
    kari = {**ola, "jobId": "2", "createdBy": {**ola["createdBy"], "firstName": "Kari"}}
    seen = []
    await store.insert_job(ola)
    seen.append((await (await client.get("/targets")).json())[0]["lastUpdatedBy"]["firstName"])
    await store.update_job("1", JobChange(status="completed", at=ola["createdAt"]))
    await store.insert_job(kari)
    seen.append((await (await client.get("/targets")).json())[0]["lastUpdatedBy"]["firstName"])
    assert seen == ["Ola", "Kari"]


async def test_a_job_changed_in_mongodb_behind_the_services_back_is_served_as_it_is_now(make_client, storage):
    if storage["backend"] != "mongodb":
        return  # TinyDB's directory is the service's alone: nobody else can change it
    client = await make_client()
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    assert (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "queued"
    assert (await (await client.get("/targets/MY_DATASET")).json())["status"] == "queued"
    mongodb = storage["mongodb"]
    with MongoClient(mongodb["url"]) as other:  # a restore or a hand edit: no revision changes
        database = other[mongodb["database"]]
        database.inprogress.update_one({"jobId": job_id}, {"$set": {"status": "built"}})
        database.targets.update_one(
            {"datastoreRdn": DEFAULT_DATASTORE, "name": "MY_DATASET"}, {"$set": {"status": "built"}}
        )
    assert (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "built"
    assert [job["status"] for job in await (await client.get("/jobs?status=built")).json()] == ["built"]
    assert (await (await client.get("/targets")).json())[0]["status"] == "built"
