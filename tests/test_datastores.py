"""Several datastores in one service: the registry, provisioning, and the per-datastore routes."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import DEFAULT_DATASTORE, bump_job, create_job, faulty, post_jobs, put_job

from job_service import PROVISIONING_AREA, PROVISIONING_MARKER

FDB = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research data"}


@pytest.fixture
def root(input_dir: Path) -> Path:
    """Where the tests' services provision datastores (see `helpers.service_config`)."""
    return input_dir.parent / "datastores"


def left_in(root: Path) -> list[str]:
    """What provisionings left in the datastores' root: everything but the provisioning
    processes' locks (their area), and whatever is in their folders there."""
    if not root.exists():
        return []
    made = [path.name for path in root.iterdir() if path.name != PROVISIONING_AREA]
    return sorted([*made, *(str(path.relative_to(root)) for path in root.glob(f"{PROVISIONING_AREA}/*/*"))])


async def provision(client, **overrides) -> str:
    """Provision a datastore that must be created; the id of its keys job."""
    response = await client.post("/datastores", json={**FDB, **overrides})
    assert response.status == 200, await response.text()
    result = await response.json()
    assert (result["status"], result["msg"]) == ("queued", "CREATED")
    return result["job_id"]


def archive(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / f"{name}.tar", "w") as tar:
        for member in (f"{name}.json", "chunks/1.parquet"):
            path = directory / member.replace("/", "_")
            path.write_text("{}")
            tar.add(path, arcname=member)


async def test_provisioning_lays_out_the_datastore_and_queues_its_keys_job(client, root):
    job_id = await provision(client)
    directory = root.resolve() / "no.ssb.fdb"
    assert sorted(path.name for path in directory.iterdir()) == ["data", "datastore", "vault"]
    assert (root / "no.ssb.fdb_input").is_dir() and (root / "no.ssb.fdb_working").is_dir()
    metadata = json.loads((directory / "datastore" / "metadata_all__DRAFT.json").read_text())
    assert metadata == {
        "dataStore": {
            "name": "no.ssb.fdb",
            "label": "Forskningsdata",
            "description": "Research data",
            "languageCode": "no",
        },
        "languages": [{"code": "no", "label": "Norsk"}],
        "dataStructures": [],
    }
    assert json.loads((directory / "datastore" / "draft_version.json").read_text()) == {
        "version": "0.0.0.0",
        "description": "Draft",
        "releaseTime": 0,
        "languageCode": "no",
        "dataStructureUpdates": [],
        "updateType": "",
    }
    assert json.loads((directory / "datastore" / "datastore_versions.json").read_text()) == {
        "name": "no.ssb.fdb",
        "label": "Forskningsdata",
        "description": "Research data",
        "versions": [],
    }
    job = await (await client.get(f"/jobs/{job_id}")).json()
    assert (job["datastoreRdn"], job["status"], job["parameters"]) == (
        "no.ssb.fdb",
        "queued",
        {"operation": "GENERATE_RSA_KEYS", "target": "DATASTORE"},
    )
    assert job["createdBy"]["userId"] == "local-user"
    target = await (await client.get("/datastores/no.ssb.fdb/targets/DATASTORE")).json()
    assert (target["datastoreRdn"], target["action"]) == ("no.ssb.fdb", ["GENERATE_RSA_KEYS"])
    assert not (directory / PROVISIONING_MARKER).exists()


async def test_the_registry_lists_the_live_datastores_the_default_among_them(client, root):
    await provision(client)
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE, "no.ssb.fdb"]
    listed = await (await client.get("/datastores")).json()
    assert [datastore["rdn"] for datastore in listed] == [DEFAULT_DATASTORE, "no.ssb.fdb"]
    assert await (await client.get("/datastores/no.ssb.fdb")).json() == {
        **FDB,
        "directory": str(root.resolve() / "no.ssb.fdb"),
        "bumpEnabled": False,
    }
    directory = await client.get("/datastores/no.ssb.fdb/directory")
    assert await directory.json() == str(root.resolve() / "no.ssb.fdb")


