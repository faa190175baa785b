"""The TinyDB store on real files: durable, atomic, crash-safe, one owner, checked at start."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from helpers import bump_job, listed, run_job_service, service_config, stored_job, write_config
from tinydb import Query, TinyDB

import backends.tinydb as tinydb_backend
from backends import JobChange, JobQuery, StoreCorrupt, StoreFull, StoreLocked, StoreUnavailable, TargetBusy
from backends.tinydb import LOCK_FILE, AtomicJSONStorage, TinyDBStore
from job_service import STORE

T1 = "2026-11-30T10:00:00.000001+00:00"
T2 = "2026-11-30T10:00:00.000002+00:00"
SAVED_TARGET = {
    "datastoreRdn": "local",
    "name": "MY_DATASET",
    "lastUpdatedAt": T1,
    "status": "queued",
    "lastUpdatedBy": {"userId": "u", "firstName": "F", "lastName": "L"},
    "action": ["ADD"],
}


@pytest.fixture
def backend() -> str:
    """The HTTP tests in this module are about TinyDB's files."""
    return "tinydb"


@pytest.fixture
def no_idle_fold(monkeypatch):
    """The journal is folded in at close only, so that a test can copy the directory as a crash leaves it."""
    monkeypatch.setattr(tinydb_backend, "IDLE_FOLD_SECONDS", 3600)


