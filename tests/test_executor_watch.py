"""`GET /executor`: what the service sees of the job executor, from its polls and updates.

The executor is played by plain HTTP requests shaped as microdata-job-executor sends them
(python-requests' User-Agent, its three queries, its maintenance read); time passes by
`[executor] silent_after_seconds` set small.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import access_claims, cookies_for, create_job, put_job

import job_service
from job_service import EXECUTOR_WATCH, POLLERS_KEPT, QUERIES_KEPT, ConfigError, load_config

EXECUTOR = {"User-Agent": "python-requests/2.32.3"}
KEY = "the executor's key, long enough"
#: The 2026 executor's polls, as it sends them every 5 s.
POLLS = [
    "/jobs?status=built",
    "/jobs?status=queued&operation=SET_STATUS,BUMP,DELETE_DRAFT,REMOVE,ROLLBACK_REMOVE,DELETE_ARCHIVE,GENERATE_RSA_KEYS",
    "/jobs?status=queued&operation=PATCH_METADATA,ADD,CHANGE",
]


async def executor_report(client, **headers):
    response = await client.get("/executor", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def poll(client, headers=EXECUTOR):
    assert (await client.get("/maintenance-statuses/latest", headers=headers)).status == 200
    for path in POLLS:
        response = await client.get(path, headers=headers)
        assert response.status == 200, await response.text()


async def test_before_any_poll_the_executor_was_never_seen(client):
    report = await executor_report(client)
    assert report == {
        "state": "never",
        "lastPollAt": None,
        "silentForSeconds": None,
        "lastUpdateAt": None,
        "pollers": [],
        "lastRefusal": None,
        "operationsPolled": {},
        "warning": None,
    }


async def test_a_polling_executor_is_seen_with_its_address_user_agent_and_operations(client):
    await poll(client)

    report = await executor_report(client)
    assert report["state"] == "polling"
    assert report["lastPollAt"] is not None and 0 <= report["silentForSeconds"] < 5
    [poller] = report["pollers"]
    assert poller["address"] == "127.0.0.1"
    assert poller["userAgent"] == "python-requests/2.32.3"
    assert poller["lastSeenAt"] == report["lastPollAt"]
    assert report["operationsPolled"]["queued"] == [
        "ADD",
        "BUMP",
        "CHANGE",
        "DELETE_ARCHIVE",
        "DELETE_DRAFT",
        "GENERATE_RSA_KEYS",
        "PATCH_METADATA",
        "REMOVE",
        "ROLLBACK_REMOVE",
        "SET_STATUS",
    ]
    assert "GENERATE_KEYS" in report["operationsPolled"]["built"]  # no operation named: every one
    assert report["lastUpdateAt"] is None and report["warning"] is None


async def test_a_listing_or_a_maintenance_read_alone_is_no_poll(client):
    """The admin UI lists jobs and reads the flag too: neither says the executor is alive."""
    assert (await client.get("/jobs")).status == 200
    assert (await client.get("/maintenance-status")).status == 200
    assert (await executor_report(client))["state"] == "never"


async def test_an_update_is_noted(client):
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    await put_job(client, job_id, status="validating")
    assert (await executor_report(client))["lastUpdateAt"] is not None


async def test_an_executor_that_stops_polling_turns_silent(make_client):
    client = await make_client(executor={"silent_after_seconds": 0.2})
    await poll(client)
    assert (await executor_report(client))["state"] == "polling"
    await asyncio.sleep(0.3)
    report = await executor_report(client)
    assert report["state"] == "silent"
    assert report["silentForSeconds"] >= 0.2


async def test_a_refused_poll_shows_at_once_with_its_status_and_message(make_client):
    client = await make_client()
    response = await client.get("/jobs?status=queued&operation=ADD,GENERATE_SECRETS", headers=EXECUTOR)
    assert response.status == 400
    await poll(client)  # its other queries are answered: one refused query is enough

    report = await executor_report(client)
    assert report["state"] == "refused"
    assert report["lastRefusal"]["status"] == 400
    assert "GENERATE_SECRETS" in report["lastRefusal"]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert 'executor_poll_refusals_total{status="400"} 1.0' in metrics


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_a_wrong_key_is_refused_and_shown_to_an_operator_with_the_right_one(auth_client):
    client = await auth_client(api_key=KEY)
    response = await client.get(POLLS[0], headers={**EXECUTOR, "X-API-Key": "not the key, but long enough"})
    assert response.status == 401

    assert (await client.get("/executor")).status == 401  # operators only
    report = await executor_report(client, **{"X-API-Key": KEY})
    assert report["state"] == "refused"
    assert report["lastRefusal"]["status"] == 401
    assert report["pollers"][0]["userAgent"] == EXECUTOR["User-Agent"]


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_an_administrator_may_read_it_and_another_role_may_not(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(api_key=KEY)
    response = await client.get("/executor", cookies=cookies_for(keys))
    assert response.status == 200
    other = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/someoneelse"}))
    assert (await client.get("/executor", cookies=other)).status == 403


async def test_two_pollers_within_five_minutes_are_a_warning_and_one_log_line(client, caplog):
    await poll(client)
    with caplog.at_level(logging.WARNING, logger="job_service"):
        await poll(client, {"User-Agent": "python-requests/2.31.0"})
        await poll(client, {"User-Agent": "python-requests/2.31.0"})
    report = await executor_report(client)
    assert len(report["pollers"]) == 2
    assert report["warning"].startswith("2 pollers within five minutes")
    warnings = [record for record in caplog.records if "second executor" in record.getMessage()]
    assert len(warnings) == 1
    assert "python-requests/2.31.0" in warnings[0].getMessage()
    assert "executor_pollers 2.0" in await (await client.get("/metrics")).text()


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_pollers_are_bounded(client):
    for number in range(POLLERS_KEPT + 8):
        assert (await client.get(POLLS[0], headers={"User-Agent": f"poller-{number}"})).status == 200
    pollers = (await executor_report(client))["pollers"]
    assert len(pollers) == POLLERS_KEPT
    assert pollers[0]["userAgent"] == f"poller-{POLLERS_KEPT + 7}"  # the latest first, the oldest gone


async def test_the_metrics_say_when_the_executor_last_polled(client):
    metrics = await (await client.get("/metrics")).text()
    assert "executor_last_poll_timestamp_seconds" not in metrics  # never polled: absent
    assert "executor_pollers 0.0" in metrics
    await poll(client)
    metrics = await (await client.get("/metrics")).text()
    assert "executor_last_poll_timestamp_seconds " in metrics
    assert "executor_pollers 1.0" in metrics


async def test_a_poll_remembers_which_queued_jobs_it_handed_out(client):
    queued = await create_job(client, operation="ADD", target="QUEUED")
    built = await create_job(client, operation="ADD", target="BUILT")
    await put_job(client, built, status="built")
    watch = client.app[EXECUTOR_WATCH]
    assert watch.handed_out_at(queued) is None
    assert (await client.get("/jobs")).status == 200  # a listing hands nothing out

    await poll(client)
    first = watch.handed_out_at(queued)
    assert first is not None
    assert watch.handed_out_at(built) is None  # handed out as built, not queued
    await poll(client)  # the same answer again (kept on TinyDB): handed out again
    assert watch.handed_out_at(queued) > first


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_queries_remembered_are_bounded_the_one_asked_longest_ago_forgotten_first(client):
    await poll(client)
    assert (await client.get("/jobs?status=nonsense", headers=EXECUTOR)).status == 400
    assert (await executor_report(client))["state"] == "refused"
    for number in range(QUERIES_KEPT):
        assert (await client.get(f"/jobs?status=completed&asked={number}", headers=EXECUTOR)).status == 200
        if number % 8 == 0:
            await poll(client)  # the executor polls on meanwhile
    report = await executor_report(client)
    assert report["state"] == "polling"  # the refused query forgotten, asked before all others
    assert set(report["operationsPolled"]) == {"built", "completed", "queued"}  # the polls' queries remembered


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_hand_outs_remembered_are_bounded_the_answer_handed_out_longest_ago_forgotten_first(
    client, monkeypatch
):
    monkeypatch.setattr(job_service, "HANDED_OUT_KEPT", 2)  # job ids, in the answers remembered
    watch = client.app[EXECUTOR_WATCH]
    added = await create_job(client, operation="ADD", target="ADDED")
    removed = await create_job(client, operation="REMOVE", target="REMOVED", description="gone")
    await poll(client)  # one answer of each queue: (removed), then (added)
    status_queue, data_queue = POLLS[1], POLLS[2]

    changed = await create_job(client, operation="CHANGE", target="CHANGED")
    assert (await client.get(status_queue, headers=EXECUTOR)).status == 200  # (removed) anew: the first forgotten
    assert watch.handed_out_at(added) is not None
    assert watch.handed_out_at(removed) is not None
    assert (await client.get(data_queue, headers=EXECUTOR)).status == 200  # (added, changed): both others forgotten
    assert watch.handed_out_at(removed) is None
    assert watch.handed_out_at(added) is not None
    assert watch.handed_out_at(changed) is not None


@pytest.mark.parametrize("backend", ["mongodb"])
async def test_processes_on_one_database_share_what_they_saw(make_client, monkeypatch):
    monkeypatch.setattr(job_service, "EXECUTOR_SHARE_SECONDS", 0.05)
    polled, asked = await make_client(), await make_client()
    await poll(polled)

    for _ in range(100):  # until the two have shared since the last poll
        report = await executor_report(asked)
        if "queued" in report["operationsPolled"]:
            break
        await asyncio.sleep(0.05)
    assert report["state"] == "polling"
    assert report["pollers"][0]["userAgent"] == EXECUTOR["User-Agent"]
    assert set(report["operationsPolled"]) == {"built", "queued"}


@pytest.mark.parametrize("value", ["0", "-1", "'soon'", "inf"])
def test_a_bad_silent_after_seconds_is_one_line_at_start(tmp_path, value):
    config = tmp_path / "config.toml"
    config.write_text(f"[executor]\nsilent_after_seconds = {value}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config, environ={})
    assert str(raised.value).startswith("bad config: executor.silent_after_seconds:")
    assert "\n" not in str(raised.value)


async def test_a_store_keeps_each_processes_part_until_it_goes_quiet(store, backend):
    first = {"process": "first", "sharedAt": 100.0, "lastPollAt": 99.0}
    assert await store.share_part("first", first, forget_before=0.0) == [first]
    second = {"process": "second", "sharedAt": 200.0, "lastPollAt": None}
    # The first, quiet since 100, is forgotten (TinyDB: one process owns the directory, nobody else to tell).
    assert await store.share_part("second", second, forget_before=150.0) == [second]
    if backend == "mongodb":
        assert await store.share_part("first", first, forget_before=0.0) == [second, first]
