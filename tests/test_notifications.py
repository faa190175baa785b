"""Notifications: `[[notify]]` webhooks told of events, delivered from the store's outbox
to a real HTTP receiver on loopback, on every backend."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import DEFAULT_DATASTORE

from backends import Notification

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
