"""The dataset archives waiting in the input directory, built as real tar files."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import create_job, make_archive, put_job

from job_service import LISTING_FRESH_SECONDS


async def test_archives_are_listed_with_what_they_hold(client, input_dir):
    make_archive(input_dir / "FULL.tar", "FULL.json", "chunks/", "chunks/1.parquet")
    make_archive(input_dir / "METADATA_ONLY.tar", "./METADATA_ONLY.json")
    make_archive(input_dir / "DATA_ONLY.tar", "chunks")
    make_archive(input_dir / "NESTED.tar", "NESTED/NESTED.json", "NESTED/chunks/1.parquet")
    make_archive(input_dir / "archive" / "FULL.tar", "FULL.json")

    response = await client.get("/importable-datasets")
    assert response.status == 200
    assert await response.json() == [  # a datastore without versions: new datasets all
        {"datasetName": "DATA_ONLY", "hasMetadata": False, "hasData": True, "isArchived": False, "operation": "-"},
        {"datasetName": "FULL", "hasMetadata": True, "hasData": True, "isArchived": False, "operation": "ADD"},
        {"datasetName": "FULL", "hasMetadata": True, "hasData": False, "isArchived": True, "operation": "-"},
        {"datasetName": "METADATA_ONLY", "hasMetadata": True, "hasData": False, "isArchived": False, "operation": "-"},
        {"datasetName": "NESTED", "hasMetadata": False, "hasData": False, "isArchived": False, "operation": "-"},
    ]


async def test_broken_and_misnamed_entries_are_skipped_not_a_500(client, input_dir, caplog):
    caplog.set_level(logging.INFO, logger="job_service")
    make_archive(input_dir / "GOOD.tar", "GOOD.json")
    (input_dir / "BROKEN.tar").write_bytes(b"this is not a tar archive" * 100)
    (input_dir / "EMPTY.tar").write_bytes(b"")
    (input_dir / "FOLDER.tar").mkdir()
    make_archive(input_dir / "lower_case.tar", "lower_case.json")
    make_archive(input_dir / "GOOD.tar.gz", "GOOD.json")
    (input_dir / "notes.txt").write_text("hello")
    unreadable = make_archive(input_dir / "UNREADABLE.tar", "UNREADABLE.json")
    unreadable.chmod(0)

    response = await client.get("/importable-datasets")
    assert response.status == 200
    names = [dataset["datasetName"] for dataset in await response.json()]
    if os.geteuid() == 0:  # root reads a file whatever its mode
        names.remove("UNREADABLE")
    assert names == ["GOOD"]
    assert "BROKEN.tar" in caplog.text and "FOLDER.tar" in caplog.text


async def test_a_link_out_of_the_input_directory_is_not_followed(client, input_dir, tmp_path):
    outside = make_archive(tmp_path / "outside" / "SECRET.tar", "SECRET.json")
    (input_dir / "SECRET.tar").symlink_to(outside)
    assert await (await client.get("/importable-datasets")).json() == []


async def test_no_input_directory_content_is_an_empty_list(client):
    response = await client.get("/importable-datasets")
    assert response.status == 200
    assert await response.json() == []


async def test_the_server_answers_while_archives_are_read(client, input_dir):
    big = input_dir / "BIG.tar"
    with tarfile.open(big, "w") as archive:
        for n in range(20000):
            info = tarfile.TarInfo(f"other/{n}")
            archive.addfile(info, io.BytesIO(b""))
    listing = asyncio.ensure_future(client.get("/importable-datasets"))
    await asyncio.sleep(0.01)
    alive = await client.get("/health/alive")
    assert alive.status == 200
    assert not listing.done(), "the listing should still be reading while the server answered"
    assert (await listing).status == 200


async def test_delete_removes_only_the_archive_in_the_input_directory(client, input_dir):
    make_archive(input_dir / "MY_DATASET.tar", "MY_DATASET.json")
    archived = make_archive(input_dir / "archive" / "MY_DATASET.tar", "MY_DATASET.json")

    response = await client.delete("/importable-datasets/MY_DATASET")
    assert response.status == 200
    assert await response.json() == {"message": "OK, MY_DATASET deleted"}
    assert not (input_dir / "MY_DATASET.tar").exists()
    assert archived.exists()

    response = await client.delete("/importable-datasets/MY_DATASET")
    assert response.status == 404


@pytest.fixture
def undeletable(input_dir):
    """An archive the service may not delete, even as root: immutable (`chattr +i`)."""
    path = make_archive(input_dir / "LOCKED.tar", "LOCKED.json")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {made.stderr.decode().strip()}")
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_an_archive_the_service_may_not_delete_is_a_clear_message_and_stays(client, undeletable):
    response = await client.delete("/importable-datasets/LOCKED")
    assert response.status == 500
    assert await response.json() == {"message": f"The service may not delete {undeletable}: permission denied"}
    assert undeletable.exists()
    listed = await (await client.get("/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["LOCKED"]


async def test_a_broken_upload_can_be_deleted(client, input_dir):
    (input_dir / "BROKEN.tar").write_bytes(b"half an upload")
    response = await client.delete("/importable-datasets/BROKEN")
    assert response.status == 200
    assert not (input_dir / "BROKEN.tar").exists()


async def test_deleting_a_folder_named_like_an_archive_is_a_404(client, input_dir):
    (input_dir / "FOLDER.tar").mkdir()
    response = await client.delete("/importable-datasets/FOLDER")
    assert response.status == 404
    assert (input_dir / "FOLDER.tar").is_dir()


async def test_a_link_is_removed_and_its_target_kept(client, input_dir, tmp_path):
    outside = make_archive(tmp_path / "outside" / "LINKED.tar", "LINKED.json")
    (input_dir / "LINKED.tar").symlink_to(outside)
    response = await client.delete("/importable-datasets/LINKED")
    assert response.status == 200
    assert outside.exists() and not (input_dir / "LINKED.tar").is_symlink()


async def test_an_archive_with_a_job_in_progress_cannot_be_deleted(client, input_dir):
    archive = make_archive(input_dir / "BUSY.tar", "BUSY.json")
    job_id = await create_job(client, operation="ADD", target="BUSY")

    response = await client.delete("/importable-datasets/BUSY")
    assert response.status == 409
    assert "BUSY" in (await response.json())["message"]
    assert archive.exists()

    await put_job(client, job_id, status="completed")
    assert (await client.delete("/importable-datasets/BUSY")).status == 200


@pytest.mark.parametrize("name", ["lower", "1ABC", "A" * 129, "A.B", "..", "%2e%2e", "A%2FB", "A%00"])
async def test_an_invalid_name_is_a_400_and_deletes_nothing(client, input_dir, name):
    keep = make_archive(input_dir / "KEEP.tar", "KEEP.json")
    response = await client.delete(f"/importable-datasets/{name}")
    assert response.status in (400, 404)
    if response.status == 400:
        message = (await response.json())["message"]
        assert message.endswith('contains invalid characters. Please use only uppercase A-Z, numbers 0-9 or "_"')
    assert keep.exists()


async def test_a_changed_archive_is_read_again_and_a_broken_one_logged_once(client, input_dir, caplog):
    archive = make_archive(input_dir / "CHANGING.tar", "CHANGING.json")
    (input_dir / "BROKEN.tar").write_bytes(b"not a tar")
    first = await (await client.get("/importable-datasets")).json()
    assert first == [
        {"datasetName": "CHANGING", "hasMetadata": True, "hasData": False, "isArchived": False, "operation": "-"}
    ]

    make_archive(archive, "CHANGING.json", "chunks/1.parquet")
    os.utime(archive, ns=(1, 1))  # a new file time for certain, however fast the rewrite
    await asyncio.sleep(
        LISTING_FRESH_SECONDS
    )  # rewritten in place, the folder unchanged: seen once the listing is stale
    second = await (await client.get("/importable-datasets")).json()
    assert second == [
        {"datasetName": "CHANGING", "hasMetadata": True, "hasData": True, "isArchived": False, "operation": "ADD"}
    ]
    assert caplog.text.count("BROKEN.tar") == 1


# --- what to post: each entry's operation, from the datastore's version files ---

#: The version files are files: the same on every backend.
FILES_ONLY = pytest.mark.parametrize("backend", ["tinydb"])
FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data"}


def version(*updates: tuple[str, str], number: str = "1.0.0.0") -> dict:
    """A version as the platform writes it, of (dataset, release status) updates."""
    return {
        "version": number,
        "description": "A release",
        "releaseTime": 1700000000,
        "languageCode": "no",
        "dataStructureUpdates": [
            {"name": name, "description": "", "operation": "ADD", "releaseStatus": status} for name, status in updates
        ],
        "updateType": "MINOR",
    }


def write_versions(directory: Path, draft: dict, *versions: dict) -> None:
    """The datastore's `datastore/draft_version.json` and `datastore_versions.json` (newest first)."""
    folder = directory / "datastore"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "draft_version.json").write_text(json.dumps(draft))
    released = {"name": "no.ssb.fdb", "label": "Forskningsdata", "description": "", "versions": list(versions)}
    (folder / "datastore_versions.json").write_text(json.dumps(released))


