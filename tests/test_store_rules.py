"""Rules every backend keeps on its own, whatever path a document takes in.

Each test runs on every backend and reads as an example of the storage protocol:
jobs and targets live in datastores, the registry of datastores lives in the store.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from helpers import DEFAULT_DATASTORE, bump_job, listed, store_options, stored_job, write_stored_targets

from backends import (
    DatastoreBusy,
    DatastoreGone,
    DatastoreTaken,
    JobChange,
    JobFinal,
    JobNotFound,
    JobQuery,
    TargetBusy,
    change_time,
    open_store,
    targets_of,
)

FDB = "no.ssb.fdb"
USER = {"userId": "u", "firstName": "F", "lastName": "L"}
#: When `target` shows its last change made.
UPDATED = "2026-11-30T00:00:00.000000+00:00"


def datastore(rdn: str, **overrides) -> dict:
    """A registry entry as the service provisions it."""
    return {
        "rdn": rdn,
        "name": "Forskningsdata",
        "description": f"The datastore {rdn}",
        "directory": f"/srv/datastores/{rdn}",
        "bumpEnabled": False,
        "deleted": False,
        **overrides,
    }


def target(name: str, datastore: str = DEFAULT_DATASTORE, status: str = "queued") -> dict:
    return {
        "datastoreRdn": datastore,
        "name": name,
        "lastUpdatedAt": UPDATED,
        "status": status,
        "lastUpdatedBy": USER,
        "action": ["ADD"],
    }


def bump_in(job_id: str, datastore: str) -> dict:
    """A BUMP job whose manifesto lists NEW_DATASET, OLD_DATASET and DRAFT_DATASET."""
    return {**stored_job(job_id, "DATASTORE", datastore=datastore), "parameters": bump_job()}


def unrevised(found):
    """A target, or a list of them, without the store's revisions (which
    test_a_target_is_a_new_revision_at_every_write_of_it checks)."""
    if isinstance(found, list):
        return [unrevised(each) for each in found]
    return {key: value for key, value in found.items() if key != "revision"}


async def ids(jobs) -> list[str]:
    return [job["jobId"] for job in await listed(jobs)]


async def test_an_import_cannot_put_two_jobs_in_progress_on_one_target(store):
    with pytest.raises(TargetBusy):
        await store.load_collection("inprogress", [stored_job("1", "TWICE"), stored_job("2", "TWICE")])
    assert await listed(store.find_jobs(JobQuery())) == []


async def test_an_import_cannot_take_a_target_already_in_progress(store):
    await store.insert_job(stored_job("1", "TAKEN"))
    with pytest.raises(TargetBusy):
        await store.load_collection("inprogress", [stored_job("2", "FREE"), stored_job("3", "TAKEN")])
    assert [found["jobId"] for found in await listed(store.find_jobs(JobQuery()))] == ["1"]


async def test_an_import_may_put_one_target_in_progress_in_two_datastores(store):
    await store.insert_job(stored_job("1", "MY_DATASET"))
    await store.load_collection("inprogress", [stored_job("2", "MY_DATASET", datastore=FDB)])
    assert await ids(store.find_jobs(JobQuery())) == ["1", "2"]
    with pytest.raises(TargetBusy):
        await store.load_collection("inprogress", [stored_job("3", "MY_DATASET", datastore=FDB)])


async def test_one_target_may_have_a_job_in_progress_in_each_datastore(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "MY_DATASET"))
    await store.insert_job(stored_job("2", "MY_DATASET", datastore=FDB))
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("3", "MY_DATASET", datastore=FDB))
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("4", "MY_DATASET"))

    assert await store.target_in_progress(DEFAULT_DATASTORE, "MY_DATASET")
    assert await store.target_in_progress(FDB, "MY_DATASET")
    assert not await store.target_in_progress("no.ssb", "MY_DATASET")
    assert await ids(store.find_jobs(JobQuery())) == ["1", "2"]


async def test_a_finished_job_frees_its_target_in_its_datastore_only(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "MY_DATASET"))
    await store.insert_job(stored_job("2", "MY_DATASET", datastore=FDB))
    await store.update_job("2", JobChange(status="completed"))

    await store.insert_job(stored_job("3", "MY_DATASET", datastore=FDB))
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("4", "MY_DATASET"))


async def test_concurrent_inserts_on_one_target_store_exactly_one_per_datastore(store):
    await store.add_datastore(datastore(FDB))
    attempts = [stored_job(str(n), "MY_DATASET", datastore=(FDB if n % 2 else DEFAULT_DATASTORE)) for n in range(40)]
    results = await asyncio.gather(*(store.insert_job(job) for job in attempts), return_exceptions=True)

    assert sum(result is None for result in results) == 2
    assert all(result is None or isinstance(result, TargetBusy) for result in results)
    in_progress = await listed(store.find_jobs(JobQuery(ignore_completed=True)))
    assert sorted(job["datastoreRdn"] for job in in_progress) == [DEFAULT_DATASTORE, FDB]


@pytest.mark.parametrize("backend", ["mongodb"])
async def test_two_stores_on_one_database_store_exactly_one_per_target_and_datastore(open_stores):
    stores = [await open_stores(), await open_stores()]
    await stores[0].add_datastore(datastore(FDB))
    attempts = [stored_job(str(n), "SHARED", datastore=(FDB if n % 4 < 2 else DEFAULT_DATASTORE)) for n in range(40)]
    results = await asyncio.gather(
        *(stores[n % 2].insert_job(job) for n, job in enumerate(attempts)), return_exceptions=True
    )

    assert sum(result is None for result in results) == 2
    assert all(result is None or isinstance(result, TargetBusy) for result in results)
    for store in stores:
        in_progress = await listed(store.find_jobs(JobQuery()))
        assert sorted(job["datastoreRdn"] for job in in_progress) == [DEFAULT_DATASTORE, FDB]


async def test_a_query_of_one_datastore_finds_only_its_jobs_and_none_finds_all(store):
    await store.add_datastore(datastore(FDB))
    await store.load_collection(
        "completed", [stored_job("1", "A", "completed"), stored_job("2", "A", "failed", datastore=FDB)]
    )
    await store.insert_job(stored_job("3", "A"))
    await store.insert_job(stored_job("4", "A", datastore=FDB))

    assert await ids(store.find_jobs(JobQuery(datastore=DEFAULT_DATASTORE))) == ["1", "3"]
    assert await ids(store.find_jobs(JobQuery(datastore=FDB))) == ["2", "4"]
    assert await ids(store.find_jobs(JobQuery(datastore="no.ssb"))) == []
    assert await ids(store.find_jobs(JobQuery())) == ["1", "2", "3", "4"]
    assert await ids(store.find_jobs(JobQuery(datastore=FDB, status="failed"))) == ["2"]
    assert await ids(store.find_jobs(JobQuery(datastore=FDB, ignore_completed=True))) == ["4"]
    assert await ids(store.find_jobs(JobQuery(status="queued"))) == ["3", "4"]
    assert (await store.get_job("4"))["datastoreRdn"] == FDB  # by id, in any datastore


async def test_the_jobs_of_a_target_are_those_of_its_datastore(store):
    await store.add_datastore(datastore(FDB))
    await store.load_collection(
        "completed", [stored_job("1", "NEW_DATASET", "completed"), bump_in("2", FDB) | {"status": "completed"}]
    )
    await store.insert_job(stored_job("3", "NEW_DATASET", datastore=FDB))
    await store.insert_job(bump_in("4", DEFAULT_DATASTORE))

    assert await ids(store.jobs_for_target(DEFAULT_DATASTORE, "NEW_DATASET")) == ["1", "4"]
    assert await ids(store.jobs_for_target(FDB, "NEW_DATASET")) == ["2", "3"]
    assert await ids(store.jobs_for_target("no.ssb", "NEW_DATASET")) == []


async def test_targets_are_kept_per_datastore(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "MY_DATASET"))
    await store.update_job("1", JobChange(status="completed", at=UPDATED))
    await store.insert_job(stored_job("2", "MY_DATASET", datastore=FDB))
    await store.insert_job(stored_job("3", "ANOTHER", datastore=FDB))
    await store.update_job("2", JobChange(status="validating", at=UPDATED))

    assert unrevised(await store.get_target(DEFAULT_DATASTORE, "MY_DATASET")) == target(
        "MY_DATASET", status="completed"
    )
    assert unrevised(await store.get_target(FDB, "MY_DATASET")) == target("MY_DATASET", FDB, status="validating")
    assert await store.get_target("no.ssb", "MY_DATASET") is None
    assert [found["name"] for found in await listed(store.list_targets(FDB))] == ["ANOTHER", "MY_DATASET"]
    assert unrevised(await listed(store.list_targets(DEFAULT_DATASTORE))) == [target("MY_DATASET", status="completed")]
    assert await listed(store.list_targets("no.ssb")) == []


async def test_datastores_are_registered_and_listed_by_rdn(store):
    await store.add_datastore(datastore(FDB))
    await store.add_datastore(datastore("no.ssb"))  # a prefix of a taken rdn is another rdn
    await store.add_datastore(datastore("no.ssb.fdbx", name="Another"))

    assert await store.get_datastore(FDB) == datastore(FDB)
    assert await store.get_datastore("no.ss") is None
    assert [found["rdn"] for found in await store.list_datastores()] == ["no.ssb", FDB, "no.ssb.fdbx"]


async def test_an_rdn_is_taken_for_good_once_registered_live_or_deleted(store):
    await store.add_datastore(datastore(FDB))
    with pytest.raises(DatastoreTaken):
        await store.add_datastore(datastore(FDB, name="Again"))
    await store.delete_datastore(FDB)
    with pytest.raises(DatastoreTaken):
        await store.add_datastore(datastore(FDB))
    assert await store.list_datastores() == [datastore(FDB, deleted=True)]


async def test_deleting_a_datastore_marks_it_and_keeps_its_jobs_and_targets(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "MY_DATASET", datastore=FDB))
    await store.update_job("1", JobChange(status="completed", at=UPDATED))

    await store.delete_datastore(FDB)

    assert await store.get_datastore(FDB) == datastore(FDB, deleted=True)
    assert await store.list_datastores() == [datastore(FDB, deleted=True)]
    assert await ids(store.find_jobs(JobQuery(datastore=FDB))) == ["1"]
    assert unrevised(await listed(store.list_targets(FDB))) == [target("MY_DATASET", FDB, status="completed")]


async def test_a_datastore_with_a_job_in_progress_cannot_be_deleted(store):
    await store.add_datastore(datastore(FDB))
    await store.add_datastore(datastore("no.ssb"))
    await store.insert_job(stored_job("1", "MY_DATASET", datastore=FDB))

    with pytest.raises(DatastoreBusy):
        await store.delete_datastore(FDB)
    assert not (await store.get_datastore(FDB))["deleted"]
    await store.delete_datastore("no.ssb")  # a job in another datastore holds nothing here

    await store.update_job("1", JobChange(status="failed"))
    await store.delete_datastore(FDB)
    assert (await store.get_datastore(FDB))["deleted"]


async def test_a_job_goes_only_into_the_default_datastore_or_a_live_registered_one(store):
    await store.add_datastore(datastore(FDB))
    await store.add_datastore(datastore("no.ssb"))
    await store.delete_datastore("no.ssb")

    for rdn in ("no.ssb", "no.such.datastore"):
        with pytest.raises(DatastoreGone):
            await store.insert_job(stored_job("1", datastore=rdn))
        with pytest.raises(DatastoreGone):
            await store.insert_jobs([stored_job("2", "A", datastore=rdn), stored_job("3", "B", datastore=rdn)])
    assert await listed(store.find_jobs(JobQuery())) == []
    assert await listed(store.list_targets("no.ssb")) == []

    await store.insert_job(stored_job("4", datastore=DEFAULT_DATASTORE))  # never registered, always there
    assert await store.insert_jobs([stored_job("5", datastore=FDB)]) == [None]
    assert await ids(store.find_jobs(JobQuery())) == ["4", "5"]


async def test_a_delete_and_an_insert_at_once_never_leave_a_job_in_a_deleted_datastore(store):
    for n in range(20):
        rdn = f"no.ssb.race{n}"
        await store.add_datastore(datastore(rdn))
        insert, delete = store.insert_job(stored_job(str(n), datastore=rdn)), store.delete_datastore(rdn)
        if n % 2:  # each of them sent first in turn
            inserted, deleted = await asyncio.gather(insert, delete, return_exceptions=True)
        else:
            deleted, inserted = await asyncio.gather(delete, insert, return_exceptions=True)
        # Either the insert came first and the delete saw the job, or the insert saw the delete.
        assert (isinstance(inserted, DatastoreGone) and deleted is None) or (
            inserted is None and isinstance(deleted, DatastoreBusy)
        ), (inserted, deleted)
        in_progress = await listed(store.find_jobs(JobQuery(datastore=rdn)))
        assert not (in_progress and (await store.get_datastore(rdn))["deleted"])


async def test_a_target_is_a_new_revision_at_every_write_of_it(storage, open_stores):
    write_stored_targets(storage, target("MY_DATASET"))  # as an earlier release left it: no revision, no job shown
    store = await open_stores()
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "MY_DATASET"))  # created before the stored target's time: not a write
    assert await store.get_target(DEFAULT_DATASTORE, "MY_DATASET") == target("MY_DATASET")
    await store.update_job("1", JobChange(status="validating", at=AT))
    assert (await store.get_target(DEFAULT_DATASTORE, "MY_DATASET"))["revision"] == 1
    await store.update_job("1", JobChange(at=AT))  # a log-only change shows the same fields: still a write
    assert [found["revision"] for found in await listed(store.list_targets(DEFAULT_DATASTORE))] == [2]

    await store.insert_job(bump_in("2", FDB))
    await store.update_job("2", JobChange(status="completed", at=AT))
    revisions = {found["name"]: found["revision"] for found in await listed(store.list_targets(FDB))}
    assert revisions == {"DATASTORE": 2, "NEW_DATASET": 1, "OLD_DATASET": 1}
    assert (await store.get_target(FDB, "MY_DATASET")) is None


async def test_removing_a_datastore_forgets_it_so_that_its_rdn_can_be_registered_again(store):
    await store.add_datastore(datastore(FDB))
    await store.add_datastore(datastore("no.ssb"))
    await store.remove_datastore(FDB)
    await store.remove_datastore("no.such.datastore")

    assert await store.get_datastore(FDB) is None
    assert await store.list_datastores() == [datastore("no.ssb")]
    await store.add_datastore(datastore(FDB, name="Second try"))
    assert (await store.get_datastore(FDB))["name"] == "Second try"


async def test_the_registry_is_there_after_reopening(storage):
    store = await open_store(store_options(storage), DEFAULT_DATASTORE)
    await store.add_datastore(datastore(FDB))
    await store.add_datastore(datastore("no.ssb"))
    await store.delete_datastore("no.ssb")
    await store.close()

    store = await open_store(store_options(storage), DEFAULT_DATASTORE)
    try:
        assert await store.list_datastores() == [datastore("no.ssb", deleted=True), datastore(FDB)]
        with pytest.raises(DatastoreTaken):
            await store.add_datastore(datastore(FDB))
    finally:
        await store.close()


async def test_stats_count_jobs_in_progress_by_datastore_and_status(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(stored_job("1", "A"))
    await store.insert_job(stored_job("2", "B"))
    await store.insert_job(stored_job("3", "A", datastore=FDB))
    await store.update_job("3", JobChange(status="validating"))
    await store.insert_job(stored_job("4", "B", datastore=FDB))
    await store.update_job("4", JobChange(status="completed"))

    stats = await store.stats()
    assert stats.in_progress == {(DEFAULT_DATASTORE, "queued"): 2, (FDB, "validating"): 1}
    assert stats.completed == 1


async def test_datastores_are_dumped_by_rdn_and_loaded_as_they_are(store):
    exported = [datastore("no.ssb", deleted=True), datastore(FDB)]
    await store.load_collection("datastores", list(reversed(exported)))
    assert await listed(store.dump_collection("datastores")) == exported
    assert await store.list_datastores() == exported


async def test_an_import_cannot_register_an_rdn_twice(store):
    await store.add_datastore(datastore(FDB))
    with pytest.raises(DatastoreTaken):
        await store.load_collection("datastores", [datastore("no.ssb"), datastore(FDB)])
    with pytest.raises(DatastoreTaken):
        await store.load_collection("datastores", [datastore("no.ssb"), datastore("no.ssb")])
    assert await store.list_datastores() == [datastore(FDB)]


async def test_targets_are_dumped_by_datastore_then_name(store):
    await store.add_datastore(datastore(FDB))
    for job_id, (name, rdn) in enumerate([("B", FDB), ("B", DEFAULT_DATASTORE), ("A", FDB), ("C", DEFAULT_DATASTORE)]):
        await store.insert_job(stored_job(str(job_id), name, datastore=rdn))
    dumped = await listed(store.dump_collection("targets"))
    assert [(found["datastoreRdn"], found["name"]) for found in dumped] == [
        ("local", "B"),
        ("local", "C"),
        (FDB, "A"),
        (FDB, "B"),
    ]


async def test_jobs_and_targets_imported_without_a_datastore_land_in_the_default(store):
    """What an export of the release before datastores holds."""
    await store.add_datastore(datastore(FDB))

    def from_before(document: dict) -> dict:
        return {key: value for key, value in document.items() if key != "datastoreRdn"}

    await store.load_collection("completed", [from_before(stored_job("1", "OLD", "completed"))])
    await store.load_collection("inprogress", [from_before(stored_job("2", "HELD"))])
    await store.load_collection("targets", [from_before(target("HELD"))])

    assert await listed(store.find_jobs(JobQuery(datastore=DEFAULT_DATASTORE))) == [
        stored_job("1", "OLD", "completed"),
        stored_job("2", "HELD"),
    ]
    assert await listed(store.list_targets(DEFAULT_DATASTORE)) == [target("HELD")]
    assert [job["datastoreRdn"] for job in await listed(store.dump_collection("inprogress"))] == [DEFAULT_DATASTORE]
    with pytest.raises(TargetBusy):
        await store.insert_job(stored_job("3", "HELD"))
    await store.insert_job(stored_job("3", "HELD", datastore=FDB))


# --- a job records its targets, in the same change --------------------------------------------

AT = "2026-11-30T12:00:00.000000+00:00"


async def test_a_new_job_records_its_target_as_of_its_creation(store):
    await store.add_datastore(datastore(FDB))
    job = stored_job("1", "MY_DATASET", datastore=FDB)
    await store.insert_job(job)
    assert unrevised(await store.get_target(FDB, "MY_DATASET")) == {
        "datastoreRdn": FDB,
        "name": "MY_DATASET",
        "lastUpdatedAt": job["createdAt"],
        "status": "queued",
        "lastUpdatedBy": job["createdBy"],
        "action": ["ADD"],
    }
    assert await store.get_target(DEFAULT_DATASTORE, "MY_DATASET") is None


async def test_an_update_records_the_target_at_the_time_of_the_change(store):
    await store.insert_job(stored_job("1", "MY_DATASET"))
    await store.update_job("1", JobChange(status="validating", at=AT))
    target = await store.get_target(DEFAULT_DATASTORE, "MY_DATASET")
    assert (target["status"], target["lastUpdatedAt"]) == ("validating", AT)

    logged = "2026-11-30T13:00:00.000000+00:00"
    await store.update_job("1", JobChange(description="d", log=[{"at": logged, "message": "Added update description"}]))
    target = await store.get_target(DEFAULT_DATASTORE, "MY_DATASET")
    assert (target["status"], target["lastUpdatedAt"]) == ("validating", logged), "by default, its log entries' time"

    await store.update_job("1", JobChange(status="failed", at="2026-11-30T14:00:00.000000+00:00"))
    assert (await store.get_target(DEFAULT_DATASTORE, "MY_DATASET"))["status"] == "failed"


async def test_a_completed_bump_records_what_it_released_and_removed_and_a_failed_one_nothing(store):
    await store.add_datastore(datastore(FDB))
    await store.insert_job(bump_in("1", FDB))
    await store.update_job("1", JobChange(status="completed", at=AT))
    await store.insert_job(bump_in("2", DEFAULT_DATASTORE))
    await store.update_job("2", JobChange(status="failed", at=AT))

    released = {target["name"]: target for target in await listed(store.list_targets(FDB))}
    assert {name: (target["status"], target["action"]) for name, target in released.items()} == {
        "DATASTORE": ("completed", ["BUMP", "1.0.0", "1.1.0"]),
        "NEW_DATASET": ("completed", ["RELEASED", "1.1.0"]),
        "OLD_DATASET": ("completed", ["REMOVED", "1.1.0"]),
    }
    assert {target["lastUpdatedAt"] for target in released.values()} == {AT}
    assert released["NEW_DATASET"]["lastUpdatedBy"] == USER
    assert [target["name"] for target in await listed(store.list_targets(DEFAULT_DATASTORE))] == ["DATASTORE"]


async def test_a_refused_change_records_no_target(store):
    await store.insert_job(stored_job("1", "MY_DATASET"))
    with pytest.raises(TargetBusy):
        await store.insert_job({**stored_job("2", "MY_DATASET"), "createdAt": AT})
    await store.update_job("1", JobChange(status="completed", at=AT))
    with pytest.raises(JobFinal):
        await store.update_job("1", JobChange(status="queued", at="2027-01-01T00:00:00.000000+00:00"))
    with pytest.raises(JobNotFound):
        await store.update_job("nobody", JobChange(status="queued"))
    assert [
        (target["status"], target["lastUpdatedAt"]) for target in await listed(store.list_targets(DEFAULT_DATASTORE))
    ] == [("completed", AT)]


async def test_targets_follow_job_order_whatever_order_the_changes_land_in(store):
    """A BUMP completes after a newer job was posted on a dataset it releases: that
    dataset keeps showing the newer job; the BUMP's other datasets show the release.
    An older job's change never replaces a newer job's target; a job's own later one does."""
    await store.insert_job(bump_in("1", DEFAULT_DATASTORE))
    await store.insert_job(stored_job("2", "NEW_DATASET"))
    await store.insert_job(stored_job("3", "OLD_DATASET"))
    await store.update_job("3", JobChange(status="completed", at=AT))
    await store.update_job("1", JobChange(status="completed", at="2026-11-30T13:00:00.000000+00:00"))
    await store.update_job("2", JobChange(status="validating", at="2026-11-30T14:00:00.000000+00:00"))
    shown = {
        found["name"]: (found["status"], found["action"])
        for found in await listed(store.list_targets(DEFAULT_DATASTORE))
    }
    assert shown == {
        "DATASTORE": ("completed", ["BUMP", "1.0.0", "1.1.0"]),
        "NEW_DATASET": ("validating", ["ADD"]),
        "OLD_DATASET": ("completed", ["ADD"]),
    }