async def test_the_default_datastore_is_the_configuration_from_before_datastores(make_client, input_dir, root):
    client = await make_client(jobs={"bump_enabled": True}, datastores={"default": "no.ssb.old"})
    default = await (await client.get("/datastores/no.ssb.old")).json()
    assert default["bumpEnabled"] is True and default["directory"] == str(root.resolve() / "no.ssb.old")
    archive(input_dir, "WAITING")
    listed = await (await client.get("/datastores/no.ssb.old/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["WAITING"]
    [result] = await post_jobs(client, bump_job())
    assert result["msg"] == "CREATED"


@pytest.mark.parametrize(
    "rdn",
    ["", "No.ssb", "no.ssb2", "no..ssb", ".no.ssb", "no.ssb.", "no/ssb", "../etc", "nø.ssb", "a" * 129, "no ssb"],
)
async def test_a_bad_rdn_is_a_400_and_creates_nothing(client, root, rdn):
    response = await client.post("/datastores", json={**FDB, "rdn": rdn})
    assert response.status == 400
    assert "rdn" in (await response.json())["message"]
    assert left_in(root) == []
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Forskningsdata 2"}, "name"),
        ({"name": "   "}, "name"),
        ({"description": 5}, "description"),
        ({"bumpEnabled": "yes"}, "bumpEnabled"),
        ({"directory": "/tmp/elsewhere"}, "directory"),
        ({"rdn": "rdns"}, "rdn"),
    ],
)
async def test_a_bad_new_datastore_is_a_400_naming_the_field(client, root, body, field):
    response = await client.post("/datastores", json={**FDB, **body})
    assert response.status == 400
    assert field in (await response.json())["message"]
    assert left_in(root) == []


async def test_a_link_that_would_take_the_directory_outside_the_root_is_a_400(client, root, tmp_path):
    root.mkdir()
    (root / "no.ssb.fdb").symlink_to(tmp_path / "elsewhere")
    response = await client.post("/datastores", json=FDB)
    assert response.status == 400
    assert not (tmp_path / "elsewhere").exists()


async def test_a_taken_rdn_is_a_409_and_a_prefix_of_it_is_another_datastore(client):
    await provision(client)
    taken = await client.post("/datastores", json=FDB)
    assert taken.status == 409
    assert await taken.json() == {"message": "Datastore rdn no.ssb.fdb already exists"}
    await provision(client, rdn="no.ssb")
    assert (await client.post("/datastores", json={**FDB, "rdn": DEFAULT_DATASTORE})).status == 409


async def test_an_existing_directory_is_a_409_and_registers_nothing(client, root):
    (root / "no.ssb.fdb").mkdir(parents=True)
    (root / "no.ssb.fdb" / "precious.txt").write_text("mine")
    response = await client.post("/datastores", json=FDB)
    assert response.status == 409
    assert (root / "no.ssb.fdb" / "precious.txt").read_text() == "mine"
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]


async def test_a_deleted_datastore_leaves_every_list_and_keeps_its_jobs_and_files(client, root):
    keys_job = await provision(client)
    busy = await client.delete("/datastores/no.ssb.fdb")
    assert busy.status == 409  # its keys job is in progress
    await put_job(client, keys_job, status="completed")
    response = await client.delete("/datastores/no.ssb.fdb")
    assert response.status == 200 and (await response.json())["message"]
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]
    gone = await client.get("/datastores/no.ssb.fdb/jobs")
    assert gone.status == 404
    assert await gone.json() == {"message": "No datastore found for datastore_rdn: no.ssb.fdb"}
    assert (await (await client.get(f"/jobs/{keys_job}")).json())["datastoreRdn"] == "no.ssb.fdb"
    assert (root / "no.ssb.fdb" / "datastore" / "draft_version.json").exists()
    assert (await client.post("/datastores", json=FDB)).status == 409  # an rdn is never reused
    assert (await client.delete("/datastores/no.ssb.fdb")).status == 404


async def test_the_default_datastore_cannot_be_deleted(client):
    response = await client.delete(f"/datastores/{DEFAULT_DATASTORE}")
    assert response.status == 409
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]


SCOPED_ROUTES = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/some-job"),
    ("GET", "/targets"),
    ("GET", "/targets/MY_DATASET"),
    ("GET", "/targets/MY_DATASET/jobs"),
    ("GET", "/importable-datasets"),
    ("DELETE", "/importable-datasets/MY_DATASET"),
    ("GET", "/health/alive"),
    ("GET", "/health/ready"),
    ("GET", "/public-key"),
    ("GET", "/directory"),
    ("POST", "/public-key"),
]


@pytest.mark.parametrize(("method", "path"), [*SCOPED_ROUTES, ("GET", ""), ("DELETE", "")])
async def test_every_route_of_an_unknown_datastore_is_a_404_with_the_platforms_words(client, method, path):
    headers = {"Content-Type": "application/x-pem-file"} if path == "/public-key" else {}
    body = {"jobs": []} if path == "/jobs" and method == "POST" else None
    response = await client.request(method, f"/datastores/no.such{path}", json=body, headers=headers)
    assert response.status == 404
    assert await response.json() == {"message": "No datastore found for datastore_rdn: no.such"}


@pytest.mark.parametrize(("method", "path"), [*SCOPED_ROUTES, ("GET", ""), ("DELETE", "")])
async def test_every_route_of_an_invalid_rdn_is_a_400(client, method, path):
    body = {"jobs": []} if path == "/jobs" and method == "POST" else None
    response = await client.request(method, f"/datastores/No.SSB{path}", json=body)
    assert response.status == 400
    assert "is not a datastore rdn" in (await response.json())["message"]