@pytest.fixture
async def fdb(client, input_dir: Path) -> Path:
    """A provisioned datastore's directory; its archives wait in `<directory>_input`."""
    response = await client.post("/datastores", json=FDB)
    assert response.status == 200, await response.text()
    return input_dir.parent / "datastores" / "no.ssb.fdb"


async def operations(client, path: str = "/datastores/no.ssb.fdb/importable-datasets") -> dict[tuple[str, bool], str]:
    response = await client.get(path)
    assert response.status == 200
    return {(entry["datasetName"], entry["isArchived"]): entry["operation"] for entry in await response.json()}


@FILES_ONLY
async def test_each_entry_says_what_to_post_as_the_platforms_api_derives_it(client, fdb):
    write_versions(
        fdb,
        version(("IN_DRAFT", "DRAFT"), ("TO_RELEASE", "PENDING_RELEASE"), ("REDRAFTED", "DRAFT"), number="0.0.0.1"),
        version(("TO_DELETE", "PENDING_DELETE"), ("GONE", "DELETED"), ("GONE_NO_DATA", "DELETED"), number="3.0.0.0"),
        version(("BACK", "RELEASED"), number="2.0.0.0"),
        version(
            ("RELEASED", "RELEASED"),
            ("METADATA_FIX", "RELEASED"),
            ("REDRAFTED", "RELEASED"),
            ("BACK", "DELETED"),
            ("GONE", "RELEASED"),
            ("STRANGE", "SOMETHING_ELSE"),
            number="1.0.0.0",
        ),
    )
    inbox = Path(f"{fdb}_input")
    full = {"NEW", "IN_DRAFT", "TO_RELEASE", "TO_DELETE", "GONE", "RELEASED", "REDRAFTED", "BACK", "STRANGE"}
    for name in full:
        make_archive(inbox / f"{name}.tar", f"{name}.json", "chunks/1.parquet")
    for name in ("NEW_NO_DATA", "GONE_NO_DATA", "METADATA_FIX"):
        make_archive(inbox / f"{name}.tar", f"{name}.json")
    make_archive(inbox / "DATA_ONLY.tar", "chunks/1.parquet")
    make_archive(inbox / "archive" / "RELEASED.tar", "RELEASED.json")

    assert await operations(client) == {
        ("NEW", False): "ADD",  # in no version
        ("NEW_NO_DATA", False): "-",
        ("IN_DRAFT", False): "-",  # a job has it in hand
        ("TO_RELEASE", False): "-",
        ("TO_DELETE", False): "-",
        ("GONE", False): "ADD",  # deleted in the newest version that names it
        ("GONE_NO_DATA", False): "-",
        ("RELEASED", False): "CHANGE",
        ("RELEASED", True): "PATCH_METADATA",  # archived entries say so too
        ("METADATA_FIX", False): "PATCH_METADATA",
        ("REDRAFTED", False): "-",  # the draft before the versions
        ("BACK", False): "CHANGE",  # the newest version first
        ("STRANGE", False): "-",  # a status nobody knows: nothing to post
        ("DATA_ONLY", False): "-",  # no metadata: nothing to import
    }


