"""Notifications: `[[notify]]` webhooks told of events, delivered from the store's outbox
to a real HTTP receiver on loopback, on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import (
    DEFAULT_DATASTORE,
    access_claims,
    cookies_for,
    create_job,
    dies_after,
    faulty,
    put_job,
    raising,
    service_config,
    write_config,
)
from service_process import ServiceProcess

import job_service
from backends import Notification, StoreFull, StoreUnavailable
from job_service import CONFIG, METRICS, STORE, Config, Notifier, create_app, load_config, notify

#: A dataset job to fail.
JOB = {"operation": "ADD", "target": "MY_DATASET"}
SECRET = "a signing secret shared with the receiver"


class Receiver:
    """A webhook receiver: it keeps every request, and answers with `answers` in turn
    (a status, or "hang" to hold the request until `release` is set), then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int | str] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.arrived.set()
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await self.release.wait()
            answer = 200
        return web.Response(status=int(answer))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    async def wait_for(self, count: int, seconds: float = 10.0) -> None:
        """Until `count` requests have arrived (a test fails rather than hangs)."""
        async with asyncio.timeout(seconds):
            while len(self.requests) < count:
                await asyncio.sleep(0.01)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    """A receiver on loopback, and the base of its URLs (any path is its)."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{path:.*}", receiver.receive)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/"))


@pytest.fixture
def notifying_config(storage: dict[str, Any], input_dir: Path, tmp_path: Path) -> Any:
    """A Config read from a TOML file with these `[[notify]]` tables (signed with SECRET
    where they name `secret_env = "HOOK_SECRET"`), quick retries unless told otherwise,
    and an `[auth]` section."""

    def make(hooks: list[dict[str, Any]], auth: dict[str, Any] | None = None, **notifications: Any) -> Config:
        settings = {"retry_seconds": 0.05, "timeout_seconds": 1.0, **notifications}
        sections = service_config(dict(storage), input_dir, notify=hooks, notifications=settings, auth=auth or {})
        return load_config(write_config(tmp_path / "config.toml", sections), environ={"HOOK_SECRET": SECRET})

    return make


async def failed_job(client: Any, log: str = "The archive is not there") -> str:
    job_id = await create_job(client, **JOB)
    await put_job(client, job_id, status="failed", log=log)
    return job_id


async def notifications(client: Any, **options: Any) -> list[dict[str, Any]]:
    response = await client.get("/notifications", **options)
    assert response.status == 200, await response.text()
    return await response.json()


async def settled(client: Any, count: int) -> list[dict[str, Any]]:
    """The notifications once `count` of them are no longer pending."""
    async with asyncio.timeout(10):
        while True:
            shown = await notifications(client)
            if sum(entry["state"] != "pending" for entry in shown) >= count:
                return shown
            await asyncio.sleep(0.02)


async def test_a_failed_job_is_posted_signed_with_its_event_id(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    url = f"{base}hooks/T000/B000/secret-token"
    config = notifying_config([{"url": url, "events": ["job.failed"], "secret_env": "HOOK_SECRET"}])
    client = await aiohttp_client(create_app(config))
    job_id = await failed_job(client)
    await hook.wait_for(1)
    [(headers, body)] = hook.requests
    assert headers["X-Job-Service-Signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Job-Service-Event"] == "job.failed" and headers["Content-Type"] == "application/json"
    event = json.loads(body)
    assert headers["X-Job-Service-Event-Id"] == event["id"]
    assert event["event"] == "job.failed" and event["datastoreRdn"] == DEFAULT_DATASTORE
    assert event["data"] == {
        "jobId": job_id,
        "operation": "ADD",
        "target": "MY_DATASET",
        "reason": event["data"]["reason"],
    }
    assert event["text"] == f"Job {job_id} (ADD of MY_DATASET) failed in {DEFAULT_DATASTORE}: The archive is not there"
    [shown] = await settled(client, 1)
    assert shown["state"] == "sent" and shown["attempts"] == 1 and shown["eventId"] == event["id"]
    # The path of a Slack or Teams webhook is its credential: never shown.
    assert shown["receiver"] == base.rstrip("/") and "secret-token" not in json.dumps(shown)
    metrics = await (await client.get("/metrics")).text()
    assert 'notifications_sent_total{event="job.failed"} 1.0' in metrics


async def test_the_slack_format_posts_the_text_alone(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    config = notifying_config([{"url": base, "events": ["maintenance.changed"], "format": "slack"}])
    client = await aiohttp_client(create_app(config))
    response = await client.post("/maintenance-status", json={"msg": "Upgrading the cluster", "paused": True})
    assert response.status == 200
    await hook.wait_for(1)
    assert hook.bodies == [{"text": "Maintenance paused by Local User: Upgrading the cluster"}]
    assert "X-Job-Service-Signature" not in hook.requests[0][0]  # no secret_env, no signature


async def test_each_webhook_gets_the_events_and_datastores_it_asks_for(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    config = notifying_config(
        [
            {"url": f"{base}failures", "events": ["job.failed"], "datastores": ["no.ssb.fdb"]},
            {"url": f"{base}registry", "events": ["datastore.created"]},
        ]
    )
    client = await aiohttp_client(create_app(config))
    await failed_job(client)  # in the default datastore: nobody asked
    response = await client.post("/datastores", json={"rdn": "no.ssb.fdb", "name": "Forskning", "description": "x"})
    keys_job = (await response.json())["job_id"]
    await put_job(client, keys_job, status="failed", log="No vault")
    await hook.wait_for(2)
    await settled(client, 2)
    received = sorted(
        (headers["X-Job-Service-Event"], json.loads(body)["datastoreRdn"]) for headers, body in hook.requests
    )
    assert received == [("datastore.created", "no.ssb.fdb"), ("job.failed", "no.ssb.fdb")]
    by_event = {entry["event"]: entry for entry in await notifications(client)}
    assert by_event["job.failed"]["text"].startswith(f"Job {keys_job} (GENERATE_RSA_KEYS of DATASTORE) failed")


async def test_a_delivery_is_retried_after_500s_and_a_timeout_with_one_event_id(
    aiohttp_client, receiver, notifying_config
):
    hook, base = receiver
    hook.answers = [500, "hang", 200]
    config = notifying_config([{"url": base, "events": ["job.failed"]}], timeout_seconds=0.3)
    client = await aiohttp_client(create_app(config))
    await failed_job(client)
    await hook.wait_for(3)
    hook.release.set()
    [shown] = await settled(client, 1)
    assert shown["state"] == "sent" and shown["attempts"] == 3
    assert len({headers["X-Job-Service-Event-Id"] for headers, _ in hook.requests}) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'notifications_failed_total{event="job.failed"} 2.0' in metrics


async def test_a_delivery_is_given_up_after_its_attempts(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    hook.answers = [503, 503]
    config = notifying_config([{"url": base, "events": ["job.failed"]}], attempts=2)
    client = await aiohttp_client(create_app(config))
    await failed_job(client)
    [shown] = await settled(client, 1)
    assert (shown["state"], shown["attempts"], shown["lastError"]) == ("failed", 2, "answered HTTP 503")
    assert len(hook.requests) == 2


async def test_a_slow_receiver_never_holds_a_request_up(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    hook.answers = ["hang"]
    config = notifying_config([{"url": base, "events": ["job.failed"]}], timeout_seconds=30)
    client = await aiohttp_client(create_app(config))
    await failed_job(client)
    await hook.arrived.wait()
    # The receiver holds the delivery: requests, writes and the other webhooks' enqueueing go on.
    await failed_job(client)
    assert (await client.get("/jobs")).status == 200
    [*_, first] = await notifications(client)
    assert first["state"] == "pending"
    hook.release.set()
    await settled(client, 2)


async def test_a_restart_delivers_what_was_pending(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    hook.answers = ["hang"]
    config = notifying_config([{"url": base, "events": ["job.failed"]}])
    first = await aiohttp_client(create_app(config))
    await failed_job(first)
    await hook.arrived.wait()
    await first.close()  # stopped while it was sending: nothing was settled
    hook.release.set()
    second = await aiohttp_client(create_app(config))
    [shown] = await settled(second, 1)
    assert shown["state"] == "sent"
    assert len({headers["X-Job-Service-Event-Id"] for headers, _ in hook.requests}) == 1


@pytest.mark.parametrize("backend", ["mongodb"])
async def test_two_processes_on_one_mongodb_deliver_each_event_once(aiohttp_client, receiver, notifying_config):
    hook, base = receiver
    config = notifying_config([{"url": base, "events": ["job.stale", "executor.silent"]}])
    apps = [create_app(config), create_app(config)]
    clients = [await aiohttp_client(app) for app in apps]
    for number in range(20):
        event = "job.stale" if number % 2 else "executor.silent"
        await notify(apps[number % 2], event, DEFAULT_DATASTORE, f"Event {number}", {"number": number})
    await hook.wait_for(20)
    await settled(clients[0], 20)
    await asyncio.sleep(1.2)  # a poll of each process more: nothing is sent again
    ids = Counter(headers["X-Job-Service-Event-Id"] for headers, _ in hook.requests)
    assert len(ids) == 20 and set(ids.values()) == {1}
    assert sorted(body["data"]["number"] for body in hook.bodies) == list(range(20))


async def test_the_outbox_is_bounded_and_what_it_drops_is_counted(aiohttp_client, receiver, notifying_config, caplog):
    hook, base = receiver
    hook.answers = [500] * 10
    config = notifying_config([{"url": base, "events": ["executor.refused"]}], outbox_limit=3, retry_seconds=60)
    app = create_app(config)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.WARNING, "job_service"):
        for number in range(5):
            await notify(app, "executor.refused", None, f"Refused {number}", {"status": 401})
    assert [entry["text"] for entry in await notifications(client)] == ["Refused 2", "Refused 1", "Refused 0"]
    assert "notifications_dropped_total 2.0" in await (await client.get("/metrics")).text()
    assert sum("The outbox is full" in record.message for record in caplog.records) == 2


async def test_an_administrator_sees_their_datastores_notifications(
    aiohttp_client, receiver, notifying_config, key_server
):
    _, base = receiver
    keys, jwks_url = key_server
    auth = {"enabled": True, "jwks_url": jwks_url, "open_executor_routes": True}
    app = create_app(notifying_config([{"url": base, "events": ["job.stale", "maintenance.changed"]}], auth=auth))
    client = await aiohttp_client(app)
    for rdn in ("no.ssb.fdb", "no.other", None):
        await notify(app, "job.stale" if rdn else "maintenance.changed", rdn, f"In {rdn}", {})
    cookies = cookies_for(keys, access=access_claims(aud=["datastore", "no.ssb"]))
    shown = await notifications(client, cookies=cookies)
    assert sorted(entry["text"] for entry in shown) == ["In None", "In no.ssb.fdb"]
    assert (await client.get("/notifications")).status == 401


async def test_an_outbox_that_cannot_be_written_never_fails_the_request(make_client, receiver):
    _, base = receiver
    client = await make_client(
        faulty(add_notifications=lambda store: raising(StoreUnavailable("The database cannot be reached"))),
        notify=[{"url": base, "events": ["job.failed"]}],
    )
    await failed_job(client)  # answered 200 all the same: the job is failed, its event dropped
    assert "notifications_dropped_total 1.0" in await (await client.get("/metrics")).text()


async def test_the_sending_stops_when_the_stop_comes_as_an_event_wakes_it(aiohttp_client, receiver, notifying_config):
    """An event added and the app's stop in one step of the loop: the sending still stops,
    or the app's cleanup waits for it for ever (Python 3.11's `asyncio.wait_for` drops a
    cancel that comes as what it waits for is done)."""
    _, base = receiver
    app = create_app(notifying_config([{"url": base, "events": ["datastore.created"]}]))
    await aiohttp_client(app)
    notifier = Notifier(app[CONFIG], app[STORE], app[METRICS])
    sending = asyncio.create_task(notifier.run())
    await asyncio.sleep(0.3)  # the outbox looked at: it waits for an event
    await notifier.enqueue("datastore.created", "no.ssb.other", "A datastore was made", {"rdn": "no.ssb.other"})
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await sending


#: Each change told of, as a client makes it, and the store operation that makes it.
CHANGES = {
    "a failure": ("update_job", "job.failed", lambda client, job_id: put_job(client, job_id, status="failed")),
    "a cancel": ("update_job", "job.failed", lambda client, job_id: client.post(f"/jobs/{job_id}/cancel", json=REASON)),
    "a pause": (
        "add_maintenance",
        "maintenance.changed",
        lambda client, _: client.post("/maintenance-status", json=PAUSE),
    ),
}
REASON = {"reason": "Posted to the wrong dataset"}
PAUSE = {"msg": "Upgrading", "paused": True}


@pytest.mark.parametrize("made", sorted(CHANGES))
async def test_a_change_stored_just_before_the_process_dies_is_still_told(
    aiohttp_client, receiver, notifying_config, made
):
    operation, event, change = CHANGES[made]
    hook, base = receiver
    config = notifying_config([{"url": base, "events": [event]}])
    first = await aiohttp_client(create_app(config, faulty(**{operation: dies_after(operation)})))
    job_id = await create_job(first, **JOB)
    with contextlib.suppress(aiohttp.ClientError):
        await change(first, job_id)
    await first.close()
    await aiohttp_client(create_app(config))  # the next start
    await hook.wait_for(1)
    assert [body["event"] for body in hook.bodies] == [event]


async def test_a_change_the_store_refuses_is_told_of_nothing(aiohttp_client, receiver, notifying_config, monkeypatch):
    monkeypatch.setattr(job_service, "CHANGE_WAIT_SECONDS", 0.3)
    hook, base = receiver
    config = notifying_config([{"url": base, "events": ["job.failed", "maintenance.changed"]}])
    full = StoreFull("The disk is full")
    refusing = faulty(update_job=lambda store: raising(full), add_maintenance=lambda store: raising(full))
    client = await aiohttp_client(create_app(config, refusing))
    job_id = await create_job(client, **JOB)
    assert (await client.put(f"/jobs/{job_id}", json={"status": "failed"})).status == 507
    assert (await client.post("/maintenance-status", json={"msg": "Up", "paused": True})).status == 507
    shown = await settled(client, 2)
    assert {entry["state"] for entry in shown} == {"failed"} and hook.requests == []
    assert all("did not show the change" in entry["lastError"] for entry in shown)


async def test_the_notifications_answer_503_while_the_store_is_down(make_client):
    client = await make_client(
        faulty(recent_notifications=lambda store: raising(StoreUnavailable("The database cannot be reached")))
    )
    assert (await client.get("/notifications")).status == 503


async def test_the_notifications_need_the_api_key_or_an_administrator(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(open_executor_routes=True)
    assert (await client.get("/notifications")).status == 401
    reader = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/reader"}))
    assert (await client.get("/notifications", cookies=reader)).status == 403
    assert (await client.get("/notifications", cookies=cookies_for(keys))).status == 200


# --- the outbox as every backend keeps it ---------------------------------------------------


def delivery(number: int, **fields: Any) -> Notification:
    at = f"2026-12-01T10:00:{number:02d}.000000+00:00"
    document = {"id": f"event-{number}", "event": "job.failed", "text": f"Event {number}"}
    return Notification(
        **{  # type: ignore[typeddict-item]
            "id": f"delivery-{number}",
            "eventId": f"event-{number}",
            "event": "job.failed",
            "datastoreRdn": DEFAULT_DATASTORE,
            "url": "http://127.0.0.1:9/",
            "format": "json",
            "document": document,
            "createdAt": at,
            "state": "pending",
            "attempts": 0,
            "nextAttemptAt": at,
            "lastError": None,
            "finishedAt": None,
            **fields,
        }
    )


LATER = "2026-12-01T11:00:00.000000+00:00"
LEASE = "2026-12-01T11:01:00.000000+00:00"


async def test_the_outbox_takes_what_its_limit_leaves_room_for(store):
    assert await store.add_notifications([delivery(1), delivery(2), delivery(3)], 2) == 1
    assert await store.add_notifications([delivery(4)], 2) == 1
    assert [entry["id"] for entry in await store.recent_notifications(10)] == ["delivery-2", "delivery-1"]


async def test_a_claimed_delivery_is_one_owners_until_its_lease_runs_out(store):
    await store.add_notifications([delivery(1), delivery(2, nextAttemptAt=LEASE)], 10)
    claimed = await store.claim_notification("a", LATER, LEASE)
    assert claimed is not None and claimed["id"] == "delivery-1"
    assert await store.claim_notification("b", LATER, LEASE) is None  # leased; the other not due yet
    await store.settle_notification("b", {**claimed, "state": "sent"}, 10)  # not b's: nothing changes
    assert (await store.recent_notifications(10))[1]["state"] == "pending"
    after_lease = "2026-12-01T11:01:00.000001+00:00"
    again = await store.claim_notification("b", after_lease, "2026-12-01T11:02:00.000000+00:00")
    assert again is not None and again["id"] == "delivery-1"
    await store.settle_notification("b", {**again, "state": "sent", "attempts": 1, "finishedAt": after_lease}, 10)
    assert [entry["state"] for entry in await store.recent_notifications(10)] == ["pending", "sent"]


async def test_settling_forgets_the_oldest_final_deliveries_beyond_those_kept(store):
    await store.add_notifications([delivery(number) for number in range(1, 5)], 10)
    for number in range(1, 5):
        claimed = await store.claim_notification("a", LATER, LEASE)
        assert claimed is not None
        finished = f"2026-12-01T10:30:{number:02d}.000000+00:00"
        await store.settle_notification("a", {**claimed, "state": "sent", "finishedAt": finished}, 2)
    assert [entry["id"] for entry in await store.recent_notifications(10)] == ["delivery-4", "delivery-3"]


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_tinydb_outbox_survives_a_reopen_and_forgets_its_leases(open_stores, tmp_path):
    first = await open_stores()
    await first.add_notifications([delivery(1)], 10)
    assert await first.claim_notification("a", LATER, LEASE) is not None
    await first.close()
    second = await open_stores()
    claimed = await second.claim_notification("b", LATER, LEASE)  # a's lease was in a's process alone
    assert claimed is not None and claimed["id"] == "delivery-1"


async def test_a_delivery_in_flight_when_the_process_is_killed_is_sent_by_the_next(
    receiver, storage, input_dir, tmp_path
):
    hook, base = receiver
    hook.answers = ["hang"]
    config = service_config(
        storage, input_dir, notify=[{"url": base, "events": ["job.failed"]}], notifications={"timeout_seconds": 0.5}
    )
    first = ServiceProcess(tmp_path, config)
    await first.start()
    try:
        async with aiohttp.ClientSession(first.url) as session:
            async with session.post("/jobs", json={"jobs": [JOB]}) as response:
                [created] = await response.json()
            async with session.put(f"/jobs/{created['job_id']}", json={"status": "failed"}) as response:
                assert response.status == 200
        await hook.arrived.wait()
    finally:
        first.stop(signal.SIGKILL)
    hook.release.set()
    second = ServiceProcess(tmp_path, config)
    await second.start()
    try:
        await hook.wait_for(2, seconds=30)  # on MongoDB, once the killed process's lease has run out
    finally:
        second.stop()
    assert len({headers["X-Job-Service-Event-Id"] for headers, _ in hook.requests}) == 1


async def test_an_outbox_that_cannot_be_read_is_logged_once(make_client, receiver, caplog):
    _, base = receiver
    claims = []

    def failing_claims(store: Any) -> Any:
        async def claim(*args: Any) -> None:
            claims.append(args)
            raise StoreUnavailable("The database cannot be reached")

        return claim

    client = await make_client(
        faulty(claim_notification=failing_claims), notify=[{"url": base, "events": ["job.failed"]}]
    )
    with caplog.at_level(logging.WARNING, "job_service"):
        for _ in range(3):
            before = len(claims)
            await failed_job(client)
            async with asyncio.timeout(5):
                while len(claims) == before:
                    await asyncio.sleep(0.01)
    assert sum("Cannot read the outbox" in record.message for record in caplog.records) == 1