async def test_one_target_may_be_in_progress_in_two_datastores_at_once(client):
    keys_job = await provision(client)
    in_fdb = await create_job(client, operation="ADD", target="MY_DATASET")
    [result] = await (
        await client.post("/datastores/no.ssb.fdb/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]})
    ).json()
    assert result["msg"] == "CREATED"
    [busy] = await (
        await client.post(
            "/datastores/no.ssb.fdb/jobs", json={"jobs": [{"operation": "CHANGE", "target": "MY_DATASET"}]}
        )
    ).json()
    assert busy == {"status": "FAILED", "msg": "FAILED: Job with target MY_DATASET already in progress"}

    everywhere = [job["jobId"] for job in await (await client.get("/jobs")).json()]
    assert sorted(everywhere) == sorted([keys_job, in_fdb, result["job_id"]])
    in_one = await (await client.get("/datastores/no.ssb.fdb/jobs")).json()
    assert {job["jobId"] for job in in_one} == {keys_job, result["job_id"]}
    assert {job["datastoreRdn"] for job in in_one} == {"no.ssb.fdb"}
    assert (await client.get(f"/datastores/no.ssb.fdb/jobs/{in_fdb}")).status == 404
    assert (await client.get(f"/datastores/{DEFAULT_DATASTORE}/jobs/{in_fdb}")).status == 200
    default_targets = await (await client.get("/targets")).json()
    assert [(target["datastoreRdn"], target["name"]) for target in default_targets] == [
        (DEFAULT_DATASTORE, "MY_DATASET")
    ]
    fdb_targets = await (await client.get("/datastores/no.ssb.fdb/targets")).json()
    assert [target["name"] for target in fdb_targets] == ["DATASTORE", "MY_DATASET"]
    fdb_jobs = await (await client.get("/datastores/no.ssb.fdb/targets/MY_DATASET/jobs")).json()
    assert [job["jobId"] for job in fdb_jobs] == [result["job_id"]]


async def test_bump_follows_each_datastores_own_setting(client):
    keys_job = await provision(client, bumpEnabled=True)
    await put_job(client, keys_job, status="completed")  # until then it holds the target DATASTORE
    [refused] = await post_jobs(client, bump_job())
    assert refused["msg"] == "FAILED: Bumping the datastore is disabled"
    response = await client.post("/datastores/no.ssb.fdb/jobs", json={"jobs": [bump_job()]})
    [created] = await response.json()
    assert created["msg"] == "CREATED"
    await put_job(client, created["job_id"], status="completed")
    released = await (await client.get("/datastores/no.ssb.fdb/targets/NEW_DATASET")).json()
    assert (released["datastoreRdn"], released["action"]) == ("no.ssb.fdb", ["RELEASED", "1.1.0"])
    assert (await client.get("/targets/NEW_DATASET")).status == 404


async def test_a_datastores_archives_wait_in_its_input_directory(client, root, input_dir):
    await provision(client)
    archive(root / "no.ssb.fdb_input", "WAITING")
    archive(root / "no.ssb.fdb_input", "BEING_IMPORTED")
    archive(input_dir, "IN_THE_DEFAULT")
    response = await client.post(
        "/datastores/no.ssb.fdb/jobs", json={"jobs": [{"operation": "ADD", "target": "BEING_IMPORTED"}]}
    )
    [created] = await response.json()
    assert created["msg"] == "CREATED"
    listed = await (await client.get("/datastores/no.ssb.fdb/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["WAITING"]  # a dataset being imported is left out
    assert [dataset["datasetName"] for dataset in await (await client.get("/importable-datasets")).json()] == [
        "IN_THE_DEFAULT"
    ]
    busy = await client.delete("/datastores/no.ssb.fdb/importable-datasets/BEING_IMPORTED")
    assert busy.status == 409
    await put_job(client, created["job_id"], status="failed")  # the folder is unchanged: only the job is
    listed = await (await client.get("/datastores/no.ssb.fdb/importable-datasets")).json()
    assert [dataset["datasetName"] for dataset in listed] == ["BEING_IMPORTED", "WAITING"]
    deleted = await client.delete("/datastores/no.ssb.fdb/importable-datasets/WAITING")
    assert await deleted.json() == {"message": "OK, WAITING deleted"}
    assert not (root / "no.ssb.fdb_input" / "WAITING.tar").exists()
    assert (input_dir / "IN_THE_DEFAULT.tar").exists()


async def test_the_maintenance_statuses_routes_are_the_original_maintenance_routes(client):
    posted = await client.post("/maintenance-statuses", json={"msg": "Upgrading", "paused": True})
    assert posted.status == 200
    latest = await (await client.get("/maintenance-statuses/latest")).json()
    assert latest == await posted.json() == await (await client.get("/maintenance-status")).json()
    history = await (await client.get("/maintenance-statuses")).json()
    assert history == await (await client.get("/maintenance-history")).json()
    assert history[0]["msg"] == "Upgrading"


async def test_a_provisioning_that_fails_at_the_store_leaves_nothing_and_a_retry_works(make_client, root):
    failures = []

    def fails_once(store):
        async def insert_job(job):
            if not failures:
                failures.append(job)
                raise OSError("the disk is full")
            await store.insert_job(job)

        return insert_job

    client = await make_client(faulty(insert_job=fails_once))
    response = await client.post("/datastores", json=FDB)
    assert response.status == 500
    assert left_in(root) == []
    assert (await client.get("/datastores/no.ssb.fdb")).status == 404
    await provision(client)


async def test_metrics_count_jobs_in_progress_by_datastore(client):
    await provision(client)
    await create_job(client, operation="ADD", target="MY_DATASET")
    text = await (await client.get("/metrics")).text()
    assert f'jobs_in_progress{{datastore="{DEFAULT_DATASTORE}",status="queued"}} 1.0' in text
    assert 'jobs_in_progress{datastore="no.ssb.fdb",status="queued"} 1.0' in text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/datastores", "application/json"),
        ("/datastores/local/jobs", "application/json"),
        ("/maintenance-statuses", "application/json"),
        ("/datastores/local/public-key", "application/x-pem-file"),
    ],
)
async def test_an_oversize_body_is_a_413_on_every_new_entry_point(make_client, root, path, content_type):
    client = await make_client(server={"max_body_bytes": 1024})
    response = await client.post(path, data=b"x" * 2048, headers={"Content-Type": content_type})
    assert response.status == 413
    assert left_in(root) == []


@pytest.mark.parametrize("body", [{"msg": "x"}, {"msg": "x", "paused": "yes"}, {"paused": True}])
async def test_a_bad_maintenance_status_is_a_400_on_the_new_route_too(client, body):
    before = await (await client.get("/maintenance-statuses")).json()
    assert (await client.post("/maintenance-statuses", json=body)).status == 400
    assert await (await client.get("/maintenance-statuses")).json() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": "Forskningsdata " * 20}, "name"), ({"description": "d" * 4097}, "description")],
)
async def test_a_name_or_description_over_its_bound_is_a_400(client, root, body, field):
    response = await client.post("/datastores", json={**FDB, **body})
    assert response.status == 400
    assert (await response.json())["message"].startswith(f"{field}: At most")
    assert left_in(root) == []
    await provision(client, description="d" * 4096)


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_a_datastores_root_that_is_a_file_is_a_503_in_one_line(make_client, root, caplog):
    root.write_text("not a folder")
    client = await make_client()
    response = await client.post("/datastores", json=FDB)
    assert response.status == 503
    assert await response.json() == {"message": f"The datastores' root {root.resolve()} cannot be written: File exists"}
    assert "Traceback" not in caplog.text
    assert await (await client.get("/datastores/rdns")).json() == [DEFAULT_DATASTORE]


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_a_datastores_root_the_kernel_refuses_is_a_503(make_client, tmp_path):
    # sysfs refuses every mkdir, root's included (EPERM): what a root without write permission
    # answers, which a test run as root cannot get from chmod.
    client = await make_client(datastores={"root": "/sys/job-service-datastores"})
    response = await client.post("/datastores", json=FDB)
    assert response.status == 503
    assert (await response.json())["message"] == (
        "The datastores' root /sys/job-service-datastores cannot be written: Operation not permitted"
    )


@pytest.fixture
def mounted(tmp_path):
    """Mount a tmpfs with the given options at a fresh path (as root, where mounts are allowed)."""
    mounts = []

    def mount(options: str) -> Path:
        path = tmp_path / f"mount{len(mounts)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
            pytest.skip("needs to mount a tmpfs (root, with CAP_SYS_ADMIN)")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_a_read_only_datastores_root_is_a_503(mounted, make_client):
    root = mounted("ro,size=1m")
    client = await make_client(datastores={"root": str(root)})
    response = await client.post("/datastores", json=FDB)
    assert response.status == 503
    assert await response.json() == {"message": f"The datastores' root {root} cannot be written: Read-only file system"}


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_a_full_datastores_root_is_a_507_and_leaves_nothing(mounted, make_client):
    root = mounted("size=64k")
    client = await make_client(datastores={"root": str(root)})
    (root / "ballast").write_bytes(b"x" * (60 << 10))
    response = await client.post("/datastores", json=FDB)
    assert response.status == 507
    assert await response.json() == {"message": f"The datastores' root {root} is full: No space left on device"}
    assert left_in(root) == ["ballast"]
    (root / "ballast").unlink()
    await provision(client)