@FILES_ONLY
async def test_no_entry_is_dropped_and_the_dataset_collectors_fields_stay(client, fdb):
    write_versions(fdb, version(("IN_DRAFT", "DRAFT")))
    make_archive(Path(f"{fdb}_input") / "IN_DRAFT.tar", "IN_DRAFT.json", "chunks/1.parquet")
    listed = await (await client.get("/datastores/no.ssb.fdb/importable-datasets")).json()
    assert listed == [
        {"datasetName": "IN_DRAFT", "hasMetadata": True, "hasData": True, "isArchived": False, "operation": "-"}
    ]


@FILES_ONLY
async def test_the_default_datastore_reads_the_version_files_of_its_own_directory(client, input_dir):
    [default] = [datastore for datastore in await (await client.get("/datastores")).json()]
    write_versions(Path(default["directory"]), version(), version(("MY_DATASET", "RELEASED")))
    make_archive(input_dir / "MY_DATASET.tar", "MY_DATASET.json", "chunks/1.parquet")
    assert await operations(client, "/importable-datasets") == {("MY_DATASET", False): "CHANGE"}


@FILES_ONLY
async def test_a_change_of_the_version_files_changes_the_listing_at_once(client, fdb):
    write_versions(fdb, version())
    make_archive(Path(f"{fdb}_input") / "MY_DATASET.tar", "MY_DATASET.json", "chunks/1.parquet")
    assert await operations(client) == {("MY_DATASET", False): "ADD"}
    assert await operations(client) == {("MY_DATASET", False): "ADD"}  # the kept answer

    # The executor releases it: the archives are unchanged, the answer is not.
    write_versions(fdb, version(), version(("MY_DATASET", "RELEASED")))
    assert await operations(client) == {("MY_DATASET", False): "CHANGE"}
    write_versions(fdb, version(("MY_DATASET", "PENDING_DELETE")), version(("MY_DATASET", "RELEASED")))
    assert await operations(client) == {("MY_DATASET", False): "-"}


