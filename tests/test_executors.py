"""Both generations of the job executor against one service, calling it as their adapters do.

The 2026 executor (microdata-job-executor, `job_executor/adapter/datastore_api/`) lists the
datastores, asks each one's directory, polls the jobs of every datastore with `X-API-Key`, reads
`/maintenance-statuses/latest` without it, and validates every job strictly: `datastoreRdn` is
required, log entries and `createdBy` forbid unknown keys. The 2025 executor sends no key and
speaks only the original routes. Both treat any status but 200 as an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import USER, access_claims, bump_job, cookies_for, info_claims
from marshmallow import ValidationError

API_KEY = "the executor's key, long enough"
STATUSES = {
    "queued",
    "initiated",
    "validating",
    "decrypting",
    "transforming",
    "pseudonymizing",
    "enriching",
    "converting",
    "partitioning",
    "built",
    "importing",
    "completed",
    "failed",
}
#: The operations the executor's `Operation` enum names, besides its keys job's.
EXECUTOR_OPERATIONS = {
    "BUMP",
    "ADD",
    "CHANGE",
    "PATCH_METADATA",
    "SET_STATUS",
    "DELETE_DRAFT",
    "REMOVE",
    "ROLLBACK_REMOVE",
    "DELETE_ARCHIVE",
}
#: The keys job's name in each executor generation: today's (d447dd8), and the next (branch a24fad9).
KEYS_JOB = {"2026": "GENERATE_RSA_KEYS", "next": "GENERATE_KEYS"}
DATASTORE_WIDE = "SET_STATUS,BUMP,DELETE_DRAFT,REMOVE,ROLLBACK_REMOVE,DELETE_ARCHIVE,GENERATE_RSA_KEYS"
DATASET_WIDE = "PATCH_METADATA,ADD,CHANGE"


def executor_job(job: dict[str, Any], keys_job: str = KEYS_JOB["2026"]) -> dict[str, Any]:
    """What the executor's `Job` model accepts, checked as strictly as it checks: its
    enums, and no key it does not know inside log entries, `createdBy` or a manifesto's
    `dataStructureUpdates` (new keys are safe only at a job's top level)."""
    assert isinstance(job["jobId"], str) and isinstance(job["datastoreRdn"], str)
    assert job["status"] in STATUSES and isinstance(job["createdAt"], str)
    assert set(job["createdBy"]) == {"userId", "firstName", "lastName"}
    for entry in job["log"]:
        assert set(entry) == {"at", "message"}
        datetime.fromisoformat(entry["at"])
    parameters = job["parameters"]
    assert {"operation", "target"} <= set(parameters) and None not in parameters.values()
    assert parameters["operation"] in EXECUTOR_OPERATIONS | {keys_job}, parameters["operation"]
    for update in parameters.get("bumpManifesto", {}).get("dataStructureUpdates", []):
        assert set(update) == {"name", "description", "operation", "releaseStatus"}
    return job


class Executor2026:
    """The calls of the 2026 adapter: its paths, query strings and headers."""

    def __init__(self, client: Any, key: str | None = API_KEY) -> None:
        self.client = client
        self.headers = {"X-API-Key": key} if key else {}

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        assert response.status == 200, f"{method} {path}: {response.status} {await response.text()}"
        return await response.json()

    async def directories(self) -> dict[str, str]:
        rdns = await self.ok("GET", "/datastores/rdns")  # sent without a key
        return {rdn: await self.ok("GET", f"/datastores/{rdn}/directory", headers=self.headers) for rdn in rdns}

    async def poll(self) -> list[dict[str, Any]]:
        maintenance = await self.ok("GET", "/maintenance-statuses/latest")  # sent without a key
        assert set(maintenance) == {"msg", "paused", "timestamp"}
        queries = ["status=built"]
        if not maintenance["paused"]:
            queries += [f"status=queued&operation={DATASTORE_WIDE}", f"status=queued&operation={DATASET_WIDE}"]
        jobs = []
        for query in queries:
            jobs += [executor_job(job) for job in await self.ok("GET", f"/jobs?{query}", headers=self.headers)]
        return jobs

    async def interrupted(self) -> list[dict[str, Any]]:
        return await self.ok("GET", "/jobs?ignoreCompleted=true", headers=self.headers)

    async def update(self, job_id: str, **body: Any) -> None:
        await self.ok("PUT", f"/jobs/{job_id}", json=body, headers=self.headers)

    async def post_public_key(self, rdn: str, pem: bytes) -> None:
        headers = {**self.headers, "Content-Type": "application/x-pem-file"}
        await self.ok("POST", f"/datastores/{rdn}/public-key", data=pem, headers=headers)


class Executor2025:
    """The 2025 executor: the original routes, no credential."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def poll(self) -> list[dict[str, Any]]:
        maintenance = await (await self.client.get("/maintenance-status")).json()
        assert maintenance["paused"] is False
        response = await self.client.get(f"/jobs?status=queued&operation={DATASET_WIDE}&ignoreCompleted=True")
        assert response.status == 200
        return await response.json()

    async def update(self, job_id: str, **body: Any) -> None:
        assert (await self.client.put(f"/jobs/{job_id}", json=body)).status == 200


def provisioner_cookies(keys: Any) -> dict[str, str]:
    access = access_claims(aud="datastore-api-provision", **{"accreditation/role": "role/datastoreprovisioner"})
    return cookies_for(keys, access=access)


def administrator_cookies(keys: Any, *datastores: str) -> dict[str, str]:
    return cookies_for(keys, access=access_claims(aud=["datastore-api-jobs", *datastores]))


def public_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
async def platform(auth_client, key_server):
    """The service as the platform runs it in 2026: auth on, an executor key, one provisioner."""
    keys, _ = key_server
    client = await auth_client(api_key=API_KEY, audience="datastore-api-jobs", provisioners=[USER])
    return client, keys


async def test_the_2026_executor_provisions_keys_and_imports_a_dataset(platform):
    client, keys = platform
    executor = Executor2026(client)
    created = await client.post(
        "/datastores",
        json={"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research"},
        cookies=provisioner_cookies(keys),
    )
    assert created.status == 200, await created.text()
    keys_job_id = (await created.json())["job_id"]

    directories = await executor.directories()
    assert set(directories) == {"local", "no.ssb.fdb"} and directories["no.ssb.fdb"].endswith("/no.ssb.fdb")
    [keys_job] = await executor.poll()
    assert (keys_job["jobId"], keys_job["parameters"]["operation"]) == (keys_job_id, "GENERATE_RSA_KEYS")
    await executor.update(keys_job_id, status="initiated")
    await executor.post_public_key("no.ssb.fdb", public_key_pem())
    await executor.update(keys_job_id, status="completed", log="Generated keys")

    posted = await client.post(
        "/datastores/no.ssb.fdb/jobs",
        json={"jobs": [{"operation": "ADD", "target": "MY_DATASET", "description": "First import"}]},
        cookies=administrator_cookies(keys, "no.ssb"),
    )
    [result] = await posted.json()
    assert result["msg"] == "CREATED", result
    [job] = await executor.poll()
    assert (job["jobId"], job["datastoreRdn"]) == (result["job_id"], "no.ssb.fdb")
    for status in ("initiated", "decrypting", "validating"):
        await executor.update(job["jobId"], status=status)
    await executor.update(job["jobId"], description="A described update")
    for status in ("transforming", "partitioning", "built"):
        await executor.update(job["jobId"], status=status, log=f"Now {status}")
    [built] = await executor.poll()
    assert built["status"] == "built"
    await executor.update(job["jobId"], status="importing")
    # A restart rolls an interrupted import back, a status backwards.
    [interrupted] = await executor.interrupted()
    await executor.update(interrupted["jobId"], status="built", log="Reset to built status due to interruption")
    await executor.update(job["jobId"], status="completed")

    assert await executor.poll() == []
    final = executor_job(await executor.ok("GET", f"/jobs/{job['jobId']}", headers=executor.headers))
    assert final["status"] == "completed" and final["parameters"]["description"] == "A described update"
    target = await executor.ok(
        "GET", "/datastores/no.ssb.fdb/targets/MY_DATASET", cookies=administrator_cookies(keys, "no.ssb.fdb")
    )
    assert (target["status"], target["action"]) == ("completed", ["ADD"])


async def test_without_its_key_the_executor_is_refused_and_changes_nothing(platform):
    client, keys = platform
    posted = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=administrator_cookies(keys)
    )
    [result] = await posted.json()
    for headers in ({}, {"X-API-Key": "not the key at all, but long"}):
        assert (await client.get("/jobs", headers=headers)).status == 401
        assert (await client.get(f"/jobs/{result['job_id']}", headers=headers)).status == 401
        assert (await client.get("/datastores/local/directory", headers=headers)).status == 401
        refused = await client.put(f"/jobs/{result['job_id']}", json={"status": "initiated"}, headers=headers)
        assert refused.status == 401
    job = await Executor2026(client).ok("GET", f"/jobs/{result['job_id']}", headers={"X-API-Key": API_KEY})
    assert job["status"] == "queued" and job["log"] == []
    assert (await client.get("/jobs", headers={"Authorization": f"Bearer {API_KEY}"})).status == 200


async def test_an_administrator_reads_only_the_datastores_their_token_names(platform):
    client, keys = platform
    created = await client.post(
        "/datastores",
        json={"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": ""},
        cookies=provisioner_cookies(keys),
    )
    assert created.status == 200
    for audiences, allowed in [
        (("no.ssb.fdb",), True),
        (("no.ssb",), True),
        (("no.ss",), False),
        (("no.ssbx",), False),
        ((), False),
    ]:
        cookies = administrator_cookies(keys, *audiences)
        response = await client.get("/datastores/no.ssb.fdb/targets", cookies=cookies)
        assert response.status == (200 if allowed else 403), audiences
    assert (await client.get("/datastores/no.ssb.fdb/targets")).status == 401


async def test_only_a_listed_provisioner_may_provision_or_delete(platform):
    client, keys = platform
    body = {"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": ""}
    assert (await client.post("/datastores", json=body)).status == 401
    administrator = await client.post("/datastores", json=body, cookies=administrator_cookies(keys))
    assert administrator.status == 401  # an administrator's token is for another audience
    stranger = access_claims(
        aud="datastore-api-provision",
        sub="someone",
        **{"accreditation/role": "role/datastoreprovisioner", "user/uuid": "someone"},
    )
    info = info_claims(**{"user/uuid": "someone", "user/firstName": "Some", "user/lastName": "One"})
    refused = await client.post("/datastores", json=body, cookies=cookies_for(keys, access=stranger, info=info))
    assert refused.status == 403
    assert (await client.delete("/datastores/local", cookies=administrator_cookies(keys))).status == 401
    assert await (await client.get("/datastores/rdns")).json() == ["local"]


@pytest.fixture
async def mixed_platform(auth_client, key_server):
    """A service both executors use at once: auth on, job reads open for the one that sends no key."""
    keys, _ = key_server
    client = await auth_client(open_job_reads=True, audience="datastore-api-jobs")
    return client, keys


async def test_the_2025_and_2026_executors_work_side_by_side(mixed_platform):
    client, keys = mixed_platform
    posted = await client.post(
        "/jobs",
        json={"jobs": [{"operation": "ADD", "target": "OLD_CLIENT"}, {"operation": "CHANGE", "target": "NEW_CLIENT"}]},
        cookies=administrator_cookies(keys),
    )
    old_job, new_job = [result["job_id"] for result in await posted.json()]
    old, new = Executor2025(client), Executor2026(client)
    assert {job["jobId"] for job in await old.poll()} == {old_job, new_job}
    assert {job["jobId"] for job in await new.poll()} == {old_job, new_job}
    await old.update(old_job, status="initiated")
    await new.update(new_job, status="initiated", log="Taken by the 2026 executor")
    await old.update(old_job, status="completed")
    await new.update(new_job, status="failed", log="Unexpected error")
    assert await old.poll() == [] and await new.poll() == []


@pytest.fixture
async def provisioned(platform):
    """The platform with one datastore provisioned."""
    client, keys = platform
    created = await client.post(
        "/datastores",
        json={"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": ""},
        cookies=provisioner_cookies(keys),
    )
    assert created.status == 200
    return client, keys


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/some-job"),
        ("GET", "/targets"),
        ("GET", "/targets/MY_DATASET"),
        ("GET", "/targets/MY_DATASET/jobs"),
        ("GET", "/importable-datasets"),
        ("DELETE", "/importable-datasets/MY_DATASET"),
        ("GET", "/public-key"),
    ],
)
async def test_a_datastores_own_routes_are_for_its_administrators_alone(provisioned, method, path):
    client, keys = provisioned
    body = {"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]} if method == "POST" else None
    url = f"/datastores/no.ssb.fdb{path}"
    assert (await client.request(method, url, json=body)).status == 401
    elsewhere = await client.request(method, url, json=body, cookies=administrator_cookies(keys, "no.ssb.other"))
    assert elsewhere.status == 403
    reader = cookies_for(
        keys, access=access_claims(aud=["datastore-api-jobs", "no.ssb"], **{"accreditation/role": "r"})
    )
    assert (await client.request(method, url, json=body, cookies=reader)).status == 403
    assert (await client.get("/datastores/no.ssb.fdb/jobs", cookies=administrator_cookies(keys, "no"))).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/datastores"),
        ("GET", "/datastores/no.ssb.fdb"),
        ("DELETE", "/datastores/no.ssb.fdb"),
        ("POST", "/datastores"),
    ],
)
async def test_the_registry_is_for_provisioners(provisioned, method, path):
    client, keys = provisioned
    body = {"rdn": "no.ssb.new", "name": "New", "description": ""} if method == "POST" else None
    assert (await client.request(method, path, json=body)).status == 401
    another_role = access_claims(aud="datastore-api-provision", **{"accreditation/role": "role/dataadministrator"})
    response = await client.request(method, path, json=body, cookies=cookies_for(keys, access=another_role))
    assert response.status == 403
    assert await (await client.get("/datastores/rdns")).json() == ["local", "no.ssb.fdb"]


async def test_reading_jobs_needs_the_key_or_an_administrator(provisioned):
    client, keys = provisioned
    reader = cookies_for(keys, access=access_claims(aud="datastore-api-jobs", **{"accreditation/role": "r"}))
    for path in ("/jobs", "/jobs/some-job"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, cookies=reader)).status == 403
    assert (await client.get("/jobs", cookies=administrator_cookies(keys))).status == 200


async def test_the_public_key_is_posted_with_the_executors_key_alone(provisioned):
    client, keys = provisioned
    headers = {"Content-Type": "application/x-pem-file"}
    url = "/datastores/no.ssb.fdb/public-key"
    assert (await client.post(url, data=public_key_pem(), headers=headers)).status == 401
    with_tokens = await client.post(url, data=public_key_pem(), headers=headers, cookies=administrator_cookies(keys))
    assert with_tokens.status == 401
    assert (await client.get(url, cookies=administrator_cookies(keys, "no.ssb.fdb"))).status == 404


@pytest.mark.parametrize("path", ["/maintenance-status", "/maintenance-statuses"])
async def test_the_maintenance_flag_is_set_by_the_key_or_an_administrator(platform, path):
    client, keys = platform
    body = {"msg": "Upgrading", "paused": True}
    assert (await client.post(path, json=body)).status == 401
    reader = cookies_for(keys, access=access_claims(aud="datastore-api-jobs", **{"accreditation/role": "r"}))
    assert (await client.post(path, json=body, cookies=reader)).status == 403
    assert (await client.post(path, json=body, headers={"X-API-Key": API_KEY})).status == 200
    assert (await client.post(path, json=body, cookies=administrator_cookies(keys))).status == 200


#: One job of every operation an administrator may post (the keys job aside: see below).
EVERY_POSTABLE_JOB = [
    {"operation": "ADD", "target": "MY_DATASET", "description": "A new dataset"},
    {"operation": "CHANGE", "target": "CHANGED"},
    {"operation": "PATCH_METADATA", "target": "PATCHED"},
    {"operation": "SET_STATUS", "target": "RELEASED", "releaseStatus": "PENDING_RELEASE"},
    {"operation": "DELETE_DRAFT", "target": "DRAFTED"},
    {"operation": "REMOVE", "target": "REMOVED", "description": "Gone"},
    {"operation": "ROLLBACK_REMOVE", "target": "ROLLED_BACK"},
    {"operation": "DELETE_ARCHIVE", "target": "ARCHIVED"},
]


@pytest.mark.parametrize("generation", sorted(KEYS_JOB))
async def test_every_job_any_route_makes_is_one_the_configured_executor_parses(make_client, key_server, generation):
    keys, url = key_server
    keys_job = KEYS_JOB[generation]
    auth = {
        "enabled": True,
        "jwks_url": url,
        "api_key": API_KEY,
        "audience": "datastore-api-jobs",
        "provisioners": [USER],
    }
    client = await make_client(
        auth=auth,
        datastores={"keys_operation": keys_job},
        jobs={"bump_enabled": True, "handout_grace_seconds": 0},
    )
    created = await client.post(
        "/datastores",
        json={"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": "Research", "bumpEnabled": True},
        cookies=provisioner_cookies(keys),
    )
    assert created.status == 200, await created.text()
    posted = await client.post(
        "/datastores/no.ssb.fdb/jobs",
        json={"jobs": [*EVERY_POSTABLE_JOB, {"operation": "CHANGE", "target": "MY_DATASET"}]},
        cookies=administrator_cookies(keys, "no.ssb.fdb"),
    )
    results = await posted.json()
    assert [result["msg"] for result in results[:-1]] == ["CREATED"] * len(EVERY_POSTABLE_JOB)
    assert results[-1]["status"] == "FAILED"  # the target is busy
    bump = await client.post("/jobs", json={"jobs": [bump_job()]}, cookies=administrator_cookies(keys, "local"))
    assert (await bump.json())[0]["msg"] == "CREATED"
    executor = Executor2026(client)
    jobs = [executor_job(job, keys_job) for job in await executor.interrupted()]
    assert {job["parameters"]["operation"] for job in jobs} == {
        "BUMP",
        *(job["operation"] for job in EVERY_POSTABLE_JOB),
        keys_job,
    }
    first = jobs[0]["jobId"]
    await executor.update(first, status="validating", log="Checking the archive")
    await executor.update(first, description="A better description")
    await executor.update(first, status="failed", log="Something broke")
    # An administrator's retry (the failed job then says `retriedBy`) and cancel (`cancelledBy`).
    admin = administrator_cookies(keys, jobs[0]["datastoreRdn"])
    retried = await client.post(f"/jobs/{first}/retry", cookies=admin)
    assert retried.status == 200, await retried.text()
    queued = next(job for job in jobs[1:] if job["status"] == "queued")
    admin = administrator_cookies(keys, queued["datastoreRdn"])
    cancelled = await client.post(f"/jobs/{queued['jobId']}/cancel", json={"reason": "Wrong"}, cookies=admin)
    assert cancelled.status == 200, await cancelled.text()
    listed = await executor.ok("GET", "/jobs", headers=executor.headers)
    assert {"retryOf", "retriedBy", "cancelledBy"} <= {key for job in listed for key in job}
    for job in listed:
        executor_job(job, keys_job)


@pytest.mark.parametrize(
    ("configured", "other"), [("GENERATE_RSA_KEYS", "GENERATE_KEYS"), ("GENERATE_KEYS", "GENERATE_RSA_KEYS")]
)
async def test_the_keys_job_is_posted_under_the_configured_name_alone(make_client, configured, other):
    client = await make_client(datastores={"keys_operation": configured})
    response = await client.post(
        "/jobs",
        json={"jobs": [{"operation": other, "target": "DATASTORE"}, {"operation": configured, "target": "DATASTORE"}]},
    )
    refused, created = await response.json()
    assert refused["status"] == "FAILED" and configured in refused["msg"] and other in refused["msg"]
    assert created["msg"] == "CREATED"
    # Either generation's poll of its keys job is still a query, never a 400.
    assert (await client.get(f"/jobs?status=queued&operation={other}")).status == 200


async def test_a_store_with_keys_jobs_under_the_other_name_opens_and_says_what_to_do(make_client, caplog):
    first = await make_client()
    response = await first.post("/jobs", json={"jobs": [{"operation": "GENERATE_RSA_KEYS", "target": "DATASTORE"}]})
    assert (await response.json())[0]["msg"] == "CREATED"
    await first.close()
    with caplog.at_level("WARNING", logger="job_service"):
        second = await make_client(datastores={"keys_operation": "GENERATE_KEYS"})
    [line] = [record.getMessage() for record in caplog.records if "keys_operation" in record.getMessage()]
    assert line.startswith("1 job(s) in progress are GENERATE_RSA_KEYS jobs") and "GENERATE_KEYS" in line
    assert len(await (await second.get("/jobs")).json()) == 1


async def test_keys_operation_takes_only_the_two_names(make_client):
    with pytest.raises(ValidationError):
        await make_client(datastores={"keys_operation": "GENERATE_KEYZ"})


async def test_an_administrator_of_another_datastore_cannot_act_on_the_default_one(provisioned, input_dir):
    client, keys = provisioned
    (input_dir / "MY_DATASET.tar").write_bytes(b"not even a tar")
    elsewhere = administrator_cookies(keys, "no.ssb.fdb")
    posted = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=elsewhere
    )
    assert posted.status == 403
    assert (await client.delete("/importable-datasets/MY_DATASET", cookies=elsewhere)).status == 403
    assert (input_dir / "MY_DATASET.tar").exists()
    # A token that names no datastore is the original service's: it administers the default alone.
    original = administrator_cookies(keys)
    posted = await client.post("/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=original)
    [result] = await posted.json()
    assert result["msg"] == "CREATED"
    assert (await client.post("/datastores/no.ssb.fdb/jobs", json={"jobs": []}, cookies=original)).status == 403


async def test_an_administrator_reads_the_jobs_of_the_datastores_they_reach_alone(provisioned):
    client, keys = provisioned
    default_job = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=administrator_cookies(keys)
    )
    [created] = await default_job.json()
    every = await client.get("/jobs", headers={"X-API-Key": API_KEY})
    assert {job["datastoreRdn"] for job in await every.json()} == {"local", "no.ssb.fdb"}
    elsewhere = administrator_cookies(keys, "no.ssb.fdb")
    seen = await (await client.get("/jobs", cookies=elsewhere)).json()
    assert {job["datastoreRdn"] for job in seen} == {"no.ssb.fdb"}
    assert (await client.get(f"/jobs/{created['job_id']}", cookies=elsewhere)).status == 404
    assert (await client.get(f"/jobs/{created['job_id']}", cookies=administrator_cookies(keys))).status == 200