def files_in(path: Path) -> dict[str, bytes]:
    """Every data file in the directory (the lock is not data)."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != LOCK_FILE
    }


def journal_files(path: Path) -> list[Path]:
    return sorted((path / "journal").glob("*.jsonl"))


async def everything(store) -> dict:
    """What a store shows: every job, the in-progress ones, every target, the counts."""
    stats = await store.stats()
    return {
        "jobs": await listed(store.find_jobs(JobQuery())),
        "in progress": [job["jobId"] for job in await listed(store.find_jobs(JobQuery(ignore_completed=True)))],
        "targets": await listed(store.list_targets("local")),
        "counts": (stats.in_progress, stats.completed),
        "maintenance": await listed(store.maintenance_history()),
    }


async def test_everything_written_is_there_after_reopening(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.insert_job(stored_job("2", target="OTHER"))
    await store.update_job("2", JobChange(status="completed", at=T1))
    await store.update_job("1", JobChange(at=T1))
    await store.add_maintenance({"msg": "m", "paused": True, "timestamp": "t"})
    await store.close()

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == ["1", "2"]
    assert (await store.get_job("2"))["status"] == "completed"
    assert await store.get_target("local", "MY_DATASET") == {**SAVED_TARGET, "revision": 2}  # job 1's, then changed
    other = await store.get_target("local", "OTHER")
    assert (other["status"], other["lastUpdatedAt"]) == ("completed", T1)
    assert await listed(store.maintenance_history()) == [{"msg": "m", "paused": True, "timestamp": "t"}]
    await store.close()


async def test_a_second_owner_of_the_data_directory_is_refused(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    with pytest.raises(StoreLocked, match=str(tmp_path)):
        await TinyDBStore.open(tmp_path, "local")
    await store.close()
    await (await TinyDBStore.open(tmp_path, "local")).close()


def test_a_second_service_process_refuses_to_start_with_one_clear_line(tmp_path):
    storage = {"tinydb": {"path": str(tmp_path / "data")}}
    config = write_config(tmp_path / "config.toml", service_config(storage, tmp_path / "in"))
    (tmp_path / "data").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from backends.tinydb import TinyDBStore;"
            "store = asyncio.run(TinyDBStore.open(sys.argv[1], 'local'));"
            "print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / "data"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_job_service(config)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("job-service: The data directory") and f"pid {holder.pid}" in last_line
    assert "Traceback" not in result.stderr


def test_a_write_interrupted_before_the_rename_leaves_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "db.json"
    storage = AtomicJSONStorage(path)
    storage.write({"_default": {"1": {"v": "old"}}})

    def crash(*args):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    data = storage.read()
    data["_default"]["1"]["v"] = "new"
    with pytest.raises(KeyboardInterrupt):
        storage.write(data)
    monkeypatch.undo()

    assert storage.read() == {"_default": {"1": {"v": "old"}}}, "memory must not run ahead of the file"
    assert AtomicJSONStorage(path).read() == {"_default": {"1": {"v": "old"}}}
    assert json.loads(path.read_bytes()) == {"_default": {"1": {"v": "old"}}}
    assert not (tmp_path / "db.json.tmp").exists(), "the temporary file goes at once"


async def test_a_leftover_temporary_file_is_ignored_and_removed(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.close()
    (tmp_path / "inprogress.json.tmp").write_text('{"_default": {"1": {"jobId": "tor')

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == ["1"]
    assert not (tmp_path / "inprogress.json.tmp").exists()
    await store.close()


async def test_a_crash_between_the_two_writes_of_a_completion_loses_nothing(tmp_path):
    """The release before the journal wrote the completed file, then the in-progress
    file: a directory it left stopped after the first opens with the move finished."""
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    await store.close()
    inprogress_before = (tmp_path / "inprogress.json").read_bytes()
    store = await TinyDBStore.open(tmp_path, "local")
    await store.update_job("1", JobChange(status="completed"))
    await store.close()
    (tmp_path / "inprogress.json").write_bytes(inprogress_before)  # the second write never happened

    store = await TinyDBStore.open(tmp_path, "local")
    jobs = await listed(store.find_jobs(JobQuery()))
    assert [(job["jobId"], job["status"]) for job in jobs] == [("1", "completed")]
    assert await listed(store.find_jobs(JobQuery(ignore_completed=True))) == []
    assert not await store.target_in_progress("local", "MY_DATASET")
    await store.close()


async def test_concurrent_inserts_on_one_target_store_exactly_one(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    results = await asyncio.gather(*(store.insert_job(stored_job(str(n))) for n in range(20)), return_exceptions=True)
    assert sum(result is None for result in results) == 1
    assert sum(isinstance(result, TargetBusy) for result in results) == 19
    assert len(await listed(store.find_jobs(JobQuery()))) == 1
    await store.close()


async def test_returned_jobs_are_copies_the_store_does_not_share(tmp_path):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(stored_job("1"))
    job = await store.get_job("1")
    await store.update_job("1", JobChange(status="built", log=[{"at": "t", "message": "Set status: built"}]))
    assert job["status"] == "queued" and job["log"] == []
    await store.close()


def test_files_are_plain_json_per_collection(tmp_path):
    async def write():
        store = await TinyDBStore.open(Path(tmp_path), "local")
        await store.insert_job(stored_job("1"))
        await store.close()

    asyncio.run(write())
    stored = json.loads((tmp_path / "inprogress.json").read_text())
    assert [job["jobId"] for job in stored["_default"].values()] == ["1"]
    targets = json.loads((tmp_path / "targets.json").read_text())
    assert [target["name"] for target in targets["_default"].values()] == ["MY_DATASET"]
    assert journal_files(tmp_path) == [], "closing folds the journal into the files"


def test_the_files_are_what_tinydb_itself_reads(tmp_path):
    async def write():
        store = await TinyDBStore.open(tmp_path, "local")
        await store.insert_job(stored_job("1"))
        await store.update_job("1", JobChange(status="completed"))
        await store.insert_job(stored_job("2"))
        await store.close()

    asyncio.run(write())
    with TinyDB(tmp_path / "inprogress.json", storage=AtomicJSONStorage) as inprogress:
        assert [job["jobId"] for job in inprogress.all()] == ["2"]
    with TinyDB(tmp_path / "completed" / "00000001.json") as completed:  # TinyDB's own storage
        assert [job["status"] for job in completed.all()] == ["completed"]
    with TinyDB(tmp_path / "targets.json", storage=AtomicJSONStorage) as targets:
        assert targets.search(Query().name == "MY_DATASET")[0]["status"] == "queued"


# --- one change, one record of the journal ---------------------------------------------------


def bump_in_progress(job_id: str, datasets: int) -> dict:
    """A BUMP whose manifesto releases, removes and drafts `datasets` datasets in turn."""
    statuses = ["PENDING_RELEASE", "PENDING_DELETE", "DRAFT"]
    updates = [
        {"name": f"DATASET_{n:04d}", "description": "d", "operation": "ADD", "releaseStatus": statuses[n % 3]}
        for n in range(datasets)
    ]
    parameters = bump_job()
    parameters["bumpManifesto"]["dataStructureUpdates"] = updates
    return {**stored_job(job_id, "DATASTORE"), "parameters": parameters}


async def test_a_change_is_one_record_with_its_targets_and_the_files_wait_for_the_fold(tmp_path, no_idle_fold):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.insert_job(bump_in_progress("1", 30))
    await store.update_job("1", JobChange(status="completed", at=T1))
    [journal] = journal_files(tmp_path)
    insert, completion = journal.read_bytes().splitlines()
    assert [op[0] for op in json.loads(insert[9:])] == ["job", "target"]
    operations = json.loads(completion[9:])
    assert [op[0] for op in operations] == ["done", *["target"] * 21]
    assert {op[1]["name"] for op in operations[1:]} == {
        "DATASTORE",
        *(f"DATASET_{n:04d}" for n in range(30) if n % 3 < 2),
    }
    assert not (tmp_path / "inprogress.json").exists() and not (tmp_path / "targets.json").exists()

    assert await store.fold()
    assert journal_files(tmp_path) == []
    assert len(json.loads((tmp_path / "targets.json").read_bytes())["_default"]) == 21
    assert json.loads((tmp_path / "inprogress.json").read_bytes()) == {"_default": {}}
    await store.close()


async def test_a_crash_at_any_byte_of_a_change_shows_all_of_it_or_none(tmp_path, no_idle_fold):
    """The directory as a crash leaves it while the completion of a BUMP that releases
    hundreds of datasets is appended, cut at one byte after another of its record."""
    data = tmp_path / "data"
    store = await TinyDBStore.open(data, "local")
    await store.insert_job(bump_in_progress("1", 600))
    await store.update_job("1", JobChange(status="validating", at=T1))
    before = await everything(store)
    [journal] = journal_files(data)
    start = journal.stat().st_size
    await store.update_job("1", JobChange(status="completed", at=T2))
    after = await everything(store)
    image = tmp_path / "image"
    shutil.copytree(data, image)
    await store.close()

    assert [len(before["targets"]), len(after["targets"])] == [1, 401]
    record = (image / journal.relative_to(data)).read_bytes()
    end = len(record)
    assert end - start > 50_000
    cuts = sorted({start, start + 1, start + 9, start + 10, end - 2, end - 1, end, *range(start, end, 4999)})
    for cut in cuts:
        crashed = tmp_path / f"crash-{cut}"
        shutil.copytree(image, crashed)
        with open(crashed / journal.relative_to(data), "r+b") as file:
            file.truncate(cut)
        reopened = await TinyDBStore.open(crashed, "local")
        try:
            shown = await everything(reopened)
        finally:
            await reopened.close()
        # Only the newline may be missing from a record that counts.
        assert shown == (after if cut >= end - 1 else before), f"cut at byte {cut - start} of the record"


async def test_targets_follow_job_order_after_a_crash_and_after_a_fold(tmp_path, no_idle_fold):
    """Which job a target shows is stored with it: reopened from the journal alone (a crash)
    or from the files (a fold), a store still leaves a dataset to a job newer than the BUMP
    that releases it when that BUMP completes."""
    data = tmp_path / "data"
    store = await TinyDBStore.open(data, "local")
    await store.insert_job({**stored_job("1", "DATASTORE"), "parameters": bump_job()})
    await store.insert_job(stored_job("2", "NEW_DATASET"))
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    await store.close()
    for path in (crashed, data):
        reopened = await TinyDBStore.open(path, "local")
        await reopened.update_job("1", JobChange(status="completed", at=T2))
        shown = {target["name"]: target["action"] for target in await listed(reopened.list_targets("local"))}
        assert shown == {
            "DATASTORE": ["BUMP", "1.0.0", "1.1.0"],
            "NEW_DATASET": ["ADD"],
            "OLD_DATASET": ["REMOVED", "1.1.0"],
        }
        await reopened.close()


async def test_a_target_keeps_its_revision_in_the_journal_and_in_the_files(tmp_path, no_idle_fold):
    data = tmp_path / "data"
    store = await TinyDBStore.open(data, "local")
    await store.insert_job(stored_job("1"))
    await store.update_job("1", JobChange(status="validating", at=T1))
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)  # the change in the journal alone
    await store.close()
    [stored] = json.loads((data / "targets.json").read_bytes())["_default"].values()
    assert stored["revision"] == 2
    for path in (crashed, data):
        reopened = await TinyDBStore.open(path, "local")
        assert (await reopened.get_target("local", "MY_DATASET"))["revision"] == 2
        await reopened.update_job("1", JobChange(status="transforming", at=T2))
        assert (await reopened.get_target("local", "MY_DATASET"))["revision"] == 3
        await reopened.close()


async def test_a_crash_in_the_middle_of_a_fold_loses_nothing(tmp_path, no_idle_fold):
    """A fold writes the files one by one and deletes the journal last: whichever
    files it had written, the journal replayed over them gives the same store."""
    data = tmp_path / "data"
    store = await TinyDBStore.open(data, "local", {"msg": "started", "paused": False, "timestamp": T1})
    await store.insert_job(bump_in_progress("1", 30))
    await store.insert_job(stored_job("2", "A"))
    await store.close()  # everything so far is in the files
    store = await TinyDBStore.open(data, "local")
    await store.update_job("1", JobChange(status="completed", at=T1))
    await store.update_job("2", JobChange(status="validating", at=T1))
    await store.insert_job(stored_job("3", "B"))
    await store.add_maintenance({"msg": "paused", "paused": True, "timestamp": T2})
    expected = await everything(store)
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    await store.close()
    folded = files_in(data)
    changed = sorted(name for name, content in folded.items() if files_in(crashed).get(name) != content)
    assert {"inprogress.json", "targets.json", "maintenance.json", "completed/00000001.json"} <= set(changed)

    for count in range(len(changed) + 1):
        for written in itertools.combinations(changed, count):
            image = tmp_path / "image"
            shutil.rmtree(image, ignore_errors=True)
            shutil.copytree(crashed, image)
            for name in written:
                (image / name).parent.mkdir(exist_ok=True)
                (image / name).write_bytes(folded[name])
            reopened = await TinyDBStore.open(image, "local")
            try:
                assert await everything(reopened) == expected, f"with {written} written"
            finally:
                await reopened.close()
            assert files_in(image) == folded


async def test_the_journal_is_folded_in_the_background_once_it_has_grown(tmp_path, monkeypatch):
    monkeypatch.setattr(tinydb_backend, "FOLD_BYTES", 4096)
    store = await TinyDBStore.open(tmp_path, "local")
    for n in range(20):
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{n}"))
    for _ in range(100):
        if (tmp_path / "inprogress.json").exists():
            break
        await asyncio.sleep(0.05)
    assert len(json.loads((tmp_path / "inprogress.json").read_bytes())["_default"]) >= 5
    await store.close()
    assert len(json.loads((tmp_path / "inprogress.json").read_bytes())["_default"]) == 20


async def test_reads_are_the_same_whenever_the_snapshot_rebuilds_its_bulk(tmp_path, monkeypatch):
    """A snapshot shares the bulk of the targets and completed jobs with the last one, and
    rebuilds it once enough were written since: reads do not change across rebuilds."""
    monkeypatch.setattr(tinydb_backend.Layered, "RECENT_LIMIT", 3)
    store = await TinyDBStore.open(tmp_path, "local")
    await store.add_datastore(
        {"rdn": "fdb", "name": "F", "description": "", "directory": "/d", "bumpEnabled": False, "deleted": False}
    )
    for n in range(12):
        rdn = "fdb" if n % 3 == 0 else "local"
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{(7 * n) % 12:02d}", datastore=rdn))
        if n % 2:
            await store.update_job(f"{n:06d}", JobChange(status="completed", at=T1))
        listing = await listed(store.list_targets("local"))
        assert [target["name"] for target in listing] == sorted(target["name"] for target in listing)
    names = {rdn: [target["name"] for target in await listed(store.list_targets(rdn))] for rdn in ("local", "fdb")}
    assert names == {
        "local": sorted(f"T{(7 * n) % 12:02d}" for n in range(12) if n % 3),
        "fdb": sorted(f"T{(7 * n) % 12:02d}" for n in range(12) if n % 3 == 0),
    }
    assert [(await store.get_job(f"{n:06d}"))["status"] for n in range(12)] == ["queued", "completed"] * 6
    assert (await store.get_target("fdb", "T00"))["datastoreRdn"] == "fdb"
    shown = await everything(store)
    await store.close()
    reopened = await TinyDBStore.open(tmp_path, "local")
    assert await everything(reopened) == shown
    await reopened.close()


# --- the completed set --------------------------------------------------------------------


async def test_the_completed_set_spreads_over_segments_and_reopens_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(tinydb_backend, "SEGMENT_SIZE", 3)
    store = await TinyDBStore.open(tmp_path, "local")
    for n in range(10):
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{n}"))
        await store.update_job(f"{n:06d}", JobChange(status="completed" if n % 2 else "failed"))
    await store.close()
    assert len(list((tmp_path / "completed").glob("*.json"))) == 4

    store = await TinyDBStore.open(tmp_path, "local")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))] == [f"{n:06d}" for n in range(10)]
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery(status="failed")))] == [
        f"{n:06d}" for n in range(0, 10, 2)
    ]
    assert (await store.get_job("000007"))["status"] == "completed"
    assert [job["jobId"] for job in await listed(store.jobs_for_target("local", "T4"))] == ["000004"]
    assert (await store.stats()).completed == 10
    await store.close()


async def test_a_completion_rewrites_only_the_newest_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(tinydb_backend, "SEGMENT_SIZE", 2)
    store = await TinyDBStore.open(tmp_path, "local")
    for n in range(4):
        await store.insert_job(stored_job(f"{n:06d}", target=f"T{n}"))
        await store.update_job(f"{n:06d}", JobChange(status="completed"))
    assert await store.fold()
    first = tmp_path / "completed" / "00000001.json"
    written = first.stat().st_mtime_ns, first.read_bytes()
    await store.insert_job(stored_job("000004", target="T4"))
    await store.update_job("000004", JobChange(status="completed"))
    assert await store.fold()
    assert (first.stat().st_mtime_ns, first.read_bytes()) == written
    assert (tmp_path / "completed" / "00000003.json").exists()
    await store.close()


# --- start-up refuses what it cannot trust, and changes nothing -------------------------------


async def valid_directory(path: Path) -> None:
    """A data directory with a datastore, maintenance, a job in progress and a completed one."""
    store = await TinyDBStore.open(path, "local", {"msg": "started", "paused": False, "timestamp": T1})
    datastore = {"rdn": "no.ssb.fdb", "name": "F", "description": "", "directory": "/d"}
    await store.add_datastore({**datastore, "bumpEnabled": False, "deleted": False})
    await store.insert_job(stored_job("1", "A"))
    await store.insert_job(stored_job("2", "B"))
    await store.update_job("2", JobChange(status="completed"))
    await store.close()


async def refused_start(path: Path) -> str:
    """Why opening `path` is refused, having checked that the refusal is one line and changes nothing."""
    before = files_in(path)
    with pytest.raises(StoreCorrupt) as refused:
        await TinyDBStore.open(path, "local")
    assert "\n" not in str(refused.value)
    assert files_in(path) == before
    return str(refused.value)


def journal_with_a_damaged_record(path: Path) -> str:
    """A journal whose second record fails its checksum with a whole record after it."""
    record = b'[["forget", "no.such"]]'
    whole = b"%08x %b" % (zlib.crc32(record), record)
    (path / "journal").mkdir(exist_ok=True)
    (path / "journal" / "00000007.jsonl").write_bytes(b"\n".join([whole, b"0badc0de garbage", whole]) + b"\n")
    return "journal/00000007.jsonl"


DAMAGES = {
    "inprogress.json is not JSON": ("inprogress.json", b'{"_default": {"1": {"jobId": "tor', "is not valid JSON"),
    "maintenance.json is empty": ("maintenance.json", b"", "is empty"),
    "targets.json lacks a name": ("targets.json", b'{"_default": {"1": {"status": "queued"}}}', "has no text name"),
    "a target lacks who updated it": (
        "targets.json",
        json.dumps({"_default": {"1": {**SAVED_TARGET, "lastUpdatedBy": None}}}).encode(),
        "has no lastUpdatedBy with a text userId, firstName and lastName",
    ),
    "datastores.json is a list": ("datastores.json", b"[]", "its top level is not an object"),
    "inprogress.json has another table": ("inprogress.json", b'{"_default": {}, "jobs": {}}', "holds a table 'jobs'"),
    "a segment holds a job in progress": (
        "completed/00000001.json",
        json.dumps({"_default": {"1": stored_job("9")}}).encode(),
        "is not final",
    ),
    "a segment's document id is not a number": (
        "completed/00000001.json",
        json.dumps({"_default": {"x": stored_job("9", status="failed")}}).encode(),
        "document id 'x'",
    ),
    "a stray segment": ("completed/zzz.json", b'{"_default": {}}', "is not a file of the store's completed"),
    "a stray file": ("notes.txt", b"hello", "is not a file of job-service's store"),
    "a stray journal": ("journal/1.jsonl", b"", "is not a file of the store's journal"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
async def test_a_damaged_or_unexpected_file_is_refused_by_name_and_nothing_is_changed(tmp_path, damage):
    await valid_directory(tmp_path)
    name, content, problem = DAMAGES[damage]
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(content)
    (tmp_path / "targets.json.tmp").write_bytes(b"a leftover")
    before = files_in(tmp_path)

    with pytest.raises(StoreCorrupt) as refused:
        await TinyDBStore.open(tmp_path, "local")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / name}: ") and problem in message and "\n" not in message
    assert files_in(tmp_path) == before, "a refused start changes nothing"
    await (await TinyDBStore.open(tmp_path / "elsewhere", "local")).close()  # the lock was released


async def test_a_journal_record_damaged_before_whole_ones_is_refused(tmp_path):
    await valid_directory(tmp_path)
    name = journal_with_a_damaged_record(tmp_path)
    before = files_in(tmp_path)
    with pytest.raises(StoreCorrupt, match=rf"^{tmp_path / name}: record 2 fails its checksum, yet whole records"):
        await TinyDBStore.open(tmp_path, "local")
    assert files_in(tmp_path) == before


async def test_a_job_in_two_segments_is_refused(tmp_path):
    await valid_directory(tmp_path)
    segment = (tmp_path / "completed" / "00000001.json").read_bytes()
    (tmp_path / "completed" / "00000002.json").write_bytes(segment)
    with pytest.raises(StoreCorrupt, match=r"00000002.json: document 1 is job 2, which an earlier segment holds"):
        await TinyDBStore.open(tmp_path, "local")


def test_the_service_refuses_to_start_on_a_damaged_file_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    asyncio.run(valid_directory(data))
    (data / "maintenance.json").write_bytes(b"")
    before = files_in(data)
    config = write_config(tmp_path / "config.toml", service_config({"tinydb": {"path": str(data)}}, tmp_path / "in"))
    result = run_job_service(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"job-service: {data / 'maintenance.json'}: is empty")
    assert files_in(data) == before


# --- a journal that lost acknowledged records -------------------------------------------------


async def journal_of_two_files(tmp_path: Path, monkeypatch) -> Path:
    """A data directory as a crash leaves it with records 1 and 2 in one journal file and 3 in
    the next: a fold that could not write the files had rotated the journal and kept both."""
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    store = await TinyDBStore.open(data, "local")
    await store.insert_job(stored_job("1", "A"))
    await store.insert_job(stored_job("2", "B"))

    def disk_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as failing:
        failing.setattr(tinydb_backend, "write_atomically", disk_error)
        assert not await store.fold()
    await store.insert_job(stored_job("3", "C"))
    shutil.copytree(data, crashed)
    await store.close()
    assert [path.name for path in journal_files(crashed)] == ["0000000000000001.jsonl", "0000000000000003.jsonl"]
    return crashed


def image_of(crashed: Path) -> Path:
    """A copy of `crashed` to damage."""
    image = crashed.with_name("image")
    shutil.rmtree(image, ignore_errors=True)
    shutil.copytree(crashed, image)
    return image


def cut_last_record(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


async def test_a_journal_that_lost_acknowledged_records_is_refused_naming_what_is_missing(
    tmp_path, monkeypatch, no_idle_fold
):
    crashed = await journal_of_two_files(tmp_path, monkeypatch)
    first, second = (f"journal/{number:016d}.jsonl" for number in (1, 3))
    reopened = await TinyDBStore.open(image_of(crashed), "local")  # as the crash left it, it opens whole
    assert await ids_of(reopened) == ["1", "2", "3"]
    await reopened.close()

    image = image_of(crashed)
    cut_last_record(image / first)  # at a record boundary
    assert (await refused_start(image)).startswith(
        f"{image / second}: starts at record 3, but the journal file before it ends at record 1:"
        " records 2 to 2 are missing"
    )
    image = image_of(crashed)
    (image / first).unlink()
    assert (await refused_start(image)).startswith(
        f"{image / second}: starts at record 3, but the files hold the records up to 0 only: records 1 to 2 are missing"
    )
    image = image_of(crashed)
    (image / second).write_bytes(b"")
    assert (await refused_start(image)).startswith(
        f"{image / second}: holds no whole record, where each journal file is written with its first:"
        " record 3 and any after it are lost"
    )


async def test_a_journal_cut_back_behind_the_files_is_refused(tmp_path, no_idle_fold):
    """A crash in a fold after the files and the store file were written, before the journal
    was deleted, leaves both: a journal cut back then would undo changes the files hold."""
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    store = await TinyDBStore.open(data, "local")
    for n in range(1, 4):
        await store.insert_job(stored_job(str(n), f"T{n}"))
    shutil.copytree(data, crashed)
    await store.close()
    for name in ("inprogress.json", "targets.json", "store.json"):
        shutil.copy(data / name, crashed / name)  # the fold had written them, not yet deleted the journal
    reopened = await TinyDBStore.open(image_of(crashed), "local")
    assert await ids_of(reopened) == ["1", "2", "3"]
    await reopened.close()

    image = image_of(crashed)
    [journal] = journal_files(image)
    cut_last_record(journal)
    assert (await refused_start(image)).startswith(
        f"{journal}: ends at record 2, but the files hold the records up to 3: it was cut back"
    )


async def test_a_torn_last_record_after_a_fold_is_still_a_crash_before_it(tmp_path, no_idle_fold):
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    store = await TinyDBStore.open(data, "local")
    await store.insert_job(stored_job("1", "A"))
    assert await store.fold()
    await store.insert_job(stored_job("2", "B"))
    await store.insert_job(stored_job("3", "C"))
    shutil.copytree(data, crashed)
    await store.close()
    [journal] = journal_files(crashed)
    assert journal.name == "0000000000000002.jsonl"
    journal.write_bytes(journal.read_bytes()[:-5])  # the append of record 3 cut short
    reopened = await TinyDBStore.open(crashed, "local")
    assert await ids_of(reopened) == ["1", "2"]
    await reopened.insert_job(stored_job("4", "D"))  # numbered on from the last whole record
    await reopened.close()
    reopened = await TinyDBStore.open(crashed, "local")
    assert await ids_of(reopened) == ["1", "2", "4"]
    await reopened.close()


def previous_release_record(operations: list) -> bytes:
    body = json.dumps(operations).encode()
    return b"%08x %b\n" % (zlib.crc32(body), body)


async def test_a_data_directory_of_the_previous_release_opens_and_remembers_its_default(tmp_path):
    """Its journal files are numbered by 8 digits, their records without sequence numbers, and
    it has no store file: a journal file that a crash left empty is one whose append was cut short."""
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "00000001.jsonl").write_bytes(previous_release_record([["job", stored_job("1")]]))
    (journal / "00000002.jsonl").write_bytes(b"")
    store = await TinyDBStore.open(tmp_path, "other.default")
    assert [job["jobId"] for job in await listed(store.find_jobs(JobQuery(datastore="local")))] == ["1"]
    await store.insert_job(stored_job("2", "B", datastore="other.default"))
    await store.close()
    assert journal_files(tmp_path) == []
    assert json.loads((tmp_path / "store.json").read_bytes()) == {"defaultDatastore": "other.default", "folded": 1}

    message = await refused_start(tmp_path)  # opened with "local"
    assert message == (
        f"{tmp_path / 'store.json'}: the store was first opened with the default datastore 'other.default',"
        " and its documents from before datastores belong to it; it cannot be opened with 'local':"
        " set [datastores] default = 'other.default' again (nothing was changed)"
    )


async def ids_of(store) -> list[str]:
    return [job["jobId"] for job in await listed(store.find_jobs(JobQuery()))]


# --- what is not a file of the store -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["inprogress.json", "store.json", "completed/00000001.json", "journal/0000000000000009.jsonl", LOCK_FILE]
)
@pytest.mark.parametrize("kind", ["a FIFO", "a directory"])
async def test_a_fifo_or_a_directory_in_place_of_a_store_file_is_refused_at_once(tmp_path, name, kind):
    await valid_directory(tmp_path)
    path = tmp_path / name
    path.unlink(missing_ok=True)
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path) if kind == "a FIFO" else path.mkdir()
    message = await asyncio.wait_for(refused_start(tmp_path), timeout=30)
    assert message.startswith(f"{path}: is {kind}") or message.startswith(f"{path}: is not a file of the store")


def test_a_directory_in_place_of_the_lock_file_is_one_line_at_start(tmp_path):
    data = tmp_path / "data"
    (data / LOCK_FILE).mkdir(parents=True)
    config = write_config(tmp_path / "config.toml", service_config({"tinydb": {"path": str(data)}}, tmp_path / "in"))
    result = run_job_service(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"job-service: {data / LOCK_FILE}: is a directory, where the store keeps its lock file")
    )


# --- a disk that cannot take the write ------------------------------------------------------


@contextlib.contextmanager
def failing_journal_writes(monkeypatch, error: int):
    """Make every write to a journal file fail with `error`, as the disk would (injected at
    the one place the store's changes are written: `os.write` on a file under journal/)."""
    real_write = os.write
    failing = {"on": True}

    def write(fd: int, data: bytes) -> int:
        if failing["on"] and "/journal/" in os.readlink(f"/proc/self/fd/{fd}"):
            # A full disk takes part of the write before it refuses the rest.
            if error == errno.ENOSPC and len(data) > 100:
                return real_write(fd, data[: len(data) // 2])
            raise OSError(error, os.strerror(error))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    try:
        yield failing
    finally:
        failing["on"] = False


@pytest.mark.parametrize("path", ["/jobs", "/datastores/local/jobs"])
async def test_a_post_of_many_jobs_on_a_full_disk_stores_none_of_them_and_all_once_there_is_room(
    client, monkeypatch, path
):
    """TinyDB writes a POST's jobs as one journal record: a partial POST cannot happen,
    so the 507 is the whole truth (MongoDB's per-entry answer: test_mongo_shared.py)."""
    entries = [{"operation": "ADD", "target": f"DATASET_{n}"} for n in range(10)]
    with failing_journal_writes(monkeypatch, errno.ENOSPC) as failing:
        response = await client.post(path, json={"jobs": entries})
        assert response.status == 507
        assert await (await client.get("/jobs")).json() == []
        assert await (await client.get("/targets")).json() == []
        failing["on"] = False
    results = await (await client.post(path, json={"jobs": entries})).json()
    assert [result["status"] for result in results] == ["queued"] * 10


async def test_a_full_disk_refuses_the_change_whole_and_takes_the_same_change_once_there_is_room(
    make_client, tmp_path, monkeypatch
):
    """ENOSPC injected at the journal's writes (see `failing_journal_writes`); the
    test on a real full disk, a small tmpfs, follows."""
    client = await make_client(jobs={"bump_enabled": True})
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "KEPT"}]})).json()
    job_id = created["job_id"]
    before = await (await client.get(f"/jobs/{job_id}")).json()
    target_before = await (await client.get("/targets/KEPT")).json()

    with failing_journal_writes(monkeypatch, errno.ENOSPC) as failing:
        response = await client.put(f"/jobs/{job_id}", json={"status": "completed", "log": "done"})
        assert response.status == 507
        message = (await response.json())["message"]
        assert message.startswith(f"The disk of the data directory {tmp_path / 'data'} is full")
        assert (await client.get(f"/jobs/{job_id}")).status == 200  # reads keep working
        assert await (await client.get(f"/jobs/{job_id}")).json() == before
        assert await (await client.get("/targets/KEPT")).json() == target_before
        ready = await client.get("/health/ready")
        assert ready.status == 503 and "is full" in (await ready.json())["message"]
        failing["on"] = False
        assert (await client.get("/health/ready")).status == 200
        assert (await client.put(f"/jobs/{job_id}", json={"status": "completed", "log": "done"})).status == 200

    assert (await (await client.get("/targets/KEPT")).json())["status"] == "completed"
    await client.close()
    assert not list((tmp_path / "data").rglob("*.tmp"))
    store = await TinyDBStore.open(tmp_path / "data", "local")  # the journal holds no half record
    job = await store.get_job(job_id)
    assert [entry["message"] for entry in job["log"]] == ["Set status: completed", "done"]
    await store.close()