@FILES_ONLY
async def test_the_version_files_are_read_once_per_change_not_at_every_listing(client, fdb):
    write_versions(fdb, version(), version(("MY_DATASET", "RELEASED")))
    make_archive(Path(f"{fdb}_input") / "MY_DATASET.tar", "MY_DATASET.json", "chunks/1.parquet")
    assert await operations(client) == {("MY_DATASET", False): "CHANGE"}

    # Rewritten in place to the same size and time: a listing that parsed the file would see it.
    versions = fdb / "datastore" / "datastore_versions.json"
    before = versions.stat()
    versions.write_text(versions.read_text().replace('"RELEASED"', '"DELETED" '))
    os.utime(versions, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert await operations(client) == {("MY_DATASET", False): "CHANGE"}

    os.utime(versions, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # now it has changed
    assert await operations(client) == {("MY_DATASET", False): "ADD"}


@FILES_ONLY
@pytest.mark.parametrize(
    ("damage", "logged"),
    [
        (lambda folder: (folder / "datastore_versions.json").unlink(), "datastore_versions.json is missing"),
        (lambda folder: (folder / "draft_version.json").unlink(), "draft_version.json is missing"),
        (
            lambda folder: (folder / "datastore_versions.json").write_text("{half"),
            "datastore_versions.json is not JSON",
        ),
        (lambda folder: (folder / "datastore_versions.json").write_text("[]"), "has no list of versions"),
        (
            lambda folder: (folder / "draft_version.json").write_text('{"dataStructureUpdates": [{"name": 1}]}'),
            "draft_version.json has a version without dataStructureUpdates",
        ),
    ],
    ids=["versions missing", "draft missing", "versions not JSON", "no list of versions", "updates without names"],
)
async def test_missing_or_unreadable_version_files_are_logged_once_and_count_as_no_versions(
    client, fdb, caplog, damage, logged
):
    write_versions(fdb, version(), version(("MY_DATASET", "RELEASED")))
    make_archive(Path(f"{fdb}_input") / "MY_DATASET.tar", "MY_DATASET.json", "chunks/1.parquet")
    damage(fdb / "datastore")
    listings = await asyncio.gather(*(operations(client) for _ in range(8)))
    assert await operations(client) == {("MY_DATASET", False): "ADD"}
    assert listings == [{("MY_DATASET", False): "ADD"}] * 8
    assert caplog.text.count(logged) == 1 and caplog.text.count("counts as having no versions") == 1

    write_versions(fdb, version(), version(("MY_DATASET", "RELEASED")))  # repaired: read again
    assert await operations(client) == {("MY_DATASET", False): "CHANGE"}