async def test_a_poll_repeated_between_changes_sees_each_change_at_once(store):
    """The executors ask the same questions every few seconds; every answer is current."""
    queued = JobQuery(status="queued", ignore_completed=True)
    built = JobQuery(status="built", operations=frozenset({"ADD"}), ignore_completed=True)
    await store.insert_job(stored_job("1", "FIRST"))
    assert [await ids(store.find_jobs(queued)), await ids(store.find_jobs(built))] == [["1"], []]
    assert await ids(store.find_jobs(queued)) == ["1"]
    await store.update_job("1", JobChange(status="built", log=[{"at": "t", "message": "built"}]))
    await store.insert_job(stored_job("2", "SECOND"))
    assert [await ids(store.find_jobs(queued)), await ids(store.find_jobs(built))] == [["2"], ["1"]]
    [polled] = await listed(store.find_jobs(built))
    assert [entry["message"] for entry in polled["log"]] == ["built"]
    await store.update_job("1", JobChange(status="completed"))
    assert [await ids(store.find_jobs(queued)), await ids(store.find_jobs(built))] == [["2"], []]


async def test_the_in_progress_version_changes_with_every_change_of_a_job_in_progress(store):
    """A store that can tell (TinyDB) gives a version that reads leave alone and every change of
    an in-progress job replaces for good; one that cannot (a shared MongoDB) always gives None."""
    versions = [store.in_progress_version]
    await store.insert_job(stored_job("1", "FIRST"))
    versions.append(store.in_progress_version)
    await store.get_job("1")
    await listed(store.find_jobs(JobQuery(status="queued", ignore_completed=True)))
    await store.add_maintenance({"msg": "m", "paused": True, "timestamp": AT})
    assert store.in_progress_version == versions[-1]
    await store.update_job("1", JobChange(log=[{"at": "t", "message": "a line"}]))
    versions.append(store.in_progress_version)
    await store.update_job("1", JobChange(status="completed"))
    versions.append(store.in_progress_version)
    await store.load_collection("inprogress", [stored_job("2", "SECOND")])
    versions.append(store.in_progress_version)
    await store.clear()
    versions.append(store.in_progress_version)
    if versions[0] is None:
        assert versions == [None] * len(versions)
    else:
        assert len(set(versions)) == len(versions)


