"""Stuck jobs and queue latency: `[jobs.stale_after]`, and what /metrics shows of the jobs in progress."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import DEFAULT_DATASTORE, create_job, faulty, put_job, run_job_service, stored_job
from prometheus_client.parser import text_string_to_metric_families

from backends import FINAL_STATUSES, STATUSES, StoreUnavailable
from job_service import STORE, ConfigError, StaleAfterSection, is_stale, load_config, stale_jobs

FDB = "no.ssb.fdb"


def ago(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="microseconds")


def logged(job: dict, created_minutes_ago: float, *log: tuple[float, str]) -> dict:
    """`job` created that long ago, with its log as (minutes ago, message) pairs."""
    entries = [{"at": ago(minutes), "message": message} for minutes, message in log]
    return {**job, "createdAt": ago(created_minutes_ago), "log": entries}


async def scrape(client) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def stale(datastore: str, status: str) -> tuple[str, tuple]:
    return "jobs_stale", (("datastore", datastore), ("status", status))


def oldest_queued(datastore: str) -> tuple[str, tuple]:
    return "jobs_oldest_queued_age_seconds", (("datastore", datastore),)


async def add_datastore(client, rdn: str = FDB) -> None:
    datastore = {"rdn": rdn, "name": "Forskningsdata", "description": "", "directory": f"/srv/{rdn}"}
    await client.app[STORE].add_datastore({**datastore, "bumpEnabled": False, "deleted": False})


def write_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_every_status_in_progress_has_a_threshold_minutes_for_queued_hours_for_the_rest():
    thresholds = load_config(None, environ={}).jobs.stale_after
    assert list(StaleAfterSection().fields) == [status for status in STATUSES if status not in FINAL_STATUSES]
    assert (thresholds["queued"], thresholds["built"]) == (15 * 60, 60 * 60)
    assert {thresholds[status] for status in thresholds if status not in ("queued", "built")} == {6 * 60 * 60}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("queued = 0", "jobs.stale_after.queued: Must be greater than 0."),
        ("built = -5", "jobs.stale_after.built: Must be greater than 0."),
        ("queued = '15m'", "jobs.stale_after.queued: Not a valid number."),
        ("queued = '900'", "jobs.stale_after.queued: Not a valid number."),
        ("queued = true", "jobs.stale_after.queued: Not a valid number."),
        ("queued = inf", "jobs.stale_after.queued:"),
        ("completed = 60", "jobs.stale_after.completed: A final status has no threshold"),
        ("stuck = 60", "jobs.stale_after.stuck: Not a status; the thresholds are of the in-progress statuses: queued,"),
    ],
)
def test_a_malformed_threshold_is_one_line_naming_its_key(tmp_path, table, key):
    with pytest.raises(ConfigError) as error:
        load_config(write_text(tmp_path, f"[jobs.stale_after]\n{table}\n"), environ={})
    assert key in str(error.value) and "\n" not in str(error.value)


def test_the_command_refuses_to_start_on_a_malformed_threshold_in_one_line(tmp_path):
    result = run_job_service(write_text(tmp_path, "[jobs.stale_after]\nfailed = 60\n"))
    assert result.returncode == 1
    [line] = (result.stdout + result.stderr).strip().splitlines()
    assert "jobs.stale_after.failed" in line


def test_stale_jobs_are_those_in_progress_unchanged_for_longer_than_their_status_allows():
    """What the overview asks of each job in progress: its last change is its last log line, else its creation."""
    now = datetime.now(UTC)
    thresholds = load_config(None, environ={}).jobs.stale_after
    jobs = [
        logged(stored_job("1", "A", "queued"), 16),
        logged(stored_job("2", "B", "queued"), 14),
        logged(stored_job("3", "C", "validating"), 400, (359, "Set status: validating")),
        logged(stored_job("4", "D", "validating"), 400, (361, "Set status: validating")),
        logged(stored_job("5", "E", "built"), 400, (300, "Set status: built"), (30, "Added update description")),
        logged(stored_job("6", "F", "failed"), 9000, (8000, "Set status: failed")),
    ]
    assert [job["jobId"] for job in stale_jobs(jobs, now, thresholds)] == ["1", "4"]
    assert not is_stale(jobs[-1], now, thresholds)  # a final job never is


async def test_metrics_count_stale_jobs_and_the_oldest_queued_age_per_datastore(make_client):
    client = await make_client(jobs={"stale_after": {"queued": 600, "validating": 1800}})
    await add_datastore(client)
    await client.app[STORE].load_collection(
        "inprogress",
        [
            logged(stored_job("1", "A", "queued"), 120),
            logged(stored_job("2", "B", "queued"), 1),
            # Sent back to queued by the executor's rollback 5 minutes ago: waiting since then.
            logged(stored_job("3", "C", "queued"), 180, (60, "Set status: initiated"), (5, "Set status: queued")),
            logged(stored_job("4", "D", "validating"), 100, (40, "Set status: validating")),
            logged(stored_job("5", "E", "validating"), 20, (10, "Set status: validating")),
            logged(stored_job("6", "F", "built", FDB), 200, (61, "Set status: built")),
        ],
    )
    metrics = await scrape(client)
    assert metrics[stale(DEFAULT_DATASTORE, "queued")] == 1
    assert metrics[stale(DEFAULT_DATASTORE, "validating")] == 1
    assert metrics[stale(FDB, "built")] == 1  # the default threshold of built, an hour
    assert metrics[stale(DEFAULT_DATASTORE, "built")] == metrics[stale(FDB, "queued")] == 0
    assert sum(value for (name, _), value in metrics.items() if name == "jobs_stale") == 3
    assert metrics[oldest_queued(DEFAULT_DATASTORE)] == pytest.approx(120 * 60, abs=60)
    assert metrics[oldest_queued(FDB)] == 0  # nothing queued there


async def test_a_threshold_of_a_fraction_of_a_second_makes_a_posted_job_stale_until_it_moves(make_client):
    client = await make_client(jobs={"stale_after": {"queued": 0.2}})
    job_id = await create_job(client, operation="ADD", target="MY_DATASET")
    assert (await scrape(client))[stale(DEFAULT_DATASTORE, "queued")] == 0
    await asyncio.sleep(0.3)
    metrics = await scrape(client)
    assert metrics[stale(DEFAULT_DATASTORE, "queued")] == 1
    assert metrics[oldest_queued(DEFAULT_DATASTORE)] >= 0.3
    await put_job(client, job_id, status="validating")
    metrics = await scrape(client)
    assert metrics[stale(DEFAULT_DATASTORE, "queued")] == metrics[stale(DEFAULT_DATASTORE, "validating")] == 0
    assert metrics[oldest_queued(DEFAULT_DATASTORE)] == 0


async def test_each_status_change_observes_the_time_spent_in_the_status_it_leaves(client):
    await client.app[STORE].load_collection("inprogress", [logged(stored_job("1"), 120)])
    await put_job(client, "1", status="validating", log="started")
    await put_job(client, "1", status="validating")  # the status it is in: nothing is left
    await put_job(client, "1", description="A better description")  # no status at all
    metrics = await scrape(client)
    queued = (("operation", "ADD"), ("status", "queued"))
    assert metrics["job_status_seconds_count", queued] == 1
    assert metrics["job_status_seconds_sum", queued] == pytest.approx(120 * 60, abs=60)
    assert metrics["job_status_seconds_bucket", (("le", "3600.0"), *queued)] == 0
    assert metrics["job_status_seconds_bucket", (("le", "10800.0"), *queued)] == 1
    assert not [
        key for key in metrics if key[0] == "job_status_seconds_count" and key != ("job_status_seconds_count", queued)
    ]

    await put_job(client, "1", status="completed")
    validating = (("operation", "ADD"), ("status", "validating"))
    metrics = await scrape(client)
    assert metrics["job_status_seconds_count", validating] == 1
    assert metrics["job_status_seconds_sum", validating] < 60


def failing_listing(store):
    async def find_jobs(query):
        raise StoreUnavailable("The database cannot be reached")
        yield  # an async generator, as a store's listings are

    return find_jobs


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_while_the_jobs_in_progress_cannot_be_read_the_stale_gauges_are_left_out(make_client):
    client = await make_client(open_store=faulty(find_jobs=failing_listing))
    text = await (await client.get("/metrics")).text()
    assert "store_up 0.0" in text
    for gauge in ("jobs_stale", "jobs_oldest_queued_age_seconds", "jobs_in_progress"):
        assert gauge not in text
