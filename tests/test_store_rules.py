"""Rules every backend keeps on its own, whatever path a document takes in."""

from __future__ import annotations

import pytest
from helpers import listed, store_options, stored_job

from backends import JobQuery, TargetBusy, open_store


@pytest.fixture
async def store(storage):
    opened = await open_store(store_options(storage))
    yield opened
    await opened.close()


async def test_an_import_cannot_put_two_jobs_in_progress_on_one_target(store):
    with pytest.raises(TargetBusy):
        await store.load_collection("inprogress", [stored_job("1", "TWICE"), stored_job("2", "TWICE")])
    assert await listed(store.find_jobs(JobQuery())) == []


async def test_an_import_cannot_take_a_target_already_in_progress(store):
    await store.insert_job(stored_job("1", "TAKEN"))
    with pytest.raises(TargetBusy):
        await store.load_collection("inprogress", [stored_job("2", "FREE"), stored_job("3", "TAKEN")])
    assert [found["jobId"] for found in await listed(store.find_jobs(JobQuery()))] == ["1"]
