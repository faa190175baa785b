"""The maintenance flag the executor reads before it starts new work."""

from __future__ import annotations

from datetime import datetime

import pytest

from job_service import INITIAL_MAINTENANCE_MSG


async def test_the_first_read_stores_an_initial_unpaused_status(client):
    response = await client.get("/maintenance-status")
    assert response.status == 200
    status = await response.json()
    assert status["msg"] == "Initial status inserted by job service at startup."
    assert status["paused"] is False
    assert datetime.fromisoformat(status["timestamp"]).utcoffset().total_seconds() == 0
    assert await (await client.get("/maintenance-history")).json() == [status]
    assert await (await client.get("/maintenance-status")).json() == status


async def test_a_posted_status_is_answered_and_becomes_the_latest(client):
    response = await client.post("/maintenance-status", json={"msg": "Upgrading", "paused": True})
    assert response.status == 200
    posted = await response.json()
    assert posted["msg"] == "Upgrading" and posted["paused"] is True and posted["timestamp"]
    assert await (await client.get("/maintenance-status")).json() == posted


@pytest.mark.parametrize(("pause", "paused"), [(1, True), (0, False), (True, True), (False, False)])
async def test_the_original_pause_form_is_accepted(client, pause, paused):
    response = await client.post("/maintenance-status", json={"msg": "old client", "pause": pause})
    assert response.status == 200
    assert (await response.json())["paused"] is paused


async def test_history_is_newest_first(client):
    for n in range(5):
        await client.post("/maintenance-status", json={"msg": f"status {n}", "paused": n % 2 == 0})
    history = await (await client.get("/maintenance-history")).json()
    newest = [status["msg"] for status in history]
    assert newest == [*(f"status {n}" for n in reversed(range(5))), INITIAL_MAINTENANCE_MSG]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"msg": "x"}, "exactly one of paused"),
        ({"msg": "x", "paused": True, "pause": 1}, "exactly one of paused"),
        ({"msg": "x", "paused": 1}, "paused: Not a valid boolean."),
        ({"msg": "x", "paused": "true"}, "paused: Not a valid boolean."),
        ({"msg": "x", "pause": 2}, "pause: Must be 0, 1, false or true."),
        ({"msg": "x", "pause": "1"}, "pause: Must be 0, 1, false or true."),
        ({"msg": "x", "pause": 1.0}, "pause: Must be 0, 1, false or true."),
        ({"paused": True}, "msg: Missing data for required field."),
        ({"msg": 5, "paused": True}, "msg: Not a valid string."),
        ({"msg": "x", "paused": True, "until": "noon"}, "until: Unknown field."),
    ],
)
async def test_a_bad_status_is_a_400_and_stores_nothing(client, body, reason):
    before = await (await client.get("/maintenance-history")).json()
    response = await client.post("/maintenance-status", json=body)
    assert response.status == 400
    assert reason in (await response.json())["message"]
    assert await (await client.get("/maintenance-history")).json() == before