async def test_every_listing_comes_as_pages(store):
    """Every listing is an async iterator of lists: a short one is one page."""
    await store.insert_job(stored_job("1"))
    await store.add_maintenance({"msg": "m", "paused": False, "timestamp": AT})
    for listing in (
        store.find_jobs(JobQuery()),
        store.jobs_for_target(DEFAULT_DATASTORE, "MY_DATASET"),
        store.list_targets(DEFAULT_DATASTORE),
        store.maintenance_history(),
        store.dump_collection("inprogress"),
    ):
        assert [len(page) async for page in listing] == [1]


async def test_a_long_listing_never_holds_the_collection_whole(store):
    """1,200 jobs come a few hundred at a time, in order, each once."""
    jobs = [stored_job(f"{number:06d}", f"DATASET_{number}", status="completed") for number in range(1200)]
    await store.load_collection("completed", jobs)
    for listing in (store.find_jobs(JobQuery()), store.dump_collection("completed")):
        pages = [page async for page in listing]
        assert len(pages) > 1 and all(len(page) <= 500 for page in pages)
        assert [job["jobId"] for page in pages for job in page] == [job["jobId"] for job in jobs]


def test_what_a_job_leaves_its_targets_showing():
    """The rules themselves, pure functions every backend records by."""
    job = {
        **stored_job("1", "MY_DATASET"),
        "parameters": {"operation": "SET_STATUS", "target": "MY_DATASET", "releaseStatus": "PENDING_RELEASE"},
    }
    assert [target["action"] for target in targets_of(job, AT)] == [["SET_STATUS", "PENDING_RELEASE"]]
    bump = bump_in("2", FDB)
    assert [target["name"] for target in targets_of(bump, AT)] == ["DATASTORE"]
    assert [target["name"] for target in targets_of({**bump, "status": "completed"}, AT)] == [
        "DATASTORE",
        "NEW_DATASET",
        "OLD_DATASET",
    ]
    assert change_time(JobChange(at=AT, log=[{"at": "later", "message": "m"}])) == AT
    assert change_time(JobChange(log=[{"at": "first", "message": "m"}, {"at": "last", "message": "m"}])) == "last"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", change_time(JobChange(status="built")))