async def test_a_read_only_disk_is_a_503_that_says_so_and_reads_keep_working(make_client, tmp_path, monkeypatch):
    """EROFS injected at the journal's writes: a read-only remount needs no file open for writing."""
    client = await make_client()
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "KEPT"}]})).json()
    with failing_journal_writes(monkeypatch, errno.EROFS) as failing:
        response = await client.put(f"/jobs/{created['job_id']}", json={"status": "validating"})
        assert response.status == 503
        assert "is on a read-only file system" in (await response.json())["message"]
        assert (await client.get("/jobs")).status == 200
        assert (await client.get("/health/ready")).status == 503
        failing["on"] = False
        assert (await client.get("/health/ready")).status == 200
    await client.put(f"/jobs/{created['job_id']}", json={"status": "validating"})
    assert (await (await client.get("/targets/KEPT")).json())["status"] == "validating"


async def test_a_failing_disk_is_a_500_that_leaks_nothing_and_loses_nothing(make_client, tmp_path, monkeypatch, caplog):
    """Any other failure to write (EIO, injected) is unexpected: a 500 with the error in the log."""
    client = await make_client()
    [kept] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "KEPT"}]})).json()
    with failing_journal_writes(monkeypatch, errno.EIO):
        response = await client.post(
            "/jobs", json={"jobs": [{"operation": "ADD", "target": "LOST"}]}, headers={"X-Request-ID": "req-500"}
        )
        assert response.status == 500
        assert await response.json() == {"message": "Internal Server Error"}
        assert response.headers["X-Request-ID"] == "req-500"
        assert "Input/output error" in caplog.text and "Appending to" in caplog.text

    jobs = await (await client.get("/jobs")).json()
    assert [job["jobId"] for job in jobs] == [kept["job_id"]]
    assert (await client.get("/targets/LOST")).status == 404
    metrics = await (await client.get("/metrics")).text()
    assert 'store_operation_errors_total{operation="insert_job"} 1.0' in metrics


