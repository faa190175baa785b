"""`GET /overview` and `/status`: whether the pipeline moves, and if not, why not.

The executor is played by its polls (plain HTTP requests, as in test_executor_watch);
time passes by thresholds set small, never by sleeping minutes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from helpers import DEFAULT_DATASTORE, access_claims, bump_job, cookies_for, create_job, put_job, report

EXECUTOR = {"User-Agent": "python-requests/2.32.3"}
KEY = "the executor's key, long enough"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


async def poll(client, headers=EXECUTOR):
    await client.get("/maintenance-statuses/latest", headers=headers)
    return await client.get("/jobs?status=queued&operation=PATCH_METADATA,ADD,CHANGE", headers=headers)


async def overview(client, path="/overview", **kwargs):
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    return await response.json()


def busy(document, rdn=DEFAULT_DATASTORE):
    [datastore] = [entry for entry in document["datastores"] if entry["rdn"] == rdn]
    return {entry["target"]: entry for entry in datastore["busyTargets"]}


async def test_a_job_waits_for_an_executor_that_never_polled(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    document = await overview(client)
    assert document["executor"]["state"] == "never"
    [datastore] = document["datastores"]
    assert datastore["counts"]["queued"] == 1
    entry = busy(document)["MY_DATASET"]
    assert (entry["jobId"], entry["operation"], entry["status"]) == (job_id, "ADD", "queued")
    assert entry["waitingBecause"] == "EXECUTOR_SILENT" and entry["stale"] is False
    assert entry["createdBy"]["userId"] == "local-user"


async def test_a_paused_flag_holds_queued_jobs_and_lets_built_ones_import(client):
    await create_job(client, operation="ADD", target="QUEUED")
    built = await create_job(client, operation="ADD", target="BUILT")
    await put_job(client, built, status="built")
    await client.post("/maintenance-status", json={"msg": "Upgrading the platform", "paused": True})
    await poll(client)
    document = await overview(client)
    assert document["maintenance"]["paused"] is True and document["executor"]["state"] == "polling"
    targets = busy(document)
    assert targets["QUEUED"]["waitingBecause"] == "MAINTENANCE_PAUSED"
    assert targets["BUILT"]["waitingBecause"] is None


async def test_a_bump_holding_the_datastore_keeps_its_datasets_jobs_queued(make_client):
    client = await make_client(jobs={"bump_enabled": True})
    response = await client.post("/jobs", json={"jobs": [bump_job(), {"operation": "ADD", "target": "MY_DATASET"}]})
    assert [result["msg"] for result in await response.json()] == ["CREATED", "CREATED"]
    await poll(client)
    targets = busy(await overview(client))
    assert targets["MY_DATASET"]["waitingBecause"] == "DATASTORE_TARGET_HELD"
    assert targets["DATASTORE"]["waitingBecause"] is None


async def test_a_job_unchanged_past_its_threshold_is_stale(make_client):
    client = await make_client(jobs={"stale_after": {"queued": 0.05}})
    await create_job(client, operation="ADD", target="MY_DATASET")
    await asyncio.sleep(0.1)
    await poll(client)
    entry = busy(await overview(client))["MY_DATASET"]
    assert entry["stale"] is True and entry["waitingBecause"] == "STALE"


async def test_a_refused_executor_is_why_every_job_waits(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(api_key=KEY)
    posted = await client.post(
        "/jobs", json={"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}, cookies=cookies_for(keys)
    )
    [created] = await posted.json()
    refused = await poll(client, {**EXECUTOR, "X-API-Key": "a wrong key, long enough"})
    assert refused.status == 401
    document = await overview(client, headers={"X-API-Key": KEY})
    assert document["executor"]["state"] == "refused"
    entry = busy(document)["MY_DATASET"]
    assert (entry["jobId"], entry["waitingBecause"]) == (created["job_id"], "EXECUTOR_REFUSED")


async def test_the_weeks_failures_are_grouped_by_their_reason(client):
    for target, reason in [("A", "Dataset has no data"), ("B", "Dataset has no data"), ("C", "Disk full")]:
        job_id = await create_job(client, operation="ADD", target=target)
        await put_job(client, job_id, status="failed", log=reason)
    [datastore] = (await overview(client))["datastores"]
    failures = [(group["reason"], group["count"], len(group["jobIds"])) for group in datastore["recentFailures"]]
    assert failures == [("Dataset has no data", 2, 2), ("Disk full", 1, 1)]
    assert datastore["busyTargets"] == []


async def test_a_failure_retried_already_is_counted_and_offered_no_more(client):
    job_id = await create_job(client, operation="ADD", target="A")
    await put_job(client, job_id, status="failed", log="Disk full")
    assert (await client.post(f"/jobs/{job_id}/retry")).status == 200
    [datastore] = (await overview(client))["datastores"]
    [group] = datastore["recentFailures"]
    assert (group["count"], group["retried"], group["jobIds"]) == (1, 1, [])


async def test_a_datastores_own_overview_and_the_administrators_reach(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(api_key=KEY, provisioners=["6f1a0e6c-0000-4000-8000-000000000001"])
    provisioner = cookies_for(
        keys, access=access_claims(aud="datastore-api-provision", **{"accreditation/role": "role/datastoreprovisioner"})
    )
    created = await client.post(
        "/datastores", json={"rdn": "no.ssb.fdb", "name": "Forskningsdata", "description": ""}, cookies=provisioner
    )
    assert created.status == 200, await created.text()
    everything = await overview(client, headers={"X-API-Key": KEY})
    assert [entry["rdn"] for entry in everything["datastores"]] == [DEFAULT_DATASTORE, "no.ssb.fdb"]
    fdb = cookies_for(keys, access=access_claims(aud=["datastore", "no.ssb.fdb"]))
    theirs = await overview(client, cookies=fdb)
    assert [entry["rdn"] for entry in theirs["datastores"]] == ["no.ssb.fdb"]
    own = await overview(client, "/datastores/no.ssb.fdb/overview", cookies=fdb)
    assert busy(own, "no.ssb.fdb")["DATASTORE"]["operation"] == "GENERATE_RSA_KEYS"
    assert (await client.get("/datastores/local/overview", cookies=fdb)).status == 403
    assert (await client.get("/overview")).status == 401
    reader = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/reader"}))
    assert (await client.get("/overview", cookies=reader)).status == 403
    every_no = cookies_for(keys, access=access_claims(aud=["datastore", "no"]))
    assert (await client.get("/datastores/no.such/overview", cookies=every_no)).status == 404
    assert (await client.get("/datastores/Not-An-Rdn/overview", cookies=every_no)).status == 400


async def test_an_unchanged_overview_is_a_304(client):
    await create_job(client, operation="ADD", target="MY_DATASET")
    first = await client.get("/datastores/local/overview")
    tag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/datastores/local/overview", headers={"If-None-Match": tag})
    assert again.status == 304 and await again.read() == b""


@pytest.mark.parametrize("backend", ["tinydb"])  # the page is the same on every backend
async def test_the_status_page_shows_a_silent_executor_a_stale_job_and_a_paused_datastore(make_client):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: install Debian's chromium ({CHROMIUM})")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    from playwright.async_api import async_playwright

    client = await make_client(jobs={"stale_after": {"queued": 0.05}})
    await create_job(client, operation="ADD", target="STUCK_DATASET")
    await client.post("/maintenance-status", json={"msg": "Upgrading the platform", "paused": True})
    await asyncio.sleep(0.1)
    base = str(client.make_url("")).rstrip("/")
    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda request: requested.append(request.url))
        await page.goto(f"{base}/status")
        await page.wait_for_selector("[data-rdn='local'] tr.job")
        summary = await page.inner_text("#summary")
        card = await page.inner_text("[data-rdn='local']")
        await page.click("[data-rdn='local'] tr.job")
        await page.wait_for_selector("#timeline tr td")
        timeline = await page.inner_text("#timeline")
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "status.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        # An administrator's actions: cancel the stuck job (saying why), then post it again.
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("Posted to the wrong dataset")))
        await page.click("[data-rdn='local'] button.cancel")
        await page.wait_for_selector("[data-rdn='local'] button.retry")
        failures = await page.inner_text("[data-rdn='local']")
        await page.click("[data-rdn='local'] button.retry")
        await page.wait_for_selector("[data-rdn='local'] button.cancel")
        await page.wait_for_selector("[data-rdn='local'] button.retry", state="detached")  # retried once
        retried = await page.inner_text("[data-rdn='local']")
        await browser.close()
    report(f"artifact: screenshot of /status in Chromium: {screenshot}")
    assert "executor: never" in summary and "paused: Upgrading the platform" in summary
    assert "STUCK_DATASET" in card and "stale" in card and "the executor is silent" in card
    assert "queued" in timeline
    assert "Cancelled by Local User (local-user): Posted to the wrong dataset" in failures
    assert "1 retried" in retried
    jobs = await (await client.get("/jobs")).json()
    assert [job["status"] for job in jobs] == ["failed", "queued"] and jobs[1]["retryOf"] == jobs[0]["jobId"]
    assert [url for url in requested if not url.startswith(base) and not url.startswith("data:")] == []
