"""Conditional GETs: an answer carries its ETag and `Cache-Control: no-cache`, and a client
that names the ETag it has (If-None-Match) gets a 304 with no body while it is current.

Where the store counts versions (TinyDB: revisions, the in-progress and targets versions)
the ETag is made of them; elsewhere (MongoDB) it is a weak one made of the bytes.
"""

from __future__ import annotations

import pytest
from helpers import create_job, put_job

POLL = "/jobs?status=queued&ignoreCompleted=true"


async def tagged(client, path):
    """The answer to `path`, which must carry an ETag: its body and the ETag."""
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-cache"
    return await response.read(), response.headers["ETag"]


async def asked_again(client, path, etag):
    response = await client.get(path, headers={"If-None-Match": etag})
    return response.status, await response.read()


@pytest.mark.parametrize(
    "path", ["/jobs/{job}", POLL, "/jobs?status=queued", "/targets", "/targets/MY_DATASET", "/executor"]
)
async def test_an_unchanged_answer_is_a_304_without_a_body(client, path):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    path = path.format(job=job_id)
    _, etag = await tagged(client, path)

    assert await asked_again(client, path, etag) == (304, b"")
    assert await asked_again(client, path, f'"other", {etag}') == (304, b"")
    assert (await asked_again(client, path, '"another one"'))[0] == 200


@pytest.mark.parametrize("path", ["/jobs/{job}", POLL, "/jobs?status=queued", "/targets", "/targets/MY_DATASET"])
async def test_a_change_is_a_new_etag_and_the_new_answer(client, path):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    path = path.format(job=job_id)
    before, etag = await tagged(client, path)

    await put_job(client, job_id, status="queued", log="picked up again")

    status, after = await asked_again(client, path, etag)
    assert status == 200
    assert after != before
    assert (await tagged(client, path))[1] != etag


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_tinydb_answers_are_tagged_by_the_stores_versions(client):
    """Strong ETags, of versions the store counts: not a hash of the body."""
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    for path in (f"/jobs/{job_id}", POLL, "/targets", "/targets/MY_DATASET"):
        _, etag = await tagged(client, path)
        assert not etag.startswith("W/"), path


@pytest.mark.parametrize("backend", ["mongodb"])
async def test_mongodb_answers_are_tagged_by_their_bytes(client):
    """Others write to the database too: no version of this process's can be trusted."""
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    for path in (f"/jobs/{job_id}", POLL, "/targets", "/targets/MY_DATASET"):
        _, etag = await tagged(client, path)
        assert etag.startswith("W/"), path


async def test_the_executors_polls_lose_nothing(client):
    """It sends no If-None-Match: every poll gets the whole answer, the same bytes each time."""
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    answers = [await (await client.get(POLL)).read() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    assert b'"jobId":"%s"' % job_id.encode() in answers[0]


async def test_the_executor_answer_keeps_its_etag_while_only_the_clock_moves(client):
    assert (await client.get(POLL)).status == 200
    _, etag = await tagged(client, "/executor")
    assert (await asked_again(client, "/executor", etag))[0] == 304
    assert (await client.get(POLL)).status == 200  # a new poll: a new lastPollAt
    assert (await asked_again(client, "/executor", etag))[0] == 200


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_kept_targets_listing_is_each_datastores_own(client):
    """The answer is kept per datastore while no target changes, and never shown for another."""
    response = await client.post("/datastores", json={"rdn": "no.ssb.fdb", "name": "Forskning", "description": "d"})
    assert response.status == 200, await response.text()
    await create_job(client, operation="ADD", target="IN_THE_DEFAULT")
    default = await (await client.get("/targets")).json()
    other = await (await client.get("/datastores/no.ssb.fdb/targets")).json()
    assert [target["name"] for target in default] == ["IN_THE_DEFAULT"]
    assert [target["name"] for target in other] == ["DATASTORE"]
    assert await (await client.get("/targets")).json() == default