async def test_a_completion_refused_by_the_disk_is_stored_once_when_sent_again(make_client, tmp_path, monkeypatch):
    """Nothing of a refused completion is stored, so the retry completes the job once."""
    client = await make_client()
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})).json()
    job_id = created["job_id"]
    with failing_journal_writes(monkeypatch, errno.ENOSPC):
        assert (await client.put(f"/jobs/{job_id}", json={"status": "completed"})).status == 507
    assert (await client.put(f"/jobs/{job_id}", json={"status": "completed"})).status == 200

    retry = await client.put(f"/jobs/{job_id}", json={"status": "completed"})
    assert (retry.status, await retry.json()) == (409, {"message": f"Job {job_id} is already completed"})
    assert [job["jobId"] for job in await (await client.get("/jobs")).json()] == [job_id]
    assert await (await client.get("/jobs?ignoreCompleted=true")).json() == []
    [again] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})).json()
    assert again["msg"] == "CREATED"
    await client.close()

    store = await TinyDBStore.open(tmp_path / "data", "local")
    assert [job["status"] for job in await listed(store.jobs_for_target("local", "MY_DATASET"))] == [
        "completed",
        "queued",
    ]
    await store.close()


@pytest.fixture
def small_disk(tmp_path):
    """The data directory on a tmpfs of 1 MiB (needs root, as CI has)."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the injected ENOSPC test stands")
    yield data
    subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the disk `directory` is on."""
    filler = directory / "filler"  # not a file of the store: removed before the store opens again
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


