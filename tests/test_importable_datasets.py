"""The dataset archives waiting in the input directory, built as real tar files."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import create_job, put_job

from job_service import LISTING_FRESH_SECONDS


def make_archive(path: Path, *members: str) -> Path:
    """A tar at `path` holding small files named `members` (a name ending in / is a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                data = b"{}"
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


async def test_archives_are_listed_with_what_they_hold(client, input_dir):
    make_archive(input_dir / "FULL.tar", "FULL.json", "chunks/", "chunks/1.parquet")
    make_archive(input_dir / "METADATA_ONLY.tar", "./METADATA_ONLY.json")
    make_archive(input_dir / "DATA_ONLY.tar", "chunks")
    make_archive(input_dir / "NESTED.tar", "NESTED/NESTED.json", "NESTED/chunks/1.parquet")
    make_archive(input_dir / "archive" / "FULL.tar", "FULL.json")

    response = await client.get("/importable-datasets")
    assert response.status == 200
    assert await response.json() == [
        {"datasetName": "DATA_ONLY", "hasMetadata": False, "hasData": True, "isArchived": False},
        {"datasetName": "FULL", "hasMetadata": True, "hasData": True, "isArchived": False},
        {"datasetName": "FULL", "hasMetadata": True, "hasData": False, "isArchived": True},
        {"datasetName": "METADATA_ONLY", "hasMetadata": True, "hasData": False, "isArchived": False},
        {"datasetName": "NESTED", "hasMetadata": False, "hasData": False, "isArchived": False},
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
    assert first == [{"datasetName": "CHANGING", "hasMetadata": True, "hasData": False, "isArchived": False}]

    make_archive(archive, "CHANGING.json", "chunks/1.parquet")
    os.utime(archive, ns=(1, 1))  # a new file time for certain, however fast the rewrite
    await asyncio.sleep(
        LISTING_FRESH_SECONDS
    )  # rewritten in place, the folder unchanged: seen once the listing is stale
    second = await (await client.get("/importable-datasets")).json()
    assert second == [{"datasetName": "CHANGING", "hasMetadata": True, "hasData": True, "isArchived": False}]
    assert caplog.text.count("BROKEN.tar") == 1
