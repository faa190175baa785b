"""While the database cannot be reached, every route that needs it says so: a 503, at once."""

from __future__ import annotations

import time

import pytest
from mongo_server import free_port


@pytest.fixture
def storage():
    """A MongoDB backend whose server is not there: a port nothing listens on."""
    url = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    return {"backend": "mongodb", "mongodb": {"url": url, "database": "jobdb", "timeout_seconds": 0.3}}


STORE_ROUTES = [
    ("GET", "/jobs", None),
    ("GET", "/jobs/some-job", None),
    ("PUT", "/jobs/some-job", {"status": "built"}),
    ("POST", "/jobs", {"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}),
    ("GET", "/targets", None),
    ("GET", "/targets/MY_DATASET", None),
    ("GET", "/targets/MY_DATASET/jobs", None),
    ("DELETE", "/importable-datasets/MY_DATASET", None),
    ("POST", "/maintenance-status", {"msg": "Upgrading", "paused": True}),
    ("GET", "/maintenance-status", None),
    ("GET", "/maintenance-history", None),
    ("GET", "/health/ready", None),
    ("GET", "/datastores/rdns", None),
    ("GET", "/datastores", None),
    ("POST", "/datastores", {"rdn": "no.ssb.new", "name": "New", "description": ""}),
    ("POST", "/maintenance-statuses", {"msg": "Upgrading", "paused": True}),
    ("GET", "/maintenance-statuses", None),
    ("GET", "/maintenance-statuses/latest", None),
    ("POST", "/jobs/some-job/cancel", {"reason": "Posted by mistake"}),
    ("POST", "/jobs/some-job/retry", None),
    ("GET", "/overview", None),
    ("GET", "/audit", None),
    *(
        (method, f"/datastores/no.ssb.fdb{path}", body)
        for method, path, body in [
            ("GET", "", None),
            ("DELETE", "", None),
            ("GET", "/directory", None),
            ("POST", "/public-key", None),
            ("GET", "/public-key", None),
            ("GET", "/jobs", None),
            ("POST", "/jobs", {"jobs": []}),
            ("GET", "/jobs/some-job", None),
            ("GET", "/targets", None),
            ("GET", "/targets/MY_DATASET", None),
            ("GET", "/targets/MY_DATASET/jobs", None),
            ("GET", "/importable-datasets", None),
            ("DELETE", "/importable-datasets/MY_DATASET", None),
            ("GET", "/health/alive", None),
            ("GET", "/health/ready", None),
            ("POST", "/jobs/some-job/cancel", {"reason": "Posted by mistake"}),
            ("POST", "/jobs/some-job/retry", None),
            ("GET", "/overview", None),
            ("GET", "/bump-preview", None),
        ]
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), STORE_ROUTES)
async def test_a_route_that_needs_the_database_answers_503_while_it_is_unreachable(client, method, path, body):
    start = time.monotonic()
    response = await client.request(method, path, json=body)
    assert response.status == 503
    assert await response.json() == {"message": "The database cannot be reached"}
    assert time.monotonic() - start < 5  # the configured 0.3 s, with room for a busy machine


async def test_what_needs_no_database_still_answers(client):
    assert (await client.get("/health/alive")).status == 200
    assert (await client.get("/importable-datasets")).status == 200


async def test_metrics_answer_with_the_process_series_and_leave_the_store_counts_out(client):
    """Monitoring is not blind during an outage: the requests are counted, the store's failures too."""
    await client.get("/jobs")
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'http_requests_total{method="GET",route="/jobs",status="503"} 1.0' in text
    assert 'store_operation_errors_total{operation="find_jobs"} 1.0' in text
    assert "store_up 0.0" in text
    for gauge in ("jobs_in_progress", "jobs_completed", "maintenance_paused"):
        assert gauge not in text