async def test_a_really_full_disk_is_a_507_leaves_nothing_behind_and_recovers(small_disk, make_client):
    client = await make_client()
    store = client.app[STORE]
    [created] = await (await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "KEPT"}]})).json()
    job_id = created["job_id"]
    assert (await client.get("/health/ready")).status == 200
    filler = fill(small_disk)

    ready = await client.get("/health/ready")
    assert (ready.status, await ready.json()) == (
        503,
        {"message": f"The disk of the data directory {small_disk} is full"},
    )
    response = await client.put(f"/jobs/{job_id}", json={"description": "x" * 16_000})
    assert response.status == 507
    assert "is full: the change was not stored" in (await response.json())["message"]
    assert not await store.fold(), "the files cannot be written either"
    assert not list(small_disk.rglob("*.tmp")), "no temporary file is left behind"
    assert "description" not in (await (await client.get(f"/jobs/{job_id}")).json())["parameters"]
    assert [job["jobId"] for job in await (await client.get("/jobs")).json()] == [job_id]

    filler.unlink()
    assert (await client.get("/health/ready")).status == 200
    assert (await client.put(f"/jobs/{job_id}", json={"description": "x" * 16_000})).status == 200
    assert await store.fold()
    await client.close()
    reopened = await TinyDBStore.open(small_disk, "local")
    try:
        assert (await reopened.get_job(job_id))["parameters"]["description"] == "x" * 16_000
    finally:
        await reopened.close()


async def test_a_store_that_cannot_write_is_not_ready(tmp_path, monkeypatch):
    store = await TinyDBStore.open(tmp_path, "local")
    await store.ping()
    with failing_journal_writes(monkeypatch, errno.ENOSPC):
        with pytest.raises(StoreFull):
            await store.insert_job(stored_job("1"))
        with pytest.raises(StoreUnavailable, match="is full"):
            await store.ping()
    await store.ping()
    await store.insert_job(stored_job("1"))
    await store.close()
